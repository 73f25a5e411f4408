//! The mistakes a new user makes, through the real binary where a process shows them: a TOML
//! typo on the secret's line, a misspelt variable, an API URL ending in /api, a password in the
//! egress proxy's URL, a secret file saved by a Windows editor, `--config` where it means nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::binary::{Running, base_env, command};
use crate::support::{Proxy, Reply, SECRET, TokenService, Upstream, client};

/// A secret-looking value that must appear in no output.
const LEAK: &str = "Zq9xLEAKED-s3cr3t-VALUE";

pub struct Folder(pub PathBuf);

impl Folder {
    pub fn new(name: &str) -> Folder {
        let dir = std::env::temp_dir().join(format!("uem-proxy-{name}-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Folder(dir)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until the log has a line containing `needle`.
fn wait_for_log(proxy: &Running, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = proxy.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_typo_on_the_secrets_line_shows_nowhere() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let folder = Folder::new("typo");
    let typo = format!("client_id = \"test-client\"\nclient_secret = \"{LEAK}\nread_only = false\n");
    let file = folder.write("uem-proxy.toml", &typo);
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| !["UEM_CLIENT_SECRET", "UEM_CLIENT_ID"].contains(k));

    // At start, and by `uem-proxy config`.
    for args in [vec!["--config", &file], vec!["config", "--config", &file], vec!["check", "--config", &file]] {
        let output = command(&env).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(err.contains("uem-proxy.toml: not valid TOML: line 2, column "), "{err}");
        assert!(err.contains("key client_secret"), "{err}");
        assert!(!out.contains("Zq9") && !err.contains("Zq9"), "{args:?}:\n{out}\n{err}");
    }

    // On a reload, by a file change and by SIGHUP: the log's ERROR line and /_proxy/status.
    let good = format!("client_id = \"test-client\"\nclient_secret = \"{SECRET}\"\n");
    folder.write("uem-proxy.toml", &good);
    let (env2, file2) = (env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>(), file.clone());
    let proxy = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start_with(&env, &["--config", &file2])
    })
    .await
    .unwrap();
    let url = format!("http://{}", proxy.addr());
    // The watcher may take its first look after this write: write again, each time other bytes,
    // until a change is seen.
    let path = folder.0.join("uem-proxy.toml");
    let proxy = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        for round in 0.. {
            // Whole at once: a reload that reads a half-written file refuses it for another reason.
            let next = path.with_extension("next");
            std::fs::write(&next, format!("# {round}\n{typo}")).unwrap();
            std::fs::rename(&next, &path).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            if proxy.log().contains("reload refused") {
                break;
            }
            assert!(Instant::now() < deadline, "no reload:\n{}", proxy.log());
        }
        proxy
    })
    .await
    .unwrap();
    let status: serde_json::Value =
        client().get(format!("{url}/_proxy/status")).send().await.unwrap().json().await.unwrap();
    let reload = &status["config"]["last_reload"];
    assert_eq!(reload["ok"], false);
    let message = reload["message"].as_str().unwrap();
    assert!(message.contains("line 3, column ") && message.contains("key client_secret"), "{message}");
    assert!(!status.to_string().contains("Zq9"), "{status}");

    let pid = proxy.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut proxy = tokio::task::spawn_blocking(move || {
        wait_for_log(&proxy, "\"trigger\":\"SIGHUP\"");
        proxy
    })
    .await
    .unwrap();
    let status = client().get(format!("{url}/_proxy/status")).send().await.unwrap().text().await.unwrap();
    assert!(!status.contains("Zq9"), "{status}");
    let (exit, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(exit.success());
    assert!(log.matches("reload refused").count() >= 2, "{log}");
    assert!(!log.contains("Zq9") && !log.contains(SECRET), "{log}");
}

