//! Inbound security, each rule with a test that fails without it: who may call, what they may
//! do, and hostile input.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uem_proxy::config::Listen;
use uem_proxy::listen::Peer;

use crate::support::{
    Proxy, TokenService, Upstream, client, config, proxy_for_sandbox, raw, raw_json, sandbox_options, start_sandbox,
};

fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

fn status(response: &str) -> u16 {
    response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

// --- Who may call ----------------------------------------------------------------------------

#[tokio::test]
async fn callers_outside_the_allow_list_get_403_and_nothing_is_forwarded() {
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let config = config(&api, &token_url, None, &[("UEM_PROXY_ALLOW_CIDRS", "10.20.0.0/16")]).unwrap();
    let service = uem_proxy::service(&config, &Listen::Tcp("0.0.0.0:8080".parse().unwrap())).unwrap();
    // A network peer cannot be had on loopback, so the peer the listener would record is given here.
    let call = |path: &str, host: &str, peer: &str| {
        let req = http::Request::get(path).header("host", host).body(axum::body::Body::empty()).unwrap();
        service.clone().serve(req, Peer::Tcp(peer.parse().unwrap()), false)
    };
    let refused = call("/api/x", "localhost", "10.21.0.9:4000").await;
    assert_eq!(refused.status(), 403);
    let body = axum::body::to_bytes(refused.into_body(), 4096).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "caller_not_allowed");
    assert!(upstream.seen().is_empty());
    let allowed = call("/api/x", "localhost", "10.20.7.7:4000").await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(upstream.seen().len(), 1);
    // Probes reach the health endpoints from anywhere; nothing else of the proxy's own.
    let probe = |path: &str| call(path, "10.0.0.1", "10.99.0.1:4000");
    assert_eq!(probe("/_proxy/healthz").await.status(), 200);
    assert_eq!(probe("/_proxy/status").await.status(), 403);
    assert_eq!(probe("/_proxy/metrics").await.status(), 403);
}

#[test]
fn a_network_listener_without_an_allow_list_refuses_to_start() {
    let error = config("http://a", "http://t/token", None, &[("UEM_PROXY_LISTEN", "0.0.0.0:8080")]).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("0.0.0.0:8080 is not a loopback address"), "{text}");
    assert!(text.contains("UEM_PROXY_ALLOW_CIDRS"), "{text}");
    let with_list = config(
        "http://a",
        "http://t/token",
        None,
        &[("UEM_PROXY_LISTEN", "0.0.0.0:8080"), ("UEM_PROXY_ALLOW_CIDRS", "10.0.0.0/8, 192.168.1.5")],
    );
    assert!(with_list.is_ok());
    assert!(config("http://a", "http://t/token", None, &[("UEM_PROXY_ALLOW_CIDRS", "10.0.0.0/33")]).is_err());
}

