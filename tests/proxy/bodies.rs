//! Response bodies are never emptied, shortened or passed on as complete when they are not:
//! upstreams on raw sockets that cut, stall, trickle or frame an answer wrongly, and callers on raw
//! sockets that see exactly what the proxy sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Proxy, TokenService};

/// One step of a raw upstream's answer; after the last step the upstream closes the connection.
#[derive(Clone)]
pub enum Step {
    Send(Vec<u8>),
    Pause(Duration),
    /// Holds the connection open and sends nothing more.
    Stall,
}

pub fn send(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send(bytes.as_ref().to_vec())
}

/// An upstream that reads each request head and answers every connection with `steps`, byte for
/// byte, however wrong they are.
pub async fn raw_upstream(steps: Vec<Step>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let steps = steps.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                for step in steps {
                    match step {
                        Step::Send(bytes) => {
                            if stream.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        Step::Pause(d) => tokio::time::sleep(d).await,
                        Step::Stall => std::future::pending::<()>().await,
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// The proxy in front of `steps`, with these settings.
pub async fn proxy(steps: Vec<Step>, extra: &[(&str, &str)]) -> Proxy {
    let api = raw_upstream(steps).await;
    let tokens = TokenService::default().start().await;
    Proxy::start(&api, &tokens, extra).await
}

/// What a caller on a raw keep-alive connection received.
#[derive(Debug)]
pub struct Received {
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    /// The body, decoded when it was chunked and complete.
    pub body: Vec<u8>,
    /// Whether the response arrived whole by its own framing (full `Content-Length`, or the
    /// last chunk of a chunked body).
    pub complete: bool,
    /// Whether the proxy closed the connection.
    pub closed: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The visible signs of a transfer cut short: the framing unfinished and the connection gone.
    pub fn assert_cut(&self) {
        assert!(!self.complete, "a broken body must not look complete: {self:?}");
        assert!(self.closed, "the connection must be closed: {self:?}");
    }
}

/// Sends `request` on a new connection and reads until the response is complete by its framing,
/// the proxy closes the connection, or 10 s have passed.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Received {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    receive(stream).await
}

/// What one read from the proxy brought.
pub enum Reading {
    More,
    /// The proxy closed the connection (or it failed).
    Closed,
    TimedOut,
}

/// Reads what `stream` sends next into `data`, waiting until `deadline` at most.
pub async fn read_more(stream: &mut TcpStream, data: &mut Vec<u8>, deadline: tokio::time::Instant) -> Reading {
    let mut buf = vec![0u8; 64 * 1024];
    match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Reading::Closed,
        Ok(Ok(n)) => {
            data.extend_from_slice(&buf[..n]);
            Reading::More
        }
        Err(_) => Reading::TimedOut,
    }
}

/// Reads one response from `stream`, as [`exchange`] does.
pub async fn receive(mut stream: TcpStream) -> Received {
    let mut data = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while framed(&data).is_none() {
        match read_more(&mut stream, &mut data, deadline).await {
            Reading::More => {}
            Reading::Closed => {
                closed = true;
                break;
            }
            Reading::TimedOut => break,
        }
    }
    let whole = framed(&data);
    if whole.is_some() && !closed {
        // Complete: whether the proxy then closes is seen at once or not at all.
        let soon = tokio::time::Instant::now() + Duration::from_millis(100);
        closed = matches!(read_more(&mut stream, &mut Vec::new(), soon).await, Reading::Closed);
    }
    let end = data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let complete = whole.is_some();
    let body = whole.unwrap_or_else(|| data[end..].to_vec());
    Received { status, head, body, complete, closed }
}

/// A GET of `path` on a keep-alive connection.
pub async fn get(addr: SocketAddr, path: &str) -> Received {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await
}

/// The body when `data` holds a whole response by its framing.
fn framed(data: &[u8]) -> Option<Vec<u8>> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let body = &data[end..];
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        return dechunk(body);
    }
    let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|n| n.trim().parse().ok());
    match length {
        Some(n) if body.len() >= n => Some(body[..n].to_vec()),
        // Without a length (or with one not yet reached) only the end of the connection ends it.
        _ => None,
    }
}

