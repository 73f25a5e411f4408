//! The container image as its users run it: the real binary under exactly the environment the
//! Dockerfile's `ENV` instructions give (read from the Dockerfile, so an edit there is what is
//! tested), with a configuration file mounted beside it.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use crate::binary::{Running, command};
use crate::mistakes::Folder;
use crate::support::{SECRET, TokenService, Upstream};

/// The Dockerfile's instructions as `(INSTRUCTION, arguments)`, continuation lines joined and
/// comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                let (name, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((name.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// Shell-like words: white space separates, quotes group and are removed, `\` escapes.
fn words(s: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut chars) = (Vec::new(), None::<String>, None, s.chars());
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', q) if q != Some('\'') => word.get_or_insert_default().extend(chars.next()),
            ('"' | '\'', None) => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (c, Some(q)) if c == q => quote = None,
            (c, None) if c.is_whitespace() => out.extend(word.take()),
            (c, _) => word.get_or_insert_default().push(c),
        }
    }
    out.extend(word);
    out
}

/// The variables the image's `ENV` instructions set, in both of their forms (`K=V …`, `K V`).
fn env_of(instructions: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (_, args) in instructions.iter().filter(|(name, _)| name == "ENV") {
        let words = words(args);
        if words.first().is_some_and(|w| !w.contains('=')) {
            let (key, value) = args.split_once(char::is_whitespace).unwrap();
            env.push((key.to_owned(), value.trim().to_owned()));
            continue;
        }
        env.extend(words.iter().map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap()));
    }
    env
}

fn image_env() -> Vec<(String, String)> {
    env_of(&instructions())
}

/// The `HEALTHCHECK`'s command, from its exec form.
fn healthcheck_command() -> Vec<String> {
    let (_, args) = instructions().into_iter().find(|(name, _)| name == "HEALTHCHECK").expect("a HEALTHCHECK");
    let exec = &args[args.find("CMD").expect("a CMD") + 3..];
    serde_json::from_str(exec.trim()).expect("the exec form, a JSON array")
}

/// A command run the way the image runs it: nothing but the image's environment and `extra`.
fn in_image(extra: &[(&str, &str)]) -> Command {
    let env = image_env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.extend_from_slice(extra);
    command(&pairs)
}