#[tokio::test]
async fn a_foreign_host_name_is_refused_and_never_forwarded() {
    let (proxy, upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_ALLOWED_HOSTS", "uem-proxy.corp.example")]).await;
    let rebound = raw(proxy.addr, &get("attacker.example:8080", "/api/system/info", "")).await;
    assert_eq!(status(&rebound), 403, "{rebound}");
    assert_eq!(raw_json(&rebound)["error"], "host_not_allowed");
    let missing = raw(proxy.addr, "GET /api/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&missing), 403, "{missing}");
    assert!(upstream.seen().is_empty());
    for host in ["localhost:9", "127.0.0.1", "[::1]:8080", "UEM-proxy.corp.example:8080"] {
        assert_eq!(status(&raw(proxy.addr, &get(host, "/api/x", "")).await), 200, "{host}");
    }
    let health = raw(proxy.addr, &get("10.9.8.7:8080", "/_proxy/healthz", "")).await;
    assert_eq!(status(&health), 200, "probes may address the health endpoints by any name");
    // An absolute-form target names the host the request is for, whatever `Host` says.
    let seen = upstream.seen().len();
    for request in [
        "GET http://attacker.example/api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET http://attacker.example:8080/api/x HTTP/1.0\r\n\r\n",
        "GET http://localhost/api/x HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(proxy.addr, request).await;
        assert_eq!(status(&answer), 403, "{request}: {answer}");
        assert_eq!(raw_json(&answer)["error"], "host_not_allowed", "{answer}");
        assert!(raw_json(&answer)["message"].as_str().unwrap().contains("attacker.example"), "{answer}");
    }
    assert_eq!(upstream.seen().len(), seen, "nothing forwarded");
    for request in [
        "GET http://localhost:8080/api/x HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n",
        "GET http://uem-proxy.corp.example/api/x HTTP/1.0\r\n\r\n",
    ] {
        assert_eq!(status(&raw(proxy.addr, request).await), 200, "{request}");
    }
}

#[tokio::test]
async fn an_http_1_1_request_without_a_host_gets_400() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    // RFC 9112 §3.2: HTTP/1.1 needs a Host, and an empty one names none.
    for request in [
        "GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(proxy.addr, request).await;
        assert_eq!(status(&answer), 400, "{answer}");
        assert_eq!(raw_json(&answer)["error"], "missing_host");
        assert!(raw_json(&answer)["request_id"].is_string(), "{answer}");
    }
    // HTTP/1.0 allows none, and this proxy still answers only to a name it knows.
    assert_eq!(status(&raw(proxy.addr, "GET /api/x HTTP/1.0\r\n\r\n").await), 403);
    // Probes may send none.
    assert_eq!(status(&raw(proxy.addr, "GET /_proxy/healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await), 200);
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn web_pages_from_other_origins_are_refused_and_preflights_answered_locally() {
    let (proxy, upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_ALLOWED_ORIGINS", "http://localhost:3000")]).await;
    let foreign = raw(proxy.addr, &get("localhost", "/api/x", "Origin: https://evil.example\r\n")).await;
    assert_eq!(status(&foreign), 403, "{foreign}");
    assert_eq!(raw_json(&foreign)["error"], "origin_not_allowed");
    let cross_site = raw(proxy.addr, &get("localhost", "/api/x", "Sec-Fetch-Site: cross-site\r\n")).await;
    assert_eq!(status(&cross_site), 403);
    assert_eq!(raw_json(&cross_site)["error"], "cross_site_request");
    assert!(upstream.seen().is_empty());

    let preflight = "OPTIONS /api/mdm/devices/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n\
                     Access-Control-Request-Method: DELETE\r\nAccess-Control-Request-Headers: content-type\r\n\
                     Connection: close\r\n\r\n";
    let answered = raw(proxy.addr, preflight).await.to_ascii_lowercase();
    assert!(answered.starts_with("http/1.1 204"), "{answered}");
    assert!(answered.contains("access-control-allow-origin: http://localhost:3000"), "{answered}");
    assert!(answered.contains("access-control-allow-headers: content-type"), "{answered}");
    let foreign_preflight = preflight.replace("http://localhost:3000", "https://evil.example");
    assert_eq!(status(&raw(proxy.addr, &foreign_preflight).await), 403);
    assert!(upstream.seen().is_empty(), "preflights are never forwarded");

    let allowed = raw(proxy.addr, &get("localhost", "/api/x", "Origin: http://localhost:3000\r\n")).await;
    assert_eq!(status(&allowed), 200);
    assert!(allowed.to_ascii_lowercase().contains("access-control-allow-origin: http://localhost:3000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_is_owner_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let dir = std::env::temp_dir().join(format!("uem-proxy-sock-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.sock");
    let listen = format!("unix:{}", path.display());
    let config = config(&api, &token_url, None, &[("UEM_PROXY_LISTEN", &listen)]).unwrap();
    let listener = uem_proxy::listen::Listener::bind(&config.listen).await.unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(uem_proxy::run(config, listener, async {
        let _ = rx.await;
    }));
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream.write_all(get("localhost", "/api/over-unix", "").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.last().target, "/api/over-unix");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed on shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- What they may do ------------------------------------------------------------------------

#[tokio::test]
async fn read_only_mode_refuses_writes_naming_the_permission() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_READ_ONLY", "true")]).await;
    let write = client().post(format!("{}/api/mdm/devices/5/commands?command=Lock", proxy.url)).send().await.unwrap();
    assert_eq!(write.status(), 403);
    let body: serde_json::Value = write.json().await.unwrap();
    assert_eq!(body["error"], "policy_denied");
    assert_eq!(body["permission"], "REST API Devices Execute");
    assert!(upstream.seen().is_empty());
    let read = client().get(format!("{}/api/mdm/devices/5", proxy.url)).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let search = client().post(format!("{}/api/mdm/smartgroups/search", proxy.url)).send().await.unwrap();
    assert_eq!(search.status(), 200, "a POST search is a read");
}

const POLICY: &str = r#"
[policy]
deny = ["REST API Devices Delete"]

[[policy.rules]]
action = "deny"
methods = ["POST"]
path = "/api/mdm/devices/*/commands"
"#;

#[tokio::test]
async fn policy_rules_hold_whatever_the_spelling_of_the_path() {
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let proxy = Proxy::start_with_file(&upstream.start().await, &tokens.start().await, Some(POLICY), &[]).await;
    let attempts = [
        ("DELETE", "/api/mdm/devices/5"),
        ("DELETE", "/API/V1/MDM/Devices/5"),
        ("DELETE", "/api/system/../mdm/devices/5"),
        ("DELETE", "/api/mdm/%64evices/5"),
        ("DELETE", "/api/mdm/devices/./5/"),
        ("DELETE", "/api/%2e%2e/api/mdm/devices/5"),
        ("POST", "/api/mdm/devices/5/commands?command=Lock"),
        ("POST", "/api/v2/mdm//devices/5/commands"),
    ];
    for (method, path) in attempts {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let response = raw(proxy.addr, &request).await;
        assert_eq!(status(&response), 403, "{method} {path}: {response}");
        assert_eq!(raw_json(&response)["error"], "policy_denied");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    let allowed = raw(proxy.addr, &get("localhost", "/api/mdm/../mdm/devices/5/./", "")).await;
    assert_eq!(status(&allowed), 200);
    assert_eq!(upstream.last().target, "/api/mdm/devices/5/", "the path forwarded is the path decided on");
}

#[tokio::test]
async fn an_upstream_403_names_the_permission_the_role_lacks() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let proxy = proxy_for_sandbox(&base, &[]).await;
    let denied = client().delete(format!("{}/api/mdm/devices/1", proxy.url)).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-uem-proxy-permission"], "REST API Devices Delete");
    let fine = client().get(format!("{}/api/mdm/devices/1", proxy.url)).send().await.unwrap();
    assert!(fine.headers().get("x-uem-proxy-permission").is_none());
}

// --- Hostile input ---------------------------------------------------------------------------

#[tokio::test]
async fn trace_and_backslash_targets_are_refused() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let trace = raw(proxy.addr, "TRACE /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&trace), 405, "{trace}");
    assert_eq!(raw_json(&trace)["error"], "method_not_allowed");
    for path in ["/\\evil.example/x", "/api/%00x", "/api/%zz"] {
        let response = raw(proxy.addr, &get("localhost", path, "")).await;
        assert_eq!(status(&response), 400, "{path}: {response}");
    }
    assert!(upstream.seen().is_empty());
}

/// Sends `bytes`, and returns what came back before the proxy closed the connection.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the connection was not closed: {}", String::from_utf8_lossy(&out));
    out
}

#[tokio::test]
async fn ambiguous_framing_ends_the_connection_and_smuggles_nothing() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases = [
        format!(
            "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 46\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 45\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0x2d\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\nHost: localhost\nContent-Length: 0\n\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: localhost\rContent-Length: 45\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: local\0host\r\n\r\n{smuggled}"),
        format!(
            "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for case in &cases {
        let answer = send_raw(proxy.addr, case.as_bytes()).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(" 200 "), "{case:?} was served: {answer}");
    }
    assert!(upstream.seen().is_empty(), "the upstream saw {:?}", upstream.seen());
    let health = client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process stays healthy");
}

#[tokio::test]
async fn broken_response_framing_from_upstream_is_not_passed_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello";
                let _ = stream.write_all(reply).await;
            });
        }
    });
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
    let response = client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_error");
}