/// A chunked body decoded, once its last chunk has arrived.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line]).ok()?.trim(), 16).ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return data.starts_with(b"\r\n").then_some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub fn head(status: &str, pairs: &[(&str, String)]) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in pairs {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

const JSON: &str = "application/json";
const BINARY: &str = "application/octet-stream";

/// `GET`s answered with a body of `declared` bytes, of which only `sent` arrive before `then`.
fn partial(status: &str, media: &str, declared: usize, sent: usize, then: Option<Step>) -> Vec<Step> {
    let head = head(status, &[("Content-Type", media.to_owned()), ("Content-Length", declared.to_string())]);
    let mut steps = vec![send(head), send(vec![b'x'; sent])];
    steps.extend(then);
    steps
}

// --- Bodies the proxy reads whole: nothing is sent before they are -----------------------------

#[tokio::test]
async fn a_json_body_cut_mid_way_is_a_502_never_an_empty_or_short_answer() {
    // The rewrite path (a 200 of known length) and the activity-id path (a JSON error of known
    // length, with rewriting off), with the cut early, late and one byte short.
    for sent in [0, 10, 99] {
        for (status, extra) in [("200 OK", &[][..]), ("404 Not Found", &[("UEM_PROXY_REWRITE_BODIES", "false")][..])] {
            let proxy = proxy(partial(status, JSON, 100, sent, None), extra).await;
            let got = get(proxy.addr, "/api/mdm/devices/1").await;
            assert_eq!(got.status, 502, "{status}, {sent} of 100 bytes: {got:?}");
            assert!(got.complete, "the proxy's own answer is whole: {got:?}");
            assert!(!got.closed, "the caller's connection stays usable");
            assert_eq!(got.json()["error"], "upstream_error");
            assert!(got.json()["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        }
    }
}

#[tokio::test]
async fn a_json_body_that_stalls_is_a_504_never_an_empty_or_short_answer() {
    for (status, rewrite) in [("200 OK", "true"), ("400 Bad Request", "false")] {
        let steps = partial(status, JSON, 100, 10, Some(Step::Stall));
        let proxy =
            proxy(steps, &[("UEM_PROXY_UPSTREAM_TIMEOUT", "500ms"), ("UEM_PROXY_REWRITE_BODIES", rewrite)]).await;
        let got = get(proxy.addr, "/api/mdm/devices/1").await;
        assert_eq!(got.status, 504, "{status}: {got:?}");
        assert!(got.complete);
        assert_eq!(got.json()["error"], "upstream_timeout");
    }
}

// --- Streamed bodies: the status is out, so the connection is cut -------------------------------

#[tokio::test]
async fn a_streamed_body_cut_mid_way_cuts_the_callers_connection() {
    let chunked = |media: &str| {
        let head = head("200 OK", &[("Content-Type", media.to_owned()), ("Transfer-Encoding", "chunked".to_owned())]);
        vec![send(head), send("5\r\nhello\r\n")]
    };
    let cases = [
        ("binary of known length", partial("200 OK", BINARY, 100, 10, None)),
        ("binary, chunked", chunked(BINARY)),
        ("JSON, chunked (streaming rewrite)", chunked(JSON)),
        ("JSON larger than 1 MiB (streaming rewrite)", partial("200 OK", JSON, 2 << 20, 100_000, None)),
    ];
    for (name, steps) in cases {
        let proxy = proxy(steps, &[]).await;
        let got = get(proxy.addr, "/api/mdm/devices/1").await;
        assert_eq!(got.status, 200, "{name}");
        got.assert_cut();
    }
}

#[tokio::test]
async fn a_streamed_body_that_stalls_cuts_the_callers_connection() {
    for media in [BINARY, JSON] {
        let steps = partial("200 OK", media, 2 << 20, 1000, Some(Step::Stall));
        let proxy = proxy(steps, &[("UEM_PROXY_UPSTREAM_TIMEOUT", "500ms")]).await;
        let got = get(proxy.addr, "/api/mdm/devices/1").await;
        assert_eq!(got.status, 200, "{media}");
        got.assert_cut();
    }
}

// --- The upstream timeout is a limit on pauses, not on bodies ---------------------------------

/// A body of `pieces` pieces of `size` bytes, one every 300 ms.
fn trickle(status: &str, media: &str, pieces: usize, size: usize) -> (Vec<Step>, Vec<u8>) {
    let body: Vec<u8> = (0..pieces * size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut steps =
        vec![send(head(status, &[("Content-Type", media.to_owned()), ("Content-Length", body.len().to_string())]))];
    for piece in body.chunks(size) {
        steps.push(Step::Pause(Duration::from_millis(300)));
        steps.push(send(piece));
    }
    (steps, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_answer_arrives_whole_whatever_its_size_and_duration() {
    // 14 pieces 0.3 s apart: 4.2 s in all, against a timeout of 2 s.
    let cases = [
        ("small JSON, rewritten whole", "200 OK", JSON, 100, "true"),
        ("small JSON error, read for its activity id", "400 Bad Request", JSON, 100, "false"),
        ("large JSON, rewritten as it streams", "200 OK", JSON, 100_000, "true"),
        ("large binary, streamed", "200 OK", BINARY, 100_000, "true"),
    ];
    let runs = cases.map(|(name, status, media, size, rewrite)| async move {
        let (steps, body) = trickle(status, media, 14, size);
        let settings = [("UEM_PROXY_UPSTREAM_TIMEOUT", "2s"), ("UEM_PROXY_REWRITE_BODIES", rewrite)];
        let proxy = proxy(steps, &settings).await;
        let started = std::time::Instant::now();
        let got = get(proxy.addr, "/api/mdm/devices/1").await;
        assert!(started.elapsed() > Duration::from_secs(4), "{name}: the upstream did trickle");
        assert_eq!(got.status, status[..3].parse::<u16>().unwrap(), "{name}: {:?}", got.head);
        assert!(got.complete, "{name}: {got:?}");
        assert_eq!(got.body.len(), body.len(), "{name}");
        assert!(got.body == body, "{name}: the same bytes");
    });
    futures_util::future::join_all(runs).await;
}

// --- Answers that cannot be forwarded faithfully ----------------------------------------------

#[tokio::test]
async fn an_answer_framed_both_ways_is_a_502_never_a_short_body() {
    for (cl, te, media) in [
        ("Content-Length", "Transfer-Encoding", "text/plain"),
        ("content-length", "TRANSFER-ENCODING", BINARY),
        ("CONTENT-LENGTH", "transfer-encoding", JSON),
    ] {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {media}\r\n{cl}: 3\r\n{te}: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let proxy = proxy(vec![send(answer)], &[]).await;
        let got = get(proxy.addr, "/api/mdm/devices/1").await;
        assert_eq!(got.status, 502, "{cl} and {te}: {got:?}");
        assert_eq!(got.json()["error"], "upstream_error");
        assert!(got.json()["message"].as_str().unwrap().contains("Transfer-Encoding"));
    }
}

#[tokio::test]
async fn an_upstream_switching_protocols_is_a_502() {
    let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let proxy = proxy(vec![send(answer), Step::Stall], &[]).await;
    let got = exchange(
        proxy.addr,
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 502, "{got:?}");
    assert_eq!(got.json()["error"], "upstream_error");
}

#[tokio::test]
async fn a_healthy_answer_is_whole_and_keeps_the_connection() {
    let body = r#"{"Id":1}"#;
    let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let proxy = proxy(vec![send(answer)], &[]).await;
    let got = get(proxy.addr, "/api/mdm/devices/1").await;
    assert_eq!((got.status, got.complete, got.closed), (200, true, false), "{got:?}");
    assert_eq!(got.body, body.as_bytes());
}

#[tokio::test]
async fn a_length_stated_twice_reaches_the_caller_once() {
    let body = r#"{"Id":1}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{body}",
        n = body.len()
    );
    let proxy = proxy(vec![send(answer)], &[]).await;
    let got = get(proxy.addr, "/api/mdm/devices/1").await;
    assert_eq!((got.status, got.complete), (200, true), "{got:?}");
    assert_eq!(got.head.matches("content-length:").count(), 1, "{got:?}");
    assert_eq!(got.body, body.as_bytes());
}

// --- The access log's `complete` --------------------------------------------------------------

/// Captures this thread's log events as JSON (the proxy's tasks run on the test's one thread).
///
/// One global subscriber writes each thread's events to that thread's capture, if it has one. A
/// subscriber set per thread instead would race with other tests' threads: a callsite first
/// reached on a thread without one may cache "never" and lose this thread's events.
pub struct Captured {
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture; drops the bytes when it has none.
struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| c.borrow().as_ref().map(|lines| lines.lock().unwrap().extend_from_slice(buf)));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn start() -> Captured {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| Sink)
                .json()
                .flatten_event(true)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        });
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(lines.clone()));
        Captured { lines }
    }

    /// The access event of the request to `path`, once it has been written.
    pub async fn access(&self, path: &str) -> serde_json::Value {
        for _ in 0..500 {
            let text = String::from_utf8(self.lines.lock().unwrap().clone()).unwrap();
            let event = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["target"] == "uem_proxy::access" && e["path"] == path);
            if let Some(event) = event {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no access event for {path}");
    }
}

#[tokio::test]
async fn complete_is_true_exactly_when_the_whole_body_reached_the_caller() {
    let log = Captured::start();
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;

    // Whole, with a Content-Length: small (rewritten whole), large (streamed), and empty.
    for (path, bytes) in [("/api/small", None), ("/download", Some(3 << 20)), ("/download", Some(0))] {
        let query = bytes.map(|n| format!("?bytes={n}")).unwrap_or_default();
        let got = get(proxy.addr, &format!("{path}{query}")).await;
        assert!(got.complete && got.head.contains("content-length"), "{got:?}");
        let event = log.access(path).await;
        assert_eq!(event["complete"], true, "{path}{query} with a Content-Length: {event}");
        assert_eq!(event["bytes_out"], got.body.len(), "{event}");
        log.lines.lock().unwrap().clear();
    }
    // A HEAD answer: its Content-Length promises a body that is never sent.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"HEAD /api/head HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(log.access("/api/head").await["complete"], true);
    drop(stream);
    // Whole, chunked.
    let got = get(proxy.addr, "/links-stream").await;
    assert!(got.complete && got.head.contains("transfer-encoding: chunked"), "{got:?}");
    assert_eq!(log.access("/links-stream").await["complete"], true);

    // The caller goes away mid-download.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /download?bytes=104857600 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    stream.read_exact(&mut buf).await.unwrap();
    drop(stream);
    let event = log.access("/download").await;
    assert_eq!(event["complete"], false, "{event}");
    assert!(event["bytes_out"].as_u64().unwrap() < 104857600, "{event}");
}

#[tokio::test]
async fn complete_is_false_when_the_upstream_cut_the_body() {
    let log = Captured::start();
    for (name, steps) in [
        ("known length", partial("200 OK", BINARY, 100, 10, None)),
        ("chunked", vec![send(head("200 OK", &[("Transfer-Encoding", "chunked".to_owned())])), send("5\r\nhello\r\n")]),
    ] {
        let proxy = proxy(steps, &[]).await;
        get(proxy.addr, "/api/cut").await.assert_cut();
        let event = log.access("/api/cut").await;
        assert_eq!(event["complete"], false, "{name}: {event}");
        log.lines.lock().unwrap().clear();
    }
}
