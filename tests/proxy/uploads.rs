//! Request bodies cannot hold the proxy: a caller that stops sending is cut off after
//! `body_idle_timeout`, and bodies kept for replay share one budget, past which they stream.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::bodies::{Reading, exchange, read_more, receive};
use crate::support::Proxy;

// --- Callers that stop sending a request body --------------------------------------------------

/// A request head promising `length` bytes of body, and the first ten of them.
fn stalled_upload(path: &str, length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n0123456789")
        .into_bytes()
}

#[tokio::test]
async fn a_caller_that_stalls_a_small_body_gets_408_and_the_connection_closes() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_BODY_IDLE_TIMEOUT", "1s")]).await;
    // Small enough to be kept for a replay, and too large: both paths are bounded.
    for length in [100, 1_000_000] {
        let started = std::time::Instant::now();
        let got = exchange(proxy.addr, &stalled_upload("/api/x", length)).await;
        assert_eq!(got.status, 408, "{length}: {got:?}");
        assert_eq!(got.json()["error"], "request_timeout");
        assert!(got.closed, "the rest of the body is never read: the connection closes");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
    assert!(upstream.seen().iter().all(|s| s.target != "/api/x"), "no half body was sent as if whole");
}

#[tokio::test]
async fn callers_that_stall_their_uploads_do_not_shut_out_others_beyond_the_idle_timeout() {
    let settings =
        [("UEM_PROXY_BODY_IDLE_TIMEOUT", "1s"), ("UEM_PROXY_MAX_CONCURRENT", "3"), ("UEM_PROXY_PACER_MAX_WAIT", "8s")];
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&settings).await;
    // Three uploads of 1 MB (streamed, too large to be kept) that stop after 10 bytes hold every
    // upstream slot.
    let stalled: Vec<_> = (0..3)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move { exchange(addr, &stalled_upload("/probe-upload", 1_000_000)).await })
        })
        .collect();
    for _ in 0..500 {
        if upstream.seen().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.seen().len(), 3, "the three uploads reached the upstream");
    let started = std::time::Instant::now();
    let response = crate::support::client().get(format!("{}/api/other", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?} for a slot", started.elapsed());
    for upload in stalled {
        let got = upload.await.unwrap();
        assert_eq!(got.status, 408, "{got:?}");
        assert_eq!(got.json()["error"], "request_timeout");
        assert!(got.closed);
    }
    // The upstream requests were abandoned too, not left waiting for the rest.
    for _ in 0..500 {
        if upstream.broken_uploads.load(std::sync::atomic::Ordering::SeqCst) == 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the upstream requests of the stalled uploads were not abandoned");
}

// --- The replay budget -------------------------------------------------------------------------

/// The bytes of request bodies the proxy holds for replay now, from `/_proxy/status`.
async fn held(proxy: &Proxy) -> u64 {
    let status: serde_json::Value = crate::support::client()
        .get(format!("{}/_proxy/status", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["replay_buffers"]["held_bytes"].as_u64().unwrap()
}

async fn wait_held(proxy: &Proxy, bytes: u64) {
    for _ in 0..500 {
        if held(proxy).await == bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the proxy never held {bytes} bytes for replay (holds {})", held(proxy).await);
}

#[tokio::test]
async fn bodies_beyond_the_replay_budget_stream_and_are_not_replayed() {
    let settings = [("UEM_PROXY_REPLAY_BUDGET", "100"), ("UEM_PROXY_BODY_IDLE_TIMEOUT", "20s")];
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&settings).await;
    let client = crate::support::client();
    client.get(format!("{}/api/warm", proxy.url)).send().await.unwrap();

    // A caller holds 60 of the 100 bytes with a replayable body it does not finish.
    let mut held_open = TcpStream::connect(proxy.addr).await.unwrap();
    held_open.write_all(&stalled_upload("/api/held", 60)).await.unwrap();
    wait_held(&proxy, 60).await;

    // 60 more do not fit: that body streams, so the upstream sees its start before its end.
    let mut streamed = TcpStream::connect(proxy.addr).await.unwrap();
    streamed.write_all(&stalled_upload("/probe-upload", 60)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), upstream.first_piece.notified())
        .await
        .expect("a body past the budget streams");
    streamed.write_all(&[b'x'; 50]).await.unwrap();
    let got = receive(streamed).await;
    assert_eq!((got.status, got.json()["bytes"].as_u64()), (200, Some(60)), "{got:?}");

    // After a 401, a body within the budget is replayed with a fresh token; one past it is not.
    let auth_checks = || upstream.seen().iter().filter(|s| s.target == "/auth-check").count();
    *upstream.accepted.lock().unwrap() = "Bearer tok-2".into();
    let fits = client.post(format!("{}/auth-check", proxy.url)).body("y".repeat(40)).send().await.unwrap();
    assert_eq!(fits.status(), 200, "40 bytes fit the 40 left: replayed");
    assert_eq!(auth_checks(), 2);
    *upstream.accepted.lock().unwrap() = "Bearer tok-3".into();
    let past = client.post(format!("{}/auth-check", proxy.url)).body("z".repeat(41)).send().await.unwrap();
    assert_eq!(past.status(), 401, "41 bytes do not fit: streamed, so the 401 is the caller's");
    assert_eq!(auth_checks(), 3, "not replayed");

    // The held share is returned when its request ends.
    assert_eq!(held(&proxy).await, 60);
    drop(held_open);
    wait_held(&proxy, 0).await;
}

// --- Bodies an answer came before -----------------------------------------------------------

/// The answers on one connection, in order, each as its lower-cased head; and whether the proxy
/// then closed the connection. Reads until `count` answers are in, the proxy closes, or 10 s.
async fn answers(stream: &mut TcpStream, count: usize) -> (Vec<String>, bool) {
    let (mut data, mut heads, mut closed) = (Vec::new(), Vec::new(), false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while heads.len() < count {
        // Every answer here is the proxy's own, framed by its Content-Length.
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + length {
                data.drain(..end + 4 + length);
                heads.push(head);
                continue;
            }
        }
        match read_more(stream, &mut data, deadline).await {
            Reading::More => {}
            Reading::Closed => {
                closed = true;
                break;
            }
            Reading::TimedOut => break,
        }
    }
    if !closed {
        let soon = tokio::time::Instant::now() + Duration::from_millis(200);
        closed = matches!(read_more(stream, &mut data, soon).await, Reading::Closed);
    }
    (heads, closed)
}

/// A POST the proxy refuses before reading its body (a web page's origin it does not know).
fn refused_post(body_headers: &str) -> String {
    format!("POST /api/x HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n{body_headers}\r\n")
}

const HEALTH: &[u8] = b"GET /_proxy/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_refused_body_that_is_still_arriving_is_read_so_the_connection_carries_the_next_request() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(refused_post("Content-Length: 300000\r\n").as_bytes()).await.unwrap();
    // The refusal is out before the body: hyper had none of it buffered to throw away.
    let (first, _) = answers(&mut stream, 1).await;
    assert!(first[0].starts_with("http/1.1 403"), "{first:?}");
    assert!(!first[0].contains("connection: close"), "{first:?}");
    stream.write_all(&vec![b'x'; 300_000]).await.unwrap();
    stream.write_all(HEALTH).await.unwrap();
    let (next, closed) = answers(&mut stream, 1).await;
    assert!(next.first().is_some_and(|h| h.starts_with("http/1.1 200")), "the next request is answered: {next:?}");
    assert!(!closed);
    assert!(upstream.seen().iter().all(|s| s.target != "/api/x"), "nothing refused was forwarded");
}

#[tokio::test]
async fn a_refused_body_sent_whole_with_a_request_behind_it_leaves_both_answered() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut pipelined = refused_post("Content-Length: 200000\r\n").into_bytes();
    pipelined.extend_from_slice(&vec![b'x'; 200_000]);
    pipelined.extend_from_slice(HEALTH);
    stream.write_all(&pipelined).await.unwrap();
    let (heads, _) = answers(&mut stream, 2).await;
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].starts_with("http/1.1 403") && heads[1].starts_with("http/1.1 200"), "{heads:?}");
}