/// An egress proxy that cannot be reached is named where the token service's failure is (it
/// may be the one that failed), without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_service_unreachable_through_the_egress_proxy_names_the_proxy() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env: Vec<(String, String)> =
        base_env(&api, &token_url).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.push(("UEM_PROXY_EGRESS_PROXY".into(), "http://bob:pa55word@127.0.0.1:9/".into()));
    let mut proxy = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(&env)
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = client().get(format!("http://{}/_proxy/status", proxy.addr())).send().await.unwrap();
        let status: serde_json::Value = status.json().await.unwrap();
        if !status["token"]["last_error"].is_null() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no token failure noted: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = status["token"]["last_error"]["error"].as_str().unwrap();
    assert!(error.contains("through the egress proxy http://127.0.0.1:9"), "{error}");
    assert!(!error.contains("pa55word") && !error.contains("bob"), "{error}");
    let (_, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(log.contains("through the egress proxy http://127.0.0.1:9"), "{log}");
    assert!(!log.contains("pa55word"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspellings_an_api_suffix_and_a_proxy_password_are_answered_without_the_password() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let api_with_suffix = format!("{api}/api");
    let mut env = base_env(&api_with_suffix, &token_url);
    env.extend([
        ("UEM_PROXY_READONLY", "true"),
        ("UEM_CLIENTID", "x"),
        ("UEM_PROXY_EGRESS_PROXY", "http://bob:pa55word@127.0.0.1:9/"),
    ]);
    let output = command(&env).arg("config").output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["egress_proxy"], "http://bob:***@127.0.0.1:9/");
    assert_eq!(json["api_url"], api.as_str(), "the trailing /api is dropped");
    for needle in [
        "warning: UEM_CLIENTID is not a uem-proxy setting and is ignored: did you mean UEM_CLIENT_ID?",
        "warning: UEM_PROXY_READONLY is not a uem-proxy setting and is ignored: did you mean UEM_PROXY_READ_ONLY?",
        "warning: UEM_API_URL: ends with /api",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert_eq!(json["warnings"].as_array().unwrap().len(), 3, "{json}");
    assert!(!out.contains("pa55word") && !err.contains("pa55word"), "{out}\n{err}");

    // At start the same warnings are logged, and requests go to /api/..., not /api/api/...
    env.retain(|(k, _)| *k != "UEM_PROXY_EGRESS_PROXY");
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut proxy = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(&env)
    })
    .await
    .unwrap();
    let response = client().get(format!("http://{}/api/system/info", proxy.addr())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().target, "/api/system/info");
    let (_, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    let warnings: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["level"] == "WARN" && e["message"] == "configuration")
        .collect();
    assert_eq!(warnings.len(), 3, "{log}");
    assert!(warnings.iter().any(|w| w["warning"].as_str().unwrap().contains("did you mean UEM_PROXY_READ_ONLY?")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_from_a_windows_editor_and_a_relative_path_in_the_file_work() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let folder = Folder::new("secret-file");
    std::fs::create_dir_all(folder.0.join("secrets")).unwrap();
    folder.write("secrets/client_secret", format!("\u{feff}{SECRET} \r\n"));
    let file = folder.write("uem-proxy.toml", "client_secret_file = \"secrets/client_secret\"\n");
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| *k != "UEM_CLIENT_SECRET");
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // Started from another working directory: the path is the file's folder's.
    let mut proxy = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start_with(&env, &["--config", &file])
    })
    .await
    .unwrap();
    let response = client().get(format!("http://{}/api/system/info", proxy.addr())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(tokens.forms.lock().unwrap()[0]["client_secret"], SECRET, "BOM, space and CRLF are gone");
    let (_, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(log.contains("client_secret_file: the file's byte-order mark, spaces or line breaks"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
}

#[test]
fn demo_and_sandbox_do_not_offer_config_and_healthcheck_honours_it() {
    for args in [
        &["demo", "--config", "/x.toml"][..],
        &["sandbox", "--config", "/x.toml"],
        &["--config", "/x.toml", "demo"],
        &["--config", "/x.toml", "sandbox"],
    ] {
        let output = command(&[]).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("--config"), "{args:?}: {err}");
    }
    let help = command(&[]).args(["demo", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--config"));
    let help = command(&[]).args(["healthcheck", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));

    // healthcheck finds the proxy at the file's listen address.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = server.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        head
    });
    let folder = Folder::new("healthcheck");
    let file = folder.write("uem-proxy.toml", format!("listen = \"{addr}\"\nclient_secret_file = \"/unreadable\"\n"));
    let output = command(&[]).args(["healthcheck", "--config", &file]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(answer.join().unwrap().starts_with("GET /_proxy/healthz "));
    // Through UEM_PROXY_CONFIG too; a file naming a closed port is unhealthy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let file = folder.write("closed.toml", format!("listen = \"{closed}\"\n"));
    let output = command(&[("UEM_PROXY_CONFIG", &file)]).arg("healthcheck").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&closed.to_string()));
}

#[tokio::test]
async fn token_unavailable_says_why_without_the_secret() {
    let leaky = format!(r#"{{"error":"invalid_client","error_description":"secret {SECRET} rejected"}}"#);
    let tokens = TokenService { after_script: Some(Reply::Raw(401, "application/json", leaky)), ..Default::default() };
    let upstream = Upstream::default();
    let proxy =
        Proxy::start(&upstream.start().await, &tokens.start().await, &[("UEM_PROXY_TOKEN_WAIT", "300ms")]).await;
    for path in ["/api/system/info", "/_proxy/readyz"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let body: serde_json::Value = loop {
            let response = client().get(format!("{}{path}", proxy.url)).send().await.unwrap();
            assert_eq!(response.status(), 503);
            let body: serde_json::Value = response.json().await.unwrap();
            if tokens.calls() > 0 && body["message"].as_str().unwrap().contains("failed") {
                break body;
            }
            assert!(Instant::now() < deadline, "{body}");
        };
        assert_eq!(body["error"], "token_unavailable");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("refused the client: invalid_client (HTTP 401)"), "{message}");
        assert!(!message.contains(SECRET) && !message.contains("tok-"), "{message}");
    }
    // Before the first answer, it says so.
    let slow = TokenService { delay: Duration::from_secs(5), ..Default::default() };
    let proxy = Proxy::start(&upstream.start().await, &slow.start().await, &[("UEM_PROXY_TOKEN_WAIT", "200ms")]).await;
    let body: serde_json::Value =
        client().get(format!("{}/api/system/info", proxy.url)).send().await.unwrap().json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("the token service has not answered yet"), "{body}");
}
