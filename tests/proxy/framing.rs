//! The framing guard on a real socket: every refusal is answered (JSON, `Connection: close`) in
//! its turn after the answers before it, then the connection closes, and the API sees nothing of
//! the refused request.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Proxy, client};

/// Reads until the proxy closes the connection (which it must, within 5 s).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(closed.is_ok(), "the connection was not closed: {text}");
    text
}

/// Sends `bytes` in one write and returns all that came back before the proxy closed.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    until_closed(&mut stream).await
}

/// The status of each response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
}

/// Checks that the last response in `text` is the proxy's JSON refusal.
fn assert_refusal(text: &str, status: u16, code: &str) {
    let last = &text[text.rfind("HTTP/1.1 ").expect("a response")..];
    assert_eq!(statuses(last), [status], "{text}");
    let (head, body) = last.split_once("\r\n\r\n").expect("a complete response");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["error"], code, "{json}");
    let id = json["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{json}");
    assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
}

const GOOD: &str = "GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn post(fields: &str) -> String {
    format!("POST /second HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n")
}

/// Refused heads, as raw bytes, with the status and code they get.
fn refused_heads() -> Vec<(Vec<u8>, u16, &'static str)> {
    let mut cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").into(), 400, "malformed_request"),
        (post("TRANSFER-ENCODING: chunked\r\ncontent-length: 5\r\n").into(), 400, "malformed_request"),
        (post("Transfer-Encoding: gzip, chunked\r\n").into(), 501, "unsupported_transfer_coding"),
        (post("Transfer-Encoding: chunked, gzip\r\n").into(), 501, "unsupported_transfer_coding"),
        (post("Transfer-Encoding: identity\r\n").into(), 501, "unsupported_transfer_coding"),
        (post("Content-Length: 5\r\nContent-Length: 6\r\n").into(), 400, "malformed_request"),
        (post("Content-Length: 0x5\r\n").into(), 400, "malformed_request"),
        (post("X-A: 1\r\n folded\r\n").into(), 400, "malformed_request"),
        (post("Content-Length : 0\r\n").into(), 400, "malformed_request"),
        (b"POST /second HTTP/1.1\r\nHost: localhost\rX: 1\r\n\r\n".to_vec(), 400, "malformed_request"),
        (b"POST /second HTTP/1.1\r\nHost: local\0host\r\n\r\n".to_vec(), 400, "malformed_request"),
        (b"POST /second HTTP/1.1\nHost: localhost\n\n".to_vec(), 400, "malformed_request"),
        (post(&format!("X-Big: {}\r\n", "a".repeat(70_000))).into(), 431, "request_header_too_large"),
    ];
    // One byte outside ASCII anywhere turns no check off.
    for odd in [0x80u8, 0xe9, 0xff] {
        for framing in ["Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip, chunked\r\n"] {
            let mut head = b"POST /second HTTP/1.1\r\nHost: localhost\r\nX-Name: Jos".to_vec();
            head.extend([odd, b'\r', b'\n']);
            head.extend(framing.bytes());
            head.extend(b"\r\n");
            let (status, code) = if framing.contains("gzip") {
                (501, "unsupported_transfer_coding")
            } else {
                (400, "malformed_request")
            };
            cases.push((head, status, code));
        }
    }
    cases
}

#[tokio::test]
async fn a_refused_head_is_answered_after_the_requests_before_it_and_never_forwarded() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for (bad, status, code) in refused_heads() {
        // A good request and a bad one in the same write: the good one is answered, then the
        // bad one, in order, and the connection closes.
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend(&bad);
        bytes.extend(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let text = exchange(proxy.addr, &bytes).await;
        assert_eq!(statuses(&text), [200, status], "{:?}: {text}", String::from_utf8_lossy(&bad));
        assert_refusal(&text, status, code);
        // Alone on its connection, and sent one byte per write.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        for byte in bad.iter().take(2000) {
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
        }
        if bad.len() > 2000 {
            let _ = stream.write_all(&bad[2000..]).await;
        }
        let text = until_closed(&mut stream).await;
        assert_refusal(&text, status, code);
    }
    let targets: Vec<String> = upstream.seen().into_iter().map(|s| s.target).collect();
    assert!(targets.iter().all(|t| t == "/first"), "{targets:?}");
    assert_eq!(targets.len(), refused_heads().len());
    assert_eq!(client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap().status(), 200);
}

/// A head of exactly `len` bytes: request line, Host, a field padded to fit, the empty line.
fn head_of(len: usize, path: &str) -> String {
    let fixed = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Pad: \r\n\r\n").len();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "a".repeat(len - fixed))
}

