//! Callers cannot hold the proxy: a caller that stops reading loses its connection and its
//! upstream turn; the connection cap sheds idle connections first and never a busy one; the real
//! binary keeps answering its health check with more idle connections than it may open files.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::binary::{BIN, Running, base_env};
use crate::support::{Proxy, TokenService, client, localhost_certificate, pattern, spawn};

/// An API whose `/big` download says when the proxy let go of it, and whose `/hold` answers
/// only when released.
#[derive(Clone, Default)]
struct Api {
    /// Notified when a `/big` body is dropped, finished or not.
    let_go: Arc<Notify>,
    /// Notified when a `/hold` request has arrived.
    holding: Arc<Notify>,
    release: Arc<Notify>,
}

/// Notifies when dropped.
struct OnDrop(Arc<Notify>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Api {
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/big", get(big))
            .route("/hold", get(hold))
            .fallback(|| async { "ok" })
            .with_state(self.clone());
        format!("http://{}", spawn(app).await)
    }
}

async fn big(State(api): State<Api>, Query(q): Query<HashMap<String, u64>>) -> Response {
    let total = q["bytes"];
    let guard = Arc::new(OnDrop(api.let_go.clone()));
    let chunks = futures_util::stream::unfold(0u64, move |sent| {
        let _guard = guard.clone();
        async move {
            (sent < total).then(|| {
                let n = (total - sent).min(64 * 1024);
                (Ok::<_, std::io::Error>(pattern(sent, n as usize)), sent + n)
            })
        }
    });
    ([("content-length", total.to_string())], Body::from_stream(chunks)).into_response()
}

async fn hold(State(api): State<Api>) -> &'static str {
    api.holding.notify_one();
    api.release.notified().await;
    "held"
}

async fn proxy_for(api: &Api, extra: &[(&str, &str)]) -> Proxy {
    let tokens = TokenService::default();
    Proxy::start(&api.start().await, &tokens.start().await, extra).await
}

/// Sends a keep-alive GET on `stream` and reads its response (which has a `Content-Length`).
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a complete response: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap();
                if body.len() >= length.trim().parse::<usize>().unwrap() {
                    return String::from_utf8_lossy(&got).into_owned();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a response in time")
}

/// Waits until the proxy closes `stream`; `Err` if it is still open after `max`.
async fn closed_within(stream: &mut TcpStream, max: Duration) -> Result<(), ()> {
    let mut buf = vec![0u8; 1 << 20];
    let drain = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(max, drain).await.map_err(|_| ())
}

#[tokio::test]
async fn a_caller_that_stops_reading_loses_its_connection_and_its_upstream_turn() {
    let api = Api::default();
    let proxy = proxy_for(&api, &[("UEM_PROXY_MAX_CONCURRENT", "1"), ("UEM_PROXY_BODY_IDLE_TIMEOUT", "1s")]).await;
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(b"GET /big?bytes=67108864 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut first = [0u8; 16 * 1024];
    stalled.read_exact(&mut first).await.unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));

    // The one upstream turn is the stalled download's until its connection is closed.
    let started = Instant::now();
    let second = client().get(format!("{}/other", proxy.url)).send().await.unwrap();
    assert_eq!(second.status(), 200, "{:?}", second.text().await);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "served after {waited:?}, while the download held the turn");
    assert!(waited < Duration::from_secs(5), "served only after {waited:?}");
    tokio::time::timeout(Duration::from_secs(5), api.let_go.notified()).await.expect("the upstream body is dropped");
    closed_within(&mut stalled, Duration::from_secs(5)).await.expect("the stalled caller's connection is closed");
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_never_cut() {
    let api = Api::default();
    let proxy = proxy_for(&api, &[("UEM_PROXY_BODY_IDLE_TIMEOUT", "1s")]).await;
    let total = 8u64 << 20;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    stream.write_all(format!("GET /big?bytes={total} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
    // Half a MiB, then a pause of 0.3 s, sixteen times: about 5 s in all, each pause under the limit.
    let started = Instant::now();
    let mut received = Vec::with_capacity(total as usize + 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut since_pause, mut body_start) = (0, None);
    let body_start = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "cut after {} bytes and {:?}", received.len(), started.elapsed());
        received.extend_from_slice(&buf[..n]);
        since_pause += n;
        if since_pause >= 512 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if body_start.is_none() {
            body_start = received.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
        }
        if let Some(at) = body_start
            && received.len() - at >= total as usize
        {
            break at;
        }
    };
    assert!(started.elapsed() > Duration::from_secs(2), "the reader was not slow: {:?}", started.elapsed());
    assert_eq!(received.len() - body_start, total as usize);
    assert!(received[body_start..] == pattern(0, total as usize)[..], "the body arrived altered");
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let api = Api::default();
    let proxy = proxy_for(&api, &[("UEM_PROXY_MAX_CONNECTIONS", "2")]).await;
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut a, "/_proxy/healthz").await.starts_with("HTTP/1.1 200"));
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut b, "/_proxy/healthz").await.starts_with("HTTP/1.1 200"));
    // a is now the longer idle; a request on b must not change that.
    assert!(get_on(&mut b, "/x").await.starts_with("HTTP/1.1 200"));

    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut c, "/_proxy/healthz").await.starts_with("HTTP/1.1 200"));
    closed_within(&mut a, Duration::from_secs(5)).await.expect("the longest-idle connection is closed");
    let metrics = get_on(&mut b, "/_proxy/metrics").await;
    assert!(metrics.contains("\nuem_proxy_connections 2\n"), "{metrics}");
    assert!(metrics.contains("\nuem_proxy_connections_max 2\n"), "{metrics}");
    assert!(metrics.contains("\nuem_proxy_connections_shed_total 1\n"), "{metrics}");
}