#[test]
fn the_dockerfile_reader_reads_what_it_claims() {
    let file = [
        ("ENV".to_owned(), r#"A=1 B="two words" C=x\ y"#.to_owned()),
        ("ENV".to_owned(), "D  legacy form".to_owned()),
        ("RUN".to_owned(), "E=no".to_owned()),
    ];
    let env = env_of(&file);
    let expected = [("A", "1"), ("B", "two words"), ("C", "x y"), ("D", "legacy form")];
    assert_eq!(env, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    let probe = healthcheck_command();
    assert_eq!(probe[..2], ["uem-proxy", "healthcheck"], "the binary's own probe, in exec form");
    assert!(!image_env().is_empty(), "the Dockerfile has ENV instructions");
}

/// The image sets its own defaults; a mounted file's `listen` and `log_format` must still take
/// effect, and the image's health check must probe where the proxy listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_file_outranks_the_images_environment() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let folder = Folder::new("image");
    folder.write("client_secret", format!("{SECRET}\n"));
    let base = format!(
        "api_url = \"{api}\"\ntoken_url = \"{token_url}\"\nclient_id = \"test-client\"\n\
         client_secret_file = \"client_secret\"\n"
    );
    // What the image gives when the file is silent, so the file can say something else.
    let silent = folder.write("silent.toml", &base);
    let output = in_image(&[("UEM_PROXY_CONFIG", &silent)]).arg("config").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "the image's own variables are known: {stderr}");
    let effective: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let format = if effective["log_format"] == "json" { "text" } else { "json" };
    let listen = format!("unix:{}", folder.0.join("proxy.sock").display());
    assert_ne!(effective["listen"], listen.as_str());

    let file = folder.write("uem-proxy.toml", format!("{base}listen = \"{listen}\"\nlog_format = \"{format}\"\n"));
    let file_env = file.clone();
    let mut proxy =
        tokio::task::spawn_blocking(move || Running::spawn(&mut in_image(&[("UEM_PROXY_CONFIG", &file_env)])))
            .await
            .unwrap();
    assert_eq!(proxy.listen(), listen, "it listens where the file says");
    let socket = folder.0.join("proxy.sock");
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream.write_all(b"GET /api/image HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The image's HEALTHCHECK, as written, under the same environment.
    let probe = healthcheck_command();
    let file_env = file.clone();
    let health = tokio::task::spawn_blocking(move || {
        in_image(&[("UEM_PROXY_CONFIG", &file_env)]).args(&probe[1..]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));

    let (status, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(status.success(), "{status:?}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let json = serde_json::from_str::<serde_json::Value>(line).is_ok();
        assert_eq!(json, format == "json", "every line in the file's format ({format}): {line}");
    }
    assert!(!log.contains(SECRET));

    // Once stopped, the same probe fails: it was this proxy that answered.
    let probe = healthcheck_command();
    let gone = in_image(&[("UEM_PROXY_CONFIG", &file)]).args(&probe[1..]).output().unwrap();
    assert_eq!(gone.status.code(), Some(1), "{}", String::from_utf8_lossy(&gone.stderr));
}

/// The image's user, which a secret file as usually written (root's, mode 0600) is closed to.
const IMAGE_UID: u32 = 65532;

/// `uem-proxy config` under the image's environment and a secret file, run as the image's user
/// when the tests run as root (through `setpriv`), else as the tests' own user. `None`: the
/// user cannot be switched here.
fn config_with_secret_file(secret: &str) -> Option<(std::process::Output, u32)> {
    let extra = [
        ("UEM_API_URL", "https://as1.awmdm.com"),
        ("UEM_REGION", "na"),
        ("UEM_CLIENT_ID", "test-client"),
        ("UEM_CLIENT_SECRET_FILE", secret),
    ];
    let mut cmd = in_image(&extra);
    let uid = own_uid();
    if uid != 0 {
        return Some((cmd.arg("config").output().unwrap(), uid));
    }
    let user = IMAGE_UID.to_string();
    let switched = Command::new("setpriv")
        .args(["--reuid", &user, "--regid", &user, "--clear-groups", "--"])
        .arg(cmd.get_program())
        .arg("config")
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .ok()
        .filter(|o| !String::from_utf8_lossy(&o.stderr).starts_with("setpriv"))?;
    Some((switched, IMAGE_UID))
}

fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let folder = Folder::new("uid");
    std::fs::metadata(folder.write("probe", "")).unwrap().uid()
}

/// The README's `docker run` with a usual secret file failed with a bare "Permission denied":
/// the message now says which uid the proxy runs as and how to let it read the file, and the
/// way it names works.
#[test]
fn an_unreadable_secret_file_names_the_uid_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let folder = Folder::new("secret-uid");
    let secret = folder.write("client_secret", SECRET);
    let root = own_uid() == 0;
    let closed = if root { 0o600 } else { 0o000 };
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(closed)).unwrap();
    let Some((output, uid)) = config_with_secret_file(&secret) else {
        eprintln!("skipped: cannot switch to uid {IMAGE_UID} here");
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(stderr.contains(&format!("the proxy runs as uid {uid}, not root")), "{stderr}");
    assert!(stderr.contains(&format!("chown {uid} FILE && chmod 0400 FILE")), "{stderr}");
    assert!(stderr.contains(&format!("uid={uid},mode=0400")), "{stderr}");
    assert!(!stderr.contains(SECRET));

    // The fix it names: owned by that uid, mode 0400.
    if root {
        std::os::unix::fs::chown(&secret, Some(IMAGE_UID), None).unwrap();
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    let (output, _) = config_with_secret_file(&secret).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Under podman callers arrive from 10.88.0.0/16, which the README's Docker range does not hold:
/// the refusal's log line names the refused address and the networks let in, and the caller's
/// answer still tells it neither.
#[tokio::test]
async fn a_refused_caller_is_logged_with_the_networks_let_in() {
    let log = crate::bodies::Captured::start();
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let networks = "172.16.0.0/12,192.168.0.0/16";
    let extra = [("UEM_PROXY_LISTEN", "0.0.0.0:8080"), ("UEM_PROXY_ALLOW_CIDRS", networks)];
    let config = crate::support::config(&api, &token_url, None, &extra).unwrap();
    let service = uem_proxy::service(&config, &config.listen).unwrap();
    let call = |path: &str, host: &str| {
        let req = http::Request::get(path).header("host", host).body(axum::body::Body::empty()).unwrap();
        service.clone().serve(req, uem_proxy::listen::Peer::Tcp("10.88.0.5:40312".parse().unwrap()), false)
    };
    let refused = call("/api/podman", "localhost").await;
    assert_eq!(refused.status(), 403);
    let body = String::from_utf8(axum::body::to_bytes(refused.into_body(), 4096).await.unwrap().to_vec()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "caller_not_allowed");
    assert_eq!(json["message"], "callers from this address are not allowed; see UEM_PROXY_ALLOW_CIDRS");
    assert!(!body.contains("172.16") && !body.contains("192.168") && !body.contains("10.88"), "{body}");

    let events = || {
        let text = String::from_utf8(log.lines.lock().unwrap().clone()).unwrap();
        let events = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect::<Vec<_>>();
        events.into_iter().filter(|e| e["message"] == "request refused").collect::<Vec<_>>()
    };
    let refusal = events().pop().expect("a refusal line");
    assert_eq!(refusal["peer"], "10.88.0.5:40312");
    assert_eq!(refusal["allow_cidrs"], networks);
    assert_eq!(refusal["request_id"], json["request_id"]);

    // Another refusal's line has no networks to name.
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let extra = [("UEM_PROXY_LISTEN", "0.0.0.0:8080"), ("UEM_PROXY_ALLOW_CIDRS", "10.88.0.0/16")];
    let config = crate::support::config(&api, &token_url, None, &extra).unwrap();
    let service = uem_proxy::service(&config, &config.listen).unwrap();
    let req = http::Request::get("/api/x").header("host", "evil.example").body(axum::body::Body::empty()).unwrap();
    let peer = uem_proxy::listen::Peer::Tcp("10.88.0.5:40313".parse().unwrap());
    assert_eq!(service.serve(req, peer, false).await.status(), 403);
    let refusal = events().pop().expect("a refusal line");
    assert_eq!(refusal["peer"], "10.88.0.5:40313");
    assert!(refusal.get("allow_cidrs").is_none(), "{refusal}");
}

/// `deploy/compose.yaml` does what the Kubernetes sidecar does: the job shares the proxy's
/// loopback and starts once a token is held; the secret is a compose secret the proxy reads as a
/// file; the proxy runs with a read-only root, no capabilities and no privilege gain.
#[test]
fn the_compose_file_runs_the_proxy_as_the_sidecar_manifest_does() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose.yaml")).unwrap();
    let docs = crate::deploy::documents(&text);
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    let get = |key: &str| doc.get(key).map(String::as_str);
    let proxy = "services.uem-proxy";
    assert_eq!(get(&format!("{proxy}.healthcheck.test")), Some(r#"["CMD", "uem-proxy", "healthcheck", "--ready"]"#));
    assert_eq!(get(&format!("{proxy}.read_only")), Some("true"));
    assert_eq!(get(&format!("{proxy}.cap_drop")), Some(r#"["ALL"]"#));
    assert_eq!(get(&format!("{proxy}.security_opt")), Some(r#"["no-new-privileges:true"]"#));
    let secret = get(&format!("{proxy}.secrets[0]")).expect("a compose secret");
    assert!(doc.contains_key(&format!("secrets.{secret}.file")), "{secret} is defined");
    let file = format!("/run/secrets/{secret}");
    assert_eq!(get(&format!("{proxy}.environment.UEM_CLIENT_SECRET_FILE")), Some(file.as_str()));
    let variables: Vec<&str> = doc.keys().filter_map(|k| k.strip_prefix(&format!("{proxy}.environment."))).collect();
    assert!(!variables.contains(&"UEM_CLIENT_SECRET"), "no secret in the environment");
    assert!(!variables.contains(&"UEM_PROXY_LISTEN"), "loopback, the image's default");

    let job = "services.device-report";
    assert_eq!(get(&format!("{job}.network_mode")), Some("service:uem-proxy"), "the proxy's loopback");
    assert_eq!(get(&format!("{job}.depends_on.uem-proxy.condition")), Some("service_healthy"));
    assert_eq!(get(&format!("{job}.environment.UEM_API")), Some("http://127.0.0.1:8080"));

    // The proxy's settings load as the image would run them, with the secret file in place.
    let folder = Folder::new("compose");
    let secret_file = folder.write("client_secret", SECRET);
    let mut env: Vec<(&str, &str)> =
        variables.iter().map(|v| (*v, get(&format!("{proxy}.environment.{v}")).unwrap())).collect();
    env.retain(|(k, _)| *k != "UEM_CLIENT_SECRET_FILE");
    env.push(("UEM_CLIENT_SECRET_FILE", &secret_file));
    let output = in_image(&env).arg("config").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["listen"], "127.0.0.1:8080");
    assert_eq!(config["log_format"], "json", "the image's default holds");
    assert_eq!(config["read_only"], true);
}
