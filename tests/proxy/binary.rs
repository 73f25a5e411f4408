//! The real binary: exit codes, the `config` command, signals, and what its logs hold.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::support::{Reply, SECRET, TokenService, Upstream, client};

pub const BIN: &str = env!("CARGO_BIN_EXE_uem-proxy");

pub fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    // Only what the test gives: no stray UEM_* from the machine running the tests.
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(env.iter().copied());
    cmd
}

pub fn base_env<'a>(api: &'a str, token_url: &'a str) -> Vec<(&'a str, &'a str)> {
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
pub struct Running {
    pub child: Child,
    /// Where it listens, as its log says (`127.0.0.1:PORT` or `unix:/path`).
    listen: String,
    log: Arc<Mutex<Vec<String>>>,
    /// Collects the log until the process closes its standard error.
    collecting: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(env: &[(&str, &str)]) -> Running {
        Running::start_with(env, &[])
    }

    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Running {
        Running::spawn(command(env).args(args))
    }

    /// The proxy with the configuration file at `file` alone, logging JSON, on a free port.
    pub fn with_file(file: &std::path::Path) -> Running {
        let env = [("UEM_PROXY_LOG_FORMAT", "json"), ("UEM_PROXY_LISTEN", "127.0.0.1:0")];
        Running::start_with(&env, &["--config", &file.display().to_string()])
    }

    /// The first log event with `message`, waiting up to 10 s for it.
    pub fn wait_event(&self, message: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.events(message).into_iter().next() {
                return event;
            }
            assert!(std::time::Instant::now() < deadline, "no '{message}' in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `cmd`, a command that runs the proxy, and waits until its log says where it listens.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        let collecting = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(listen) = listening(&line) {
                    let _ = tx.send(listen);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let listen = rx.recv_timeout(Duration::from_secs(20)).expect("the proxy logs where it listens");
        Running { child, listen, log, collecting: Some(collecting) }
    }

    /// Where it listens, as its log says.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen.parse().expect("a TCP listener")
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let status = wait_exit(&mut self.child, Duration::from_secs(15));
        // Its last lines may still be in the pipe: the log is whole once they are read.
        if let Some(collecting) = self.collecting.take() {
            let _ = collecting.join();
        }
        status
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log events whose message is `message`, as they are now.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        let lines = self.log.lock().unwrap();
        let events = lines.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        events.filter(|e| e["message"] == message).collect()
    }
}

/// Where the proxy listens, from its `listening` line in either log format.
fn listening(line: &str) -> Option<String> {
    if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
        return (event["message"] == "listening").then(|| event["listen"].as_str().unwrap().to_owned());
    }
    let fields = line.split_once(": listening ")?.1;
    fields.split(' ').find_map(|f| f.strip_prefix("listen=")).map(str::to_owned)
}

/// A test that fails midway leaves no proxy running behind it.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let output = command(&[]).args(["--config", "/nonexistent/uem-proxy.toml", "config"]).output().unwrap();
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
    assert_eq!(response.status(), 200, "after an invalid_client answer, a retry and a 401 replay");
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
    drains_on_sigterm(&[]).await;
}

/// `TOKIO_WORKER_THREADS=1` runs the proxy on its main thread alone: it serves, drains and exits
/// as the multi-threaded one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_thread_sigterm_drains_in_flight_requests_and_exits_zero() {
    drains_on_sigterm(&[("TOKIO_WORKER_THREADS", "1")]).await;
}