#[tokio::test]
async fn oversized_heads_targets_and_bodies_are_refused() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[
        ("UEM_PROXY_MAX_HEADER_BYTES", "16384"),
        ("UEM_PROXY_MAX_URL_BYTES", "1024"),
        ("UEM_PROXY_MAX_BODY_BYTES", "1000"),
    ])
    .await;
    let big_header = get("localhost", "/api/x", &format!("X-Big: {}\r\n", "a".repeat(20_000)));
    assert_eq!(status(&raw(proxy.addr, &big_header).await), 431);
    let many: String = (0..120).map(|i| format!("X-H{i}: 1\r\n")).collect();
    assert_eq!(status(&raw(proxy.addr, &get("localhost", "/api/x", &many)).await), 431);
    let long_url = format!("/api/x?q={}", "a".repeat(2000));
    let response = raw(proxy.addr, &get("localhost", &long_url, "")).await;
    assert_eq!(status(&response), 414);
    assert_eq!(raw_json(&response)["error"], "uri_too_long");

    let declared = client().post(format!("{}/api/upload", proxy.url)).body("x".repeat(1001)).send().await.unwrap();
    assert_eq!(declared.status(), 413);
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 200]))));
    let streamed =
        client().post(format!("{}/upload", proxy.url)).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(streamed.status(), 413, "a chunked body is stopped at the limit");
    assert!(upstream.seen().iter().all(|s| s.target != "/api/upload"));
    assert_eq!(client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_connection_that_keeps_asking_within_the_header_timeout_is_never_cut() {
    // The sweep counts idle time from each answer, not from the connection's start: eight
    // requests 250 ms apart on one connection outlive a 400 ms timeout several times over.
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_HEADER_TIMEOUT", "400ms")]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..8 {
        stream
            .write_all(get("localhost", &format!("/api/x?n={i}"), "").replace("Connection: close\r\n", "").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        stream.read_exact(&mut vec![0u8; length]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_HEADER_TIMEOUT", "400ms")]).await;
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "a slow sender is cut off");

    let mut idle = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn nothing_secret_reaches_a_caller() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_UPSTREAM_TIMEOUT", "300ms")]).await;
    let echoed = client().get(format!("{}/echo-auth", proxy.url)).send().await.unwrap();
    assert_eq!(echoed.status(), 200);
    assert!(echoed.headers().get("authorization").is_none(), "an echoed Authorization is dropped");
    let timeout = client().get(format!("{}/slow-headers?ms=2000", proxy.url)).send().await.unwrap();
    let text = format!("{:?} {}", timeout.headers().clone(), timeout.text().await.unwrap());
    assert!(!text.contains("tok-1"), "{text}");
}
