//! The real binary: exit codes, the `config` command, signals, and what its logs hold.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::support::{Reply, SECRET, TokenService, Upstream, client};

const BIN: &str = env!("CARGO_BIN_EXE_uem-proxy");

fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    // Only what the test gives: no stray UEM_* from the machine running the tests.
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(env.iter().copied());
    cmd
}

fn base_env<'a>(api: &'a str, token_url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("UEM_API_URL", api),
        ("UEM_TOKEN_URL", token_url),
        ("UEM_CLIENT_ID", "test-client"),
        ("UEM_CLIENT_SECRET", SECRET),
        ("UEM_PROXY_LISTEN", "127.0.0.1:0"),
        ("UEM_PROXY_LOG_FORMAT", "json"),
    ]
}

/// A running proxy process whose standard error is collected line by line.
struct Running {
    child: Child,
    /// Where it listens, as its log says (`127.0.0.1:PORT` or `unix:/path`).
    listen: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(env: &[(&str, &str)]) -> Running {
        let mut child = command(env)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                {
                    let _ = tx.send(event["listen"].as_str().unwrap().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let listen = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the proxy logs where it listens");
        Running { child, listen, log }
    }

    fn addr(&self) -> SocketAddr {
        self.listen.parse().expect("a TCP listener")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_exit(&mut self.child, Duration::from_secs(15))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

fn wait_exit(child: &mut Child, max: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + max;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn config_prints_the_effective_settings_with_secrets_masked() {
    let output = command(&[
        ("UEM_CONSOLE_URL", "https://cn4855.awmdm.com"),
        ("UEM_REGION", "japan"),
        ("UEM_CLIENT_ID", "abc"),
        ("UEM_CLIENT_SECRET", SECRET),
    ])
    .arg("config")
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains(SECRET));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["api_url"], "https://as4855.awmdm.com");
    assert_eq!(json["token_url"], "https://apac.uemauth.workspaceone.com/connect/token");
    assert_eq!(json["listen"], "127.0.0.1:8080");
    assert_eq!(json["client_secret"], "***");
}

#[test]
fn bad_settings_name_every_problem_and_exit_before_binding() {
    // Holding the port proves the proxy never got as far as binding: it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let output = command(&[
        ("UEM_API_URL", "not a url"),
        ("UEM_REGION", "atlantis"),
        ("UEM_PROXY_UPSTREAM_TIMEOUT", "0s"),
        ("UEM_PROXY_LISTEN", &listen),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for needle in [
        "UEM_API_URL: 'not a url' is not a URL",
        "UEM_REGION: 'atlantis' is not a region",
        "UEM_CLIENT_ID is not set",
        "neither UEM_CLIENT_SECRET nor UEM_CLIENT_SECRET_FILE is set",
        "UEM_PROXY_UPSTREAM_TIMEOUT: must be more than zero",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("listen"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let output = command(&[])
        .args(["--config", "/nonexistent/uem-proxy.toml", "config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/uem-proxy.toml: cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_log_holds_no_secret_and_no_token() {
    let leaky = format!(r#"{{"error":"invalid_client","error_description":"secret {SECRET} rejected"}}"#);
    let leaky: &'static str = Box::leak(leaky.into_boxed_str());
    let tokens = TokenService::script(&[Reply::Raw(401, "application/json", leaky.into())]);
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env = base_env(&api, &token_url);
    env.push(("RUST_LOG", "trace"));
    env.push(("UEM_PROXY_TOKEN_WAIT", "10s"));
    let mut proxy = Running::start(&env);
    let url = format!("http://{}", proxy.addr());

    *upstream.accepted.lock().unwrap() = "Bearer tok-2".into();
    let basic = "Basic bGVnYWN5OnBhc3N3b3JkLTEyMw==";
    let response = client()
        .post(format!("{url}/auth-check"))
        .header("authorization", basic)
        .header("cookie", "session=cookie-value-9")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "after an invalid_client answer, a retry and a 401 replay"
    );
    assert_eq!(tokens.calls(), 3);
    let status = proxy.terminate();
    assert!(status.success(), "{status:?}");

    let log = proxy.log();
    assert!(log.lines().count() > 20, "a trace-level run logs plenty:\n{log}");
    assert!(log.contains("invalid_client"), "the error code is logged");
    for secret in [SECRET, "tok-1", "tok-2", "bGVnYWN5OnBhc3N3b3JkLTEyMw", "cookie-value-9"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "uem_proxy::access")
        .collect();
    assert_eq!(access.len(), 1, "one access event per request");
    let event = &access[0];
    for field in ["request_id", "peer", "upstream_ms", "total_ms"] {
        assert!(!event[field].is_null(), "{field} missing in {event}");
    }
    assert_eq!(event["method"], "POST");
    assert_eq!(event["path"], "/auth-check");
    assert_eq!(event["status"], 200);
    assert_eq!(event["bytes_in"], 2);
    assert_eq!(event["bytes_out"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut proxy = Running::start(&base_env(&api, &token_url));
    let url = format!("http://{}/slow-headers?ms=1000", proxy.addr());
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate();
        (status, proxy.log())
    })
    .await
    .unwrap();
    assert_eq!(in_flight.await.unwrap(), "slow");
    assert!(status.0.success(), "{:?}\n{}", status.0, status.1);
    assert!(status.1.contains("drained"), "{}", status.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_only_while_a_proxy_answers() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut proxy = Running::start(&base_env(&api, &token_url));
    let addr = proxy.addr().to_string();
    let check = |addr: String| {
        tokio::task::spawn_blocking(move || {
            command(&[("UEM_PROXY_LISTEN", &addr)])
                .arg("healthcheck")
                .output()
                .unwrap()
        })
    };
    let healthy = check(addr.clone()).await.unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    tokio::task::spawn_blocking(move || proxy.terminate()).await.unwrap();
    let gone = check(addr).await.unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("unhealthy"));
}

/// Runs a printed command as a user would: with `sh` and `curl` when the machine has them, else
/// by fetching the URL the command names.
async fn run_printed(command: &str) -> String {
    let has_curl = Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_curl {
        let output = Command::new("sh").args(["-c", command]).output().unwrap();
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return String::from_utf8(output.stdout).unwrap();
    }
    let url = command.split_whitespace().last().unwrap().trim_matches('\'');
    client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_three_commands_that_answer_json_as_printed() {
    let mut child = command(&[])
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let commands: Vec<&str> = printed.iter().filter_map(|l| l.strip_prefix("  curl ")).collect();
    assert_eq!(commands.len(), 3, "{printed:#?}");
    for command in commands {
        let output = run_printed(&format!("curl {command}")).await;
        let json: serde_json::Value =
            serde_json::from_str(&output).unwrap_or_else(|e| panic!("curl {command} gave no JSON ({e}): {output}"));
        assert!(json.is_object() && !json.as_object().unwrap().is_empty(), "{json}");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_caller_is_logged_by_user_id() {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let dir = std::env::temp_dir().join(format!("uem-proxy-bin-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let my_uid = std::fs::metadata(&dir).unwrap().uid();
    let listen = format!("unix:{}/proxy.sock", dir.display());
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| *k != "UEM_PROXY_LISTEN");
    env.push(("UEM_PROXY_LISTEN", &listen));
    let mut proxy = Running::start(&env);
    assert_eq!(proxy.listen, listen);
    let path = dir.join("proxy.sock");
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream
            .write_all(b"GET /api/unix HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (status, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log()))
        .await
        .unwrap();
    assert!(status.success());
    let access = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["target"] == "uem_proxy::access")
        .expect("an access event");
    assert_eq!(access["peer"], format!("unix:uid={my_uid}"));
    assert!(!dir.join("proxy.sock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