#[tokio::test]
async fn a_refused_body_the_proxy_will_not_read_is_answered_with_connection_close() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let cases = [
        // Too much to read for the sake of one connection.
        ("Content-Length: 5000000\r\n", &b"0123456789"[..]),
        // No length to judge by.
        ("Transfer-Encoding: chunked\r\n", &b"a\r\n0123456789\r\n"[..]),
        // The caller waits for `100 Continue` before sending: reading would ask for the body
        // after the answer, and a request behind it would be read as the body.
        ("Content-Length: 10\r\nExpect: 100-continue\r\n", &b""[..]),
        // hyper heeds one of two; either may be the one.
        ("Content-Length: 10\r\nExpect: foo\r\nExpect: 100-continue\r\n", &b""[..]),
        // The caller closes the connection after this request anyway: nothing is waited for.
        ("Content-Length: 10\r\nConnection: close\r\n", &b"01234"[..]),
    ];
    for (headers, start) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(refused_post(headers).as_bytes()).await.unwrap();
        stream.write_all(start).await.unwrap();
        let started = std::time::Instant::now();
        let (heads, closed) = answers(&mut stream, 1).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{headers}: {:?}", started.elapsed());
        assert_eq!(heads.len(), 1, "{headers}: {heads:?}");
        assert!(heads[0].starts_with("http/1.1 403"), "{headers}: no 100 Continue before the refusal: {heads:?}");
        assert!(heads[0].contains("\r\nconnection: close"), "{headers}: {heads:?}");
        assert!(closed, "{headers}");
    }
}

#[tokio::test]
async fn a_body_past_the_limit_found_while_streaming_is_answered_with_connection_close() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_MAX_BODY_BYTES", "1000")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(format!("7d0\r\n{}\r\n", "x".repeat(2000)).as_bytes()).await.unwrap();
    let (heads, closed) = answers(&mut stream, 1).await;
    assert!(heads.first().is_some_and(|h| h.starts_with("http/1.1 413")), "{heads:?}");
    assert!(heads[0].contains("\r\nconnection: close"), "the rest is never read: {heads:?}");
    assert!(closed);
    assert!(upstream.seen().iter().all(|s| s.target != "/api/upload" || s.body.len() <= 1000));
}

#[tokio::test]
async fn a_caller_pipelining_many_refused_bodies_gets_every_answer() {
    // The real binary: on its several runtime threads, the bodies of one burst are read a turn
    // after their answers, all at once.
    use crate::binary::{Running, base_env};
    use crate::support::{TokenService, Upstream};
    let (upstream, tokens) = (Upstream::default(), TokenService::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let proxy = Running::start(&base_env(&api, &token_url));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut pipelined = Vec::new();
    for _ in 0..200 {
        pipelined.extend_from_slice(refused_post("Content-Length: 10\r\n").as_bytes());
        pipelined.extend_from_slice(b"0123456789");
    }
    pipelined.extend_from_slice(HEALTH);
    stream.write_all(&pipelined).await.unwrap();
    let (heads, closed) = answers(&mut stream, 201).await;
    assert_eq!(heads.len(), 201, "{:?}", heads.last());
    assert!(heads[..200].iter().all(|h| h.starts_with("http/1.1 403") && !h.contains("connection: close")));
    assert!(heads[200].starts_with("http/1.1 200"));
    assert!(!closed);
}