async fn drains_on_sigterm(extra: &[(&str, &str)]) {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env = base_env(&api, &token_url);
    env.extend_from_slice(extra);
    let mut proxy = Running::start(&env);
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    let threads: usize = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    if extra.contains(&("TOKIO_WORKER_THREADS", "1")) {
        assert_eq!(threads, 1, "one worker is the main thread alone");
    } else {
        assert!(threads > 1, "{threads} threads");
    }
    let url = format!("http://{}/slow-headers?ms=1000", proxy.addr());
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() });
    upstream.wait_seen(1).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate();
        (status, proxy.log())
    })
    .await
    .unwrap();
    assert_eq!(in_flight.await.unwrap(), "slow");
    assert!(status.0.success(), "{:?}\n{}", status.0, status.1);
    assert!(status.1.contains("drained"), "{}", status.1);
    // The drained request's access line was written before the process ended.
    assert!(
        status.1.contains(r#""message":"request","request_id""#) && status.1.contains(r#""path":"/slow-headers""#),
        "{}",
        status.1
    );
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
            command(&[("UEM_PROXY_LISTEN", &addr)]).arg("healthcheck").output().unwrap()
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
    let has_curl = Command::new("sh").args(["-c", "command -v curl"]).output().is_ok_and(|o| o.status.success());
    if has_curl {
        let output = Command::new("sh").args(["-c", command]).output().unwrap();
        assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
        return String::from_utf8(output.stdout).unwrap();
    }
    let url = command.split_whitespace().last().unwrap().trim_matches('\'');
    client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_four_commands_that_answer_json_as_printed_the_last_from_uat() {
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
    assert_eq!(commands.len(), 4, "{printed:#?}");
    let mut environments = Vec::new();
    for command in commands {
        let output = run_printed(&format!("curl {command}")).await;
        let json: serde_json::Value =
            serde_json::from_str(&output).unwrap_or_else(|e| panic!("curl {command} gave no JSON ({e}): {output}"));
        assert!(json.is_object() && !json.as_object().unwrap().is_empty(), "{json}");
        environments.extend(json["EnvironmentName"].as_str().map(str::to_owned));
    }
    assert_eq!(environments, ["prod", "uat"], "system info of the default tenant, then of /t/uat/");
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15))).await.unwrap();
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
        stream.write_all(b"GET /api/unix HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (status, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing_and_a_bad_one_is_refused() {
    reloads_under_load(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_thread_reloads_under_load_drop_nothing_and_a_bad_one_is_refused() {
    reloads_under_load(&[("TOKIO_WORKER_THREADS", "1")]).await;
}

async fn reloads_under_load(extra: &[(&str, &str)]) {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    // One directory per variant: both run at once in this process.
    let dir = std::env::temp_dir().join(format!("uem-proxy-reload-{}-{}", std::process::id(), extra.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("uem-proxy.toml");
    let write = |text: &str| std::fs::write(&file, format!("client_secret = \"{text}\"\n")).unwrap();
    write("first-secret");
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| *k != "UEM_CLIENT_SECRET");
    env.extend_from_slice(extra);
    let file_arg = file.display().to_string();
    let mut proxy = Running::start_with(&env, &["--config", &file_arg]);
    let url = format!("http://{}", proxy.addr());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                // One client per task: building one per request costs more than the request.
                let client = client();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.get(format!("{url}/api/mdm/devices/search")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let pid = proxy.child.id().to_string();
    let hup = || assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, "client_secret = \"first-secret\"\n[policy]\ndeny = [\"REST API Devices Delete\"]\n")
        .unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let delete = || async { client().delete(format!("{url}/api/mdm/devices/1")).send().await.unwrap().status() };
    assert_eq!(delete().await, 403, "the reloaded policy denies deletions");
    std::fs::write(&file, "client_secret = \"first-secret\"\n[policy]\ndeny = [\"REST API Teleport\"]\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(delete().await, 403, "a refused reload keeps the running policy");
    // A new secret, and a setting only a restart can apply.
    std::fs::write(&file, "client_secret = \"second-secret\"\nheader_timeout = \"31s\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    // Enough requests to overlap every reload; far below what even a loaded machine serves.
    assert!(ok > 40, "{ok} requests");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );

    // The refused reload kept the policy before it; the last reload (a file change) brought the
    // new secret and its token.
    let denied = client().delete(format!("{url}/api/mdm/devices/1")).send().await.unwrap();
    assert_eq!(denied.status(), 200, "the last good file has no deny list");
    let forms = tokens.forms.lock().unwrap().clone();
    assert_eq!(forms.last().unwrap()["client_secret"], "second-secret");
    assert_eq!(upstream.last().headers["authorization"], format!("Bearer tok-{}", forms.len()).as_str());
    let status: serde_json::Value =
        client().get(format!("{url}/_proxy/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["config"]["last_reload"]["ok"], true);
    let (exit, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(exit.success());
    let reloaded = log.lines().filter(|l| l.contains("configuration reloaded")).count();
    assert!(reloaded >= 2, "{log}");
    assert!(log.contains("reload refused") && log.contains("REST API Teleport"), "{log}");
    let restart_only = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["setting"] == "header_timeout")
        .expect("a setting that needs a restart is named in the log");
    assert_eq!(restart_only["message"], "changed, but takes effect only after a restart");
    assert!(!log.contains("second-secret") && !log.contains("first-secret"), "no secret in the log");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_caller_and_uems_activity_id() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut proxy = Running::start(&base_env(&api, &token_url));
    *upstream.accepted.lock().unwrap() = "nobody".into();
    let response = client().get(format!("http://{}/auth-check", proxy.addr())).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (_, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    let event = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["target"] == "uem_proxy::access")
        .expect("an access event");
    assert_eq!(event["caller"], "loopback");
    assert_eq!(event["activity_id"], "a1");
    assert_eq!(event["bytes_out"], 68, "the error body still reaches the caller whole");
}

/// An `activityId` that holds the token (an API that names the activity by its credential)
/// reaches neither the access log nor the inspector; the API's body itself passes untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_id_that_holds_the_token_is_neither_logged_nor_shown() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut proxy = Running::start(&base_env(&api, &token_url));
    let mut token = String::new();
    for path in ["/echo-activity", "/echo-activity-split"] {
        let response = client().get(format!("http://{}{path}", proxy.addr())).send().await.unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        token = body["activityId"].as_str().unwrap().to_ascii_lowercase().replace(' ', "");
        assert!(token.len() >= 4, "{body}");
        let listed = loop {
            let listed = client().get(format!("http://{}/_proxy/requests", proxy.addr())).send().await.unwrap();
            let listed = listed.text().await.unwrap();
            if listed.contains(&format!("\"{path}\"")) {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!listed.to_ascii_lowercase().contains(&token), "{path}: {listed}");
    }
    let (_, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    for path in ["/echo-activity", "/echo-activity-split"] {
        let event = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["target"] == "uem_proxy::access" && e["path"] == path)
            .expect("an access event");
        assert_eq!(event["status"], 500);
        assert!(event.get("activity_id").is_none(), "{event}");
    }
    assert!(!log.to_ascii_lowercase().contains(&token), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_the_sandbox_and_names_the_failing_step() {
    let (base, _sandbox) = crate::support::start_sandbox(crate::support::sandbox_options()).await;
    let token_url = format!("{base}/connect/token");
    let run = |secret: &'static str, base: String, token_url: String| {
        tokio::task::spawn_blocking(move || {
            command(&[
                ("UEM_API_URL", &base),
                ("UEM_TOKEN_URL", &token_url),
                ("UEM_CLIENT_ID", crate::support::SANDBOX_ID),
                ("UEM_CLIENT_SECRET", secret),
            ])
            .arg("check")
            .output()
            .unwrap()
        })
    };
    let good = run(crate::support::SANDBOX_SECRET, base.clone(), token_url.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(text.contains("allowed   REST API Devices Read"), "{text}");
    assert!(text.contains("denied    REST API Admins Read"), "{text}");
    assert!(!text.contains(crate::support::SANDBOX_SECRET));

    let bad = run("wrong-secret", base, token_url).await.unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED at step \"credentials\""), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_carry_the_same_access_fields() {
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| *k != "UEM_PROXY_LISTEN" && *k != "UEM_PROXY_LOG_FORMAT");
    env.extend([("UEM_PROXY_LISTEN", listen.as_str()), ("UEM_PROXY_LOG_FORMAT", "text")]);
    let mut child = command(&env).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if client().get(format!("http://{listen}/api/x")).send().await.is_ok_and(|r| r.status() == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the proxy answers");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let output = tokio::task::spawn_blocking(move || {
        wait_exit(&mut child, Duration::from_secs(15));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
        text
    })
    .await
    .unwrap();
    let line = output.lines().find(|l| l.contains("uem_proxy::access") && l.contains("path=/api/x")).expect(&output);
    for field in
        ["request_id=", "peer=127.0.0.1:", "method=GET", "status=200", "upstream_ms=", "total_ms=", "bytes_out="]
    {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.starts_with('{'), "text, not JSON: {line}");
}

/// Waits until the log holds a line for which `found` holds, and returns that line.
async fn wait_for_line(proxy: &Running, found: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..200 {
        let events: Vec<serde_json::Value> =
            proxy.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if let Some(event) = events.into_iter().find(&found) {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such line in the log: {}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_entries_that_do_nothing_are_named_at_start_and_on_reload() {
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let dir = std::env::temp_dir().join(format!("uem-proxy-policy-warnings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("uem-proxy.toml");
    let policy = |text: &str| std::fs::write(&file, format!("[policy]\n{text}\n")).unwrap();
    policy("allow = [\"REST API Devices Read\", \"REST API MDM Devices\"]\ndeny = [\"REST API Devices Advanced\"]");
    let file_arg = file.display().to_string();
    let mut proxy = Running::start_with(&base_env(&api, &token_url), &["--config", &file_arg]);
    let warned = |name: &'static str| {
        move |e: &serde_json::Value| {
            e["level"] == "WARN"
                && e["message"] == "policy entry has no effect"
                && e["warning"].as_str().is_some_and(|w| w.contains(name))
        }
    };
    let start = wait_for_line(&proxy, warned("'REST API MDM Devices'")).await;
    assert!(start["warning"].as_str().unwrap().starts_with("policy.allow:"), "{start}");
    wait_for_line(&proxy, warned("'REST API Devices Advanced'")).await;
    let log = proxy.log();
    assert!(!log.contains("'REST API Devices Read'"), "a mapped permission is not warned about: {log}");

    // The policy holds for a method in lower case, and the access log shows it in upper case.
    let denied = crate::support::raw(
        proxy.addr(),
        "delete /api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let access = wait_for_line(&proxy, |e| e["target"] == "uem_proxy::access").await;
    assert_eq!((&access["method"], &access["status"]), (&"DELETE".into(), &403.into()), "{access}");

    policy("deny = [\"REST API System Groups\", \"REST API Devices Delete\"]");
    let pid = proxy.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let reloaded = wait_for_line(&proxy, warned("'REST API System Groups'")).await;
    assert!(reloaded["warning"].as_str().unwrap().contains("denies nothing"), "{reloaded}");
    wait_for_line(&proxy, |e| e["message"] == "configuration reloaded").await;
    let (exit, log) = tokio::task::spawn_blocking(move || (proxy.terminate(), proxy.log())).await.unwrap();
    assert!(exit.success());
    assert!(!log.contains("'REST API Devices Delete'"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn rust_log_keeps_or_drops_the_access_line_and_the_others_as_it_always_has() {
    // The binary prepares the access line itself and sends an event without values; the event
    // still decides. Field-name rules match by the event's own field names, and a span rule still
    // sees the request's span (a refused request's warning is written inside it).
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    // RUST_LOG, access lines written (of two requests), the refusal's warning written. Each
    // names `uem_proxy=info` or `info`: the test reads the `listening` line.
    for (rust_log, access, refused) in [
        ("info,uem_proxy::access=off", 0, true),
        ("warn,uem_proxy::access=info,uem_proxy=info", 2, true),
        ("info,[{status}]=off", 0, true),
        ("info,[{nosuchfield}]=off", 2, true),
        ("warn,uem_proxy=info,uem_proxy::access=warn,uem_proxy::access[{nosuchfield}]=info", 0, true),
        ("error,[request]=warn,uem_proxy=info", 2, true),
    ] {
        let mut env = base_env(&api, &token_url);
        env.push(("RUST_LOG", rust_log));
        let mut proxy = Running::start(&env);
        let response = client().get(format!("http://{}/api/x", proxy.addr())).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let evil = "GET /api/x HTTP/1.1\r\nHost: evil.example\r\nx-request-id: refused-1\r\nConnection: close\r\n\r\n";
        assert!(crate::support::raw(proxy.addr(), evil).await.starts_with("HTTP/1.1 403"));
        proxy.terminate();
        proxy.wait_event("drained");
        let log = proxy.log();
        let lines = log.lines().filter(|l| l.contains("\"target\":\"uem_proxy::access\"")).count();
        assert_eq!(lines, access, "access lines, RUST_LOG={rust_log}:\n{log}");
        let warning = proxy.events("request refused");
        assert_eq!(warning.len(), usize::from(refused), "RUST_LOG={rust_log}:\n{log}");
        if rust_log.contains("[request]") {
            // Written inside the request's span, which names it.
            assert_eq!(warning[0]["span"]["request_id"], "refused-1", "{log}");
        }
    }
}

#[tokio::test]
async fn the_line_after_an_access_line_is_written_too() {
    // On one thread, every line follows an access line on the same thread. Asking the filter
    // about an access line without sending its event once left the general formatter's own
    // filter with a verdict for the next event, which it then dropped.
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env = base_env(&api, &token_url);
    env.push(("TOKIO_WORKER_THREADS", "1"));
    let mut proxy = Running::start(&env);
    let warning = "SIGHUP: there is no configuration file to reload (settings come from the environment)";
    for _ in 0..3 {
        let response = client().get(format!("http://{}/api/x", proxy.addr())).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let before = proxy.events(warning).len();
        assert!(Command::new("kill").args(["-HUP", &proxy.child.id().to_string()]).status().unwrap().success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proxy.events(warning).len() == before {
            assert!(std::time::Instant::now() < deadline, "the warning after a request is missing:\n{}", proxy.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    proxy.terminate();
}

#[tokio::test]
async fn on_one_thread_a_warning_never_overtakes_the_access_lines_before_it() {
    // A thread with work holds its access lines and writes them together. Two requests in one
    // write: the first is served and its line held; the second is refused, with a warning,
    // before the thread waits again. The warning must come after the first request's line.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env = base_env(&api, &token_url);
    env.push(("TOKIO_WORKER_THREADS", "1"));
    let proxy = Running::start(&env);
    let addr = proxy.addr();
    for round in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let both = format!(
            "GET /api/first/{round} HTTP/1.1\r\nHost: {addr}\r\n\r\n\
             GET /api/second/{round} HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(both.as_bytes()).await.unwrap();
        let mut answers = String::new();
        conn.read_to_string(&mut answers).await.unwrap();
        assert_eq!(answers.matches("HTTP/1.1 ").count(), 2, "{answers}");
        assert!(answers.contains("host_not_allowed"), "{answers}");
        let second = format!("/api/second/{round}");
        wait_for_line(&proxy, |e| e["message"] == "request" && e["path"] == second).await;
        let lines: Vec<serde_json::Value> =
            proxy.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let at = |found: &dyn Fn(&serde_json::Value) -> bool| lines.iter().position(found).unwrap();
        let first = format!("/api/first/{round}");
        let served = at(&|e| e["message"] == "request" && e["path"] == first);
        let warned = lines
            .iter()
            .enumerate()
            .filter(|(_, e)| e["message"] == "request refused")
            .map(|(i, _)| i)
            .nth(round)
            .expect("the refusal's warning");
        let refused = at(&|e| e["message"] == "request" && e["path"] == second);
        assert!(served < warned && warned < refused, "out of order:\n{}", proxy.log());
    }
}

#[tokio::test]
async fn every_access_line_of_a_burst_is_written_whole() {
    // Lines held under load come out in writes of many lines: each must arrive once and whole,
    // on one thread and on several.
    for threads in ["1", "2"] {
        let tokens = TokenService::default();
        let upstream = Upstream::default();
        let (api, token_url) = (upstream.start().await, tokens.start().await);
        let mut env = base_env(&api, &token_url);
        env.push(("TOKIO_WORKER_THREADS", threads));
        let proxy = Running::start(&env);
        let base = format!("http://{}", proxy.addr());
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let base = base.clone();
                tokio::spawn(async move {
                    let client = client();
                    for n in 0..40 {
                        let response = client.get(format!("{base}/api/burst/{c}/{n}")).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        response.bytes().await.unwrap();
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = proxy.log.lock().unwrap().clone();
            let access: Vec<&String> =
                lines.iter().filter(|l| l.contains("\"target\":\"uem_proxy::access\"")).collect();
            for line in &access {
                let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(event["message"], "request", "{line}");
            }
            let mut paths: Vec<String> = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["message"] == "request")
                .map(|e| e["path"].as_str().unwrap().to_owned())
                .collect();
            if paths.len() >= 16 * 40 {
                paths.sort();
                let before = paths.len();
                paths.dedup();
                assert_eq!((before, paths.len()), (16 * 40, 16 * 40), "threads {threads}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "threads {threads}: {} of 640 lines", paths.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[test]
fn a_closed_standard_error_changes_no_exit_code() {
    // A supervisor whose log reader died leaves the proxy writing into a closed pipe: the exit
    // code must still tell a configuration error (2) from a failure to start (1), not a panic's.
    let spawn_closed = |env: &[(&str, &str)]| {
        let mut child = command(env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stderr.take());
        wait_exit(&mut child, Duration::from_secs(15))
    };
    let bad = spawn_closed(&[("UEM_API_URL", "not a url")]);
    assert_eq!(bad.code(), Some(2), "{bad:?}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut env = base_env("http://127.0.0.1:9", "http://127.0.0.1:9/token");
    env.retain(|(k, _)| *k != "UEM_PROXY_LISTEN");
    env.push(("UEM_PROXY_LISTEN", &addr));
    let unbound = spawn_closed(&env);
    assert_eq!(unbound.code(), Some(1), "{unbound:?}");
}