#[tokio::test]
async fn the_head_size_limit_holds_exactly_on_every_request_of_a_connection() {
    for (setting, limit) in [(None, 65536), (Some("16384"), 16384), (Some("8192"), 8192)] {
        let extra: Vec<(&str, &str)> = setting.map(|s| ("UEM_PROXY_MAX_HEADER_BYTES", s)).into_iter().collect();
        let (proxy, upstream, _tokens) = Proxy::with_defaults(&extra).await;
        // On one keep-alive connection: a head of exactly the limit, then one a byte larger.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(head_of(limit, "/at-limit").as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "{limit}");
        stream.write_all(head_of(limit + 1, "/over").as_bytes()).await.unwrap();
        let text = until_closed(&mut stream).await;
        assert_refusal(&text, 431, "request_header_too_large");
        // Again and again: the guard never gives up on a connection.
        let mut both = head_of(limit, "/at-limit").into_bytes();
        both.extend(head_of(limit + 1, "/over").bytes());
        both.extend(
            b"GET /after HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let text = exchange(proxy.addr, &both).await;
        assert_eq!(statuses(&text), [200, 431], "{limit}");
        let targets: Vec<String> = upstream.seen().into_iter().map(|s| s.target).collect();
        assert_eq!(targets, ["/at-limit", "/at-limit"], "{limit}");
    }
}

#[tokio::test]
async fn a_refusal_inside_a_body_is_answered_if_no_response_has_begun_and_cuts_the_connection() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let head = "POST /probe-upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    for bad in ["zz\r\n", "5\r\nhelloXX", "3\nabc\r\n", "0\r\nX : 1\r\n\r\n"] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(format!("{head}5\r\nhello\r\n").as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), upstream.first_piece.notified())
            .await
            .expect("the head and the first chunk reach the API");
        stream.write_all(bad.as_bytes()).await.unwrap();
        let text = until_closed(&mut stream).await;
        assert_eq!(statuses(&text), [400], "{bad:?}: {text}");
        assert_refusal(&text, 400, "malformed_request");
    }

    // Once the response has begun, the connection is cut: the caller sees a truncated answer.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let download = "POST /probe-download HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n";
    stream.write_all(download.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend(&buf[..n]);
    }
    stream.write_all(b"zz\r\n").await.unwrap();
    let rest = until_closed(&mut stream).await;
    assert!(!rest.contains("rest"), "{rest}");
    assert!(statuses(&rest).is_empty(), "nothing is answered after a response began: {rest}");
    upstream.send_rest.notify_one();
    assert_eq!(client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_host_with_user_information_is_refused_with_400() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let hosts = ["[::1]@evil.example", "user@localhost:8080", "localhost%40evil.example", "user:pw@127.0.0.1", ":8080"];
    for host in hosts {
        let text = exchange(
            proxy.addr,
            format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&text), [400], "{host}: {text}");
        assert!(text.contains("\"error\":\"bad_host\""), "{text}");
    }
    // Bytes outside ASCII make no host name, on the health endpoints too.
    for path in ["/api/x", "/_proxy/healthz"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\u{e9}\r\nConnection: close\r\n\r\n");
        let mut request = request.into_bytes();
        let at = request.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
        request.splice(at..at + 2, [0xe9]);
        let text = exchange(proxy.addr, &request).await;
        assert_eq!(statuses(&text), [400], "{path}: {text}");
        assert!(text.contains("\"error\":\"bad_host\""), "{text}");
    }
    for target in ["http://user@localhost/api/x", "http://[::1]@evil.example/api/x"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let text = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&text), [400], "{target}: {text}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen().into_iter().map(|s| s.target).collect::<Vec<_>>());
    let fine = exchange(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&fine), [200], "{fine}");
}

#[tokio::test]
async fn pipelined_requests_of_every_framing_are_answered_in_order_before_the_refusal() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let mut bytes = String::new();
    for i in 0..4 {
        bytes += &format!("GET /p{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        bytes += &format!("POST /p{i}-length HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc");
        bytes += &format!(
            "POST /p{i}-chunked HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: CHUNKED\r\n\r\n\
             3;x=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n\r\n"
        );
    }
    bytes += "POST /refused HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let text = exchange(proxy.addr, bytes.as_bytes()).await;
    let mut expected = vec![200; 12];
    expected.push(400);
    assert_eq!(statuses(&text), expected, "{text}");
    assert_refusal(&text, 400, "malformed_request");
    let seen: Vec<(String, usize)> = upstream.seen().into_iter().map(|s| (s.target, s.body.len())).collect();
    let targets: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    let wanted: Vec<String> =
        (0..4).flat_map(|i| [format!("/p{i}"), format!("/p{i}-length"), format!("/p{i}-chunked")]).collect();
    assert_eq!(targets, wanted);
    assert!(seen.iter().filter(|(t, _)| t.contains('-')).all(|(_, len)| *len == 3), "{seen:?}");
}