#[tokio::test]
async fn a_busy_connection_is_not_shed_and_a_new_caller_waits_for_room() {
    let api = Api::default();
    let proxy = proxy_for(&api, &[("UEM_PROXY_MAX_CONNECTIONS", "1")]).await;
    let mut busy = TcpStream::connect(proxy.addr).await.unwrap();
    busy.write_all(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), api.holding.notified()).await.expect("the request is upstream");
    let mut waiting = TcpStream::connect(proxy.addr).await.unwrap();
    waiting.write_all(b"GET /_proxy/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "answered while the only connection was busy: {early:?}");

    api.release.notify_one();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut answer))
        .await
        .expect("the busy connection answers, then is closed to make room")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("held"), "{answer}");
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}

/// The real binary, its open-file limit set to `open_files` (soft and hard) by the shell.
fn limited(open_files: u32, api: &str, token_url: &str, extra: &[(&str, &str)]) -> Running {
    let mut env = base_env(api, token_url);
    env.push(("RUST_LOG", "uem_proxy=debug,info"));
    env.extend_from_slice(extra);
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("ulimit -n {open_files} && exec \"$0\""), BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env);
    Running::spawn(&mut cmd)
}

#[tokio::test]
async fn health_checks_are_answered_with_more_idle_connections_than_open_files() {
    let tokens = TokenService::default();
    let api = Api::default();
    let proxy = limited(256, &api.start().await, &tokens.start().await, &[]);
    // More idle connections than the process may open files: without a cap, accept fails for
    // want of descriptors until idle ones time out.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(format!("http://{}/_proxy/healthz", proxy.addr())).send(),
    )
    .await
    .expect("the health check is answered in time")
    .unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    let metrics = client().get(format!("http://{}/_proxy/metrics", proxy.addr())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("\nuem_proxy_connections_max 192\n"), "{metrics}");
    let log = proxy.log();
    assert!(log.contains(r#""open_files":256"#), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    drop(idle);
}

#[tokio::test]
async fn accept_failures_are_logged_once_a_second_with_a_count_and_do_not_spin() {
    let tokens = TokenService::default();
    let api = Api::default();
    // A cap above the open-file limit, so that accepting runs out of descriptors.
    let extra = [("UEM_PROXY_MAX_CONNECTIONS", "1000")];
    let proxy = limited(64, &api.start().await, &tokens.start().await, &extra);
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first_seen = None;
    let failures = loop {
        let failures = proxy.events("accept failed");
        if failures.len() == 1 && first_seen.is_none() {
            first_seen = Some(Instant::now());
        }
        if failures.len() >= 2 {
            break failures;
        }
        assert!(Instant::now() < deadline, "fewer than two accept failure lines: {}", proxy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let apart = first_seen.map(|t| t.elapsed());
    assert!(apart.is_none_or(|d| d >= Duration::from_millis(800)), "two lines {apart:?} apart");
    let suppressed = failures[1]["fields"]["suppressed"].as_u64().or(failures[1]["suppressed"].as_u64()).unwrap();
    // A 100 ms back-off makes about nine failures between two lines; a spinning loop, thousands.
    assert!((5..=15).contains(&suppressed), "{suppressed} failures not logged between two lines");
    assert!(
        !proxy.events("max_connections leaves too few file descriptors for upstream connections and files").is_empty()
    );
    drop(idle);
}

/// A certificate for localhost and a free port for the HTTPS listener; the certificate's folder
/// is removed when the test ends, passed or not.
struct Https {
    cert: String,
    key: String,
    port: u16,
    listen: String,
}

impl Https {
    fn new() -> Https {
        let (cert, key) = localhost_certificate();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Https { cert, key, port, listen: format!("127.0.0.1:{port}") }
    }

    /// A TCP connection to the HTTPS listener (once it listens) that never starts its handshake,
    /// given a moment to be accepted.
    async fn silent_connection(&self) -> TcpStream {
        for _ in 0..50 {
            if let Ok(stream) = TcpStream::connect(&self.listen).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the HTTPS listener does not accept");
    }

    fn settings(&self) -> [(&'static str, &str); 3] {
        [("UEM_PROXY_TLS_CERT", &self.cert), ("UEM_PROXY_TLS_KEY", &self.key), ("UEM_PROXY_TLS_LISTEN", &self.listen)]
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(std::path::Path::new(&self.cert).parent().unwrap());
    }
}

#[tokio::test]
async fn a_caller_that_stops_reading_over_https_loses_its_connection_too() {
    let tls = Https::new();
    let api = Api::default();
    let extra = [tls.settings().as_slice(), &[("UEM_PROXY_BODY_IDLE_TIMEOUT", "1s")]].concat();
    let _proxy = proxy_for(&api, &extra).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&tls.cert).unwrap()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/big?bytes=67108864", tls.port);
    let mut response = None;
    for _ in 0..50 {
        if let Ok(r) = https.get(&url).send().await {
            response = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut response = response.expect("the HTTPS listener answers");
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    // The response is held and no longer read.
    tokio::time::timeout(Duration::from_secs(5), api.let_go.notified()).await.expect("the upstream body is dropped");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut received = 0usize;
        while let Ok(Some(piece)) = response.chunk().await {
            received += piece.len();
        }
        received
    })
    .await
    .expect("the connection is closed");
    assert!(rest < 64 << 20, "the whole body arrived");
}

#[tokio::test]
async fn a_connection_still_shaking_hands_holds_up_no_shutdown() {
    let tls = Https::new();
    let api = Api::default();
    let limits = [("UEM_PROXY_HEADER_TIMEOUT", "20s"), ("UEM_PROXY_SHUTDOWN_GRACE", "20s")];
    let mut proxy = proxy_for(&api, &[tls.settings().as_slice(), &limits].concat()).await;
    let mut shaking = tls.silent_connection().await;
    proxy.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(3), &mut proxy.task).await;
    ended.expect("the proxy ends without waiting for the handshake's timeout").unwrap().unwrap();
    closed_within(&mut shaking, Duration::from_secs(1)).await.expect("the connection shaking hands is closed");
}

#[tokio::test]
async fn at_the_cap_a_connection_still_shaking_hands_makes_room_at_once() {
    let tls = Https::new();
    let api = Api::default();
    let limits = [("UEM_PROXY_MAX_CONNECTIONS", "2"), ("UEM_PROXY_HEADER_TIMEOUT", "20s")];
    let proxy = proxy_for(&api, &[tls.settings().as_slice(), &limits].concat()).await;
    // Opened first and silent: idle the longest, its handshake not even begun.
    let mut shaking = tls.silent_connection().await;
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut b, "/_proxy/healthz").await.starts_with("HTTP/1.1 200"));
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(3), get_on(&mut c, "/_proxy/healthz")).await;
    assert!(answered.expect("answered without waiting for the handshake's timeout").starts_with("HTTP/1.1 200"));
    closed_within(&mut shaking, Duration::from_secs(1)).await.expect("the connection shaking hands is closed");
}
