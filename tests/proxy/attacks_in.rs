//! Attacks on the inbound guards from a hostile or careless caller, through real sockets: what
//! the parser behind the framing guard would refuse on its own is refused by the guard, with the
//! proxy's JSON answer; a method override cannot be moved out of the headers the policy reads.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Proxy, TokenService, Upstream, raw, raw_json};

/// Sends `bytes` in one write and returns all that came back before the proxy closed.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(closed.is_ok(), "the connection was not closed: {text}");
    text
}

fn status(response: &str) -> u16 {
    response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The last response in `text` is the proxy's JSON refusal with this code, and closes.
fn assert_json_refusal(text: &str, code: &str) {
    let last = &text[text.rfind("HTTP/1.1 ").expect("a response")..];
    assert_eq!(status(last), 400, "{text}");
    let head = last.split_once("\r\n\r\n").expect("a complete response").0.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "not the proxy's answer: {text}");
    assert!(head.contains("\r\nconnection: close"), "{text}");
    let json = raw_json(last);
    assert_eq!(json["error"], code, "{json}");
    assert_eq!(json["request_id"].as_str().map(str::len), Some(32), "{json}");
}

#[tokio::test]
async fn what_the_parser_would_refuse_bare_the_guard_refuses_with_json_and_nothing_is_forwarded() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    // Request targets the URI parser behind the guard refuses (it would answer a bare 400 with no
    // body and no request id), and a fragment, which it would drop in silence: `?q=C#` would
    // reach the API as `?q=C`.
    let targets = ["/api/a<b>", "/api/a`b", "?x", "http:/api", "/api/x?q=C#", "/api/x#frag", "/api/{a}<"];
    // A Transfer-Encoding whose last element is empty: the guard would follow a chunked body
    // that the parser refuses to read.
    let codings = ["chunked,", "chunked ,", "chunked,\r\nTransfer-Encoding: ,", "chunked\r\nTransfer-Encoding:"];
    let mut requests: Vec<(String, &str)> = Vec::new();
    for target in targets {
        requests.push((format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n"), target));
    }
    for coding in codings {
        let head = format!("POST /api/te HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
        requests.push((head, coding));
    }
    for (request, what) in &requests {
        // Alone, and after a good request on the same connection: answered in turn, then closed.
        let text = exchange(proxy.addr, request.as_bytes()).await;
        assert_json_refusal(&text, "malformed_request");
        let pipelined =
            format!("GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n{request}GET /smuggled HTTP/1.1\r\n\r\n");
        let text = exchange(proxy.addr, pipelined.as_bytes()).await;
        assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{what}: {text}");
        assert_eq!(status(&text), 200, "{what}: {text}");
        assert_json_refusal(&text, "malformed_request");
    }
    let targets: Vec<String> = upstream.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, vec!["/first".to_owned(); requests.len()]);
    // What the parser takes stays accepted: an empty element before the coding, and the other
    // characters of a target that it allows.
    let fine = "POST /api/te HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: ,chunked\r\nConnection: close\r\n\r\n\
                3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(status(&exchange(proxy.addr, fine.as_bytes()).await), 200);
    let fine = "GET /api/a\"b{c}|d^e?q=[1]&r=%7e HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&exchange(proxy.addr, fine.as_bytes()).await), 200);
    assert_eq!(upstream.last().target, "/api/a%22b%7Bc%7D%7Cd%5Ee?q=[1]&r=%7e");
}

/// The proxy's own paths are never sent to the API with its token, however the caller spells
/// them: through dot segments, percent-encoded dots, or in another letter case (the API's
/// server ignores case).
#[tokio::test]
async fn a_path_that_leads_into_the_proxys_own_is_refused_not_forwarded() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for target in [
        "/api/../_proxy/status",
        "/api/%2e%2e/_proxy/requests",
        "/api/./../_proxy",
        "/_PROXY/status",
        "/_Proxy",
        "/api/x/../../_proxy/metrics?x=1",
    ] {
        let text =
            raw(proxy.addr, &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(status(&text), 400, "{target}: {text}");
        let json = raw_json(&text);
        assert_eq!(json["error"], "bad_request_target", "{target}: {json}");
        assert!(json["message"].as_str().unwrap().contains("/_proxy/"), "{target}: {json}");
        assert_eq!(json["request_id"].as_str().map(str::len), Some(32), "{json}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen().iter().map(|s| &s.target).collect::<Vec<_>>());
    // Paths that only start alike are the API's.
    for target in ["/_proxyx/status", "/api/_proxy/status", "/_prox"] {
        let text =
            raw(proxy.addr, &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(status(&text), 200, "{target}: {text}");
    }
    assert_eq!(upstream.seen().len(), 3);
}

async fn with_policy(file: &str) -> (Proxy, Upstream) {
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let proxy = Proxy::start_with_file(&upstream.start().await, &tokens.start().await, Some(file), &[]).await;
    (proxy, upstream)
}

fn post(target: &str, extra: &str) -> String {
    format!("POST {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn a_method_override_in_the_query_or_a_header_spelt_with_underscores_is_decided_on() {
    let (proxy, upstream) = with_policy("[policy]\ndeny = [\"REST API Devices Delete\"]\n").await;
    // ASP.NET MVC, which IIS hosts, takes `X-HTTP-Method-Override` from the query as well as the
    // header; IIS hands header names with `_` to applications as if spelt with `-`.
    let attempts = [
        post("/api/mdm/devices/5?X-HTTP-Method-Override=DELETE", ""),
        post("/api/mdm/devices/5?x-http-method-override=delete", ""),
        post("/api/mdm/devices/5?a=1&X-HTTP-Method=Delete&b", ""),
        post("/api/mdm/devices/5?x%2Dhttp%2Dmethod%2Doverride=%44ELETE", ""),
        post("/api/mdm/devices/5?X-Method-Override=DELETE", ""),
        post("/api/mdm/devices/5?X-HTTP-Method-Override=GET&X-HTTP-Method-Override=DELETE", ""),
        post("/api/mdm/devices/5", "X_HTTP_Method_Override: DELETE\r\n"),
        post("/api/mdm/devices/5", "x_http_method: delete\r\n"),
    ];
    for request in &attempts {
        let response = raw(proxy.addr, request).await;
        assert_eq!(status(&response), 403, "{request}: {response}");
        let json = raw_json(&response);
        assert_eq!(json["error"], "policy_denied", "{request}");
        assert_eq!(json["permission"], "REST API Devices Delete", "{request}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen().into_iter().map(|s| s.target).collect::<Vec<_>>());
    // Overrides that pass, and look-alike parameters, reach the API with the query as sent.
    for target in [
        "/api/mdm/devices/5?X-HTTP-Method-Override=PUT",
        "/api/mdm/devices/5?X-HTTP-Method-Overrides=DELETE",
        "/api/mdm/devices/5?q=X-HTTP-Method-Override%3DDELETE",
    ] {
        let response = raw(proxy.addr, &post(target, "")).await;
        assert_eq!(status(&response), 200, "{target}: {response}");
        assert_eq!(upstream.last().target, target);
    }
}

#[tokio::test]
async fn a_timeout_too_long_to_add_to_a_clock_is_refused_and_the_longest_accepted_one_serves() {
    // Added to the clock, this overflowed: hyper and the body guards panicked on every connection
    // and every caller got a reset.
    for name in ["UEM_PROXY_HEADER_TIMEOUT", "UEM_PROXY_BODY_IDLE_TIMEOUT", "UEM_PROXY_UPSTREAM_TIMEOUT"] {
        let error =
            crate::support::config("http://127.0.0.1:9", "http://127.0.0.1:9/t", None, &[(name, "292277000000y")])
                .expect_err(name)
                .to_string();
        assert!(error.contains(name) && error.contains("at most"), "{error}");
    }
    let longest = [
        ("UEM_PROXY_HEADER_TIMEOUT", "100years"),
        ("UEM_PROXY_BODY_IDLE_TIMEOUT", "100years"),
        ("UEM_PROXY_UPSTREAM_TIMEOUT", "100years"),
        ("UEM_PROXY_CONNECT_TIMEOUT", "100years"),
    ];
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&longest).await;
    let request = "POST /api/long HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    let response = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.last().body.as_ref(), b"abc");
}

/// A chunked upload to `/api/up` whose body carries `extension` bytes of chunk extension and a
/// trailer section of exactly `trailers` bytes (0: none).
fn chunked_upload(extension: usize, trailers: usize) -> Vec<u8> {
    let mut out =
        b"POST /api/up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    out.extend(format!("3;{}\r\nabc\r\n0\r\n", "e".repeat(extension)).bytes());
    if trailers == 0 {
        out.extend(b"\r\n");
    } else {
        let fixed = "X-T: \r\n\r\n".len();
        out.extend(format!("X-T: {}\r\n\r\n", "t".repeat(trailers - fixed)).bytes());
    }
    out
}

#[tokio::test]
async fn chunk_extensions_and_trailers_past_the_parsers_limits_are_the_callers_fault_not_the_apis() {
    // The parser behind the guard reads at most 16 KiB of chunk extensions per body and of
    // trailers; past that, its error reached the caller as `502 upstream_error`, blaming the API.
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for (extension, trailers) in [(20_000, 0), (70_000, 0), (0, 16_384), (0, 40_000)] {
        let text = exchange(proxy.addr, &chunked_upload(extension, trailers)).await;
        let json = raw_json(&text[text.rfind("HTTP/1.1 ").unwrap()..]);
        let expected = if trailers > 0 { (431, "request_header_too_large") } else { (400, "malformed_request") };
        assert_eq!((status(&text), json["error"].as_str().unwrap()), expected, "{extension} {trailers}: {text}");
    }
    // Just below the limits, the upload passes.
    for (extension, trailers) in [(16_000, 0), (0, 16_383), (100, 16_000)] {
        let text = exchange(proxy.addr, &chunked_upload(extension, trailers)).await;
        assert_eq!(status(&text), 200, "{extension} {trailers}: {text}");
    }
}

#[tokio::test]
async fn a_chunk_size_line_the_parser_refuses_is_refused_by_the_guard_first() {
    // After a chunk size, white space may lead only to `;` or the line's end; `3 x` made the
    // parser fail the body, and the caller got `502 upstream_error`.
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let upload = |size_line: &str| {
        format!(
            "POST /api/up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {size_line}\r\nabc\r\n0\r\n\r\n"
        )
    };
    for bad in ["3 x", "3\tx", "3 3", "3  x;y"] {
        let text = exchange(proxy.addr, upload(bad).as_bytes()).await;
        assert_eq!(status(&text), 400, "{bad:?}: {text}");
        assert_eq!(raw_json(&text)["error"], "malformed_request", "{bad:?}");
    }
    for fine in ["3", "3 ", "3 \t ", "3 ;x", "3\t;x=1", "3;x y", "3;x=\"a b\"", "003"] {
        let text = exchange(proxy.addr, upload(fine).as_bytes()).await;
        assert_eq!(status(&text), 200, "{fine:?}: {text}");
    }
}
