//! The forwarding client on the wire: the request target byte for byte, the headers it adds,
//! connection reuse, HTTP/2 by ALPN, the connect timeout, and both routes through an egress proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Proxy, TokenService, client, localhost_certificate, raw, raw_json};

/// What a raw-socket API received: each request head exactly as its bytes arrived.
#[derive(Clone, Default)]
struct RawApi {
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
}

impl RawApi {
    /// Serves on port 0: every request (heads only, no bodies) is answered `200 ok` on a
    /// connection that stays open until the client closes it.
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                api.connections.fetch_add(1, Ordering::SeqCst);
                let heads = api.heads.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut stream).await {
                        heads.lock().unwrap().push(head);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// The request lines received, in order.
    fn request_lines(&self) -> Vec<Vec<u8>> {
        let heads = self.heads.lock().unwrap();
        heads.iter().map(|h| h[..h.windows(2).position(|w| w == b"\r\n").unwrap()].to_vec()).collect()
    }

    /// The values of header `name` in request `index`.
    fn header(&self, index: usize, name: &str) -> Vec<String> {
        let head = String::from_utf8_lossy(&self.heads.lock().unwrap()[index]).into_owned();
        header_values(&head, name)
    }
}

/// Reads one request head (up to the blank line) byte by byte; `None` at the end of the stream.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.ok()?;
        head.push(byte);
        assert!(head.len() < 64 * 1024, "a head this long is not one the proxy sends");
    }
    Some(head)
}

/// The values of a header in a head, the name matched without regard to case.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[tokio::test]
async fn the_query_reaches_the_api_byte_for_byte_on_one_reused_connection() {
    let api = RawApi::default();
    let addr = api.start().await;
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{addr}/prefix"), &tokens.start().await, &[]).await;
    let queries = [
        "?lastname=O'Brien&x=a%2Bb&y=%7e&z=[1]",
        "?e=Jos\u{e9}&raw=%C3%A9",
        "?j={a}|b^c`d",
        "?a+b=c+d&sp=%20&semi=a;b&at=@&colon=a:b&slash=/x/../y&question=?&bang=!$()*,",
        "?&&empty=&=v&%zz=%4G&&",
        "?",
        "",
    ];
    let mut request = String::new();
    for query in queries {
        request.push_str(&get(&format!("/api/mdm/devices/search{query}")));
    }
    request.push_str("GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answers = raw(proxy.addr, &request).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), queries.len() + 1, "{answers}");

    let lines = api.request_lines();
    for (line, query) in lines.iter().zip(queries) {
        let expected = format!("GET /prefix/api/mdm/devices/search{query} HTTP/1.1");
        assert_eq!(String::from_utf8_lossy(line), expected);
        assert_eq!(line, expected.as_bytes(), "the bytes themselves, not just their reading");
    }
    assert_eq!(api.connections.load(Ordering::SeqCst), 1, "one kept-alive connection carried them all");
}

#[tokio::test]
async fn the_path_sent_is_the_path_policy_decided_on() {
    let api = RawApi::default();
    let addr = api.start().await;
    let tokens = TokenService::default();
    let policy = "[policy]\ndeny = [\"REST API Devices Delete\"]\n";
    let proxy = Proxy::start_with_file(&format!("http://{addr}"), &tokens.start().await, Some(policy), &[]).await;
    let denied = raw(
        proxy.addr,
        "DELETE /api/mdm/x/../devices/5?x=/../../api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert_eq!(raw_json(&denied)["error"], "policy_denied");
    let allowed =
        raw(proxy.addr, "GET /api/mdm/x/../devices/5?x=/../y HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert_eq!(api.request_lines(), [b"GET /api/mdm/devices/5?x=/../y HTTP/1.1".to_vec()], "the query is not a path");
}

#[tokio::test]
async fn the_proxy_names_itself_as_user_agent_only_when_the_caller_does_not() {
    let api = RawApi::default();
    let addr = api.start().await;
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
    raw(proxy.addr, "GET /api/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    raw(proxy.addr, "GET /api/b HTTP/1.1\r\nHost: localhost\r\nUser-Agent: script/2\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(api.header(0, "user-agent"), [concat!("uem-proxy/", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(api.header(1, "user-agent"), ["script/2"]);
    assert_eq!(api.header(0, "host"), [addr.to_string()]);
    assert!(api.header(1, "proxy-authorization").is_empty());
}

/// Accepts connections and never says a word on them.
async fn silent_listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn the_connect_timeout_covers_a_tls_handshake_or_a_tunnel_that_never_ends() {
    let stalled_api = format!("https://127.0.0.1:{}", silent_listener().await.port());
    let silent_egress = format!("http://{}", silent_listener().await);
    // Basic mode: no token service, which the silent egress proxy would stall as well.
    let basic =
        [("UEM_AUTH_MODE", "basic"), ("UEM_USERNAME", "admin"), ("UEM_PASSWORD", "pw"), ("UEM_TENANT_CODE", "K")];
    let direct = [("UEM_PROXY_CONNECT_TIMEOUT", "300ms"), ("UEM_PROXY_EGRESS_PROXY", "none")];
    let via = [("UEM_PROXY_CONNECT_TIMEOUT", "300ms"), ("UEM_PROXY_EGRESS_PROXY", silent_egress.as_str())];
    for (api, route) in [(stalled_api.as_str(), direct), ("https://api.uem.invalid", via)] {
        let extra = [basic.as_slice(), route.as_slice()].concat();
        let proxy = Proxy::start(api, "http://127.0.0.1:9/never", &extra).await;
        let started = std::time::Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(10), client().get(format!("{}/api/x", proxy.url)).send())
                .await
                .expect("answered before the 30 s upstream timeout")
                .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 504, "{api}: {body}");
        assert_eq!(body["error"], "upstream_timeout");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}

/// A token service and an API in one: a grant at `/connect/token`; anywhere else, the target and
/// HTTP version are recorded and answered.
fn token_and_api(seen: Arc<Mutex<Vec<String>>>) -> axum::Router {
    let grant = r#"{"access_token":"tunnelled","token_type":"Bearer","expires_in":3600}"#;
    axum::Router::new()
        .route(
            "/connect/token",
            axum::routing::post(move || async move { ([("content-type", "application/json")], grant) }),
        )
        .fallback(move |req: Request| {
            let seen = seen.clone();
            async move {
                let proxy_auth = req.headers().contains_key("proxy-authorization");
                let target = req.uri().path_and_query().unwrap().as_str().to_owned();
                seen.lock().unwrap().push(format!("{:?} {target} proxy-auth={proxy_auth}", req.version()));
                let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
                format!("over tls with {auth}").into_response()
            }
        })
}

/// A forward proxy that only tunnels: records each `CONNECT` head, then joins the caller to the
/// loopback port it names.
async fn connect_proxy(heads: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut caller, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut caller).await else { return };
                let head = String::from_utf8(head).unwrap();
                heads.lock().unwrap().push(head.clone());
                let target = head.strip_prefix("CONNECT ").and_then(|rest| rest.split(' ').next());
                let port = target.and_then(|t| t.rsplit_once(':')).and_then(|(_, p)| p.parse::<u16>().ok());
                let Some(port) = port else {
                    let _ = caller.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                let mut api = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                caller.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut caller, &mut api).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_https_api_is_reached_through_a_connect_tunnel_with_the_proxy_credentials() {
    let (cert, key) = localhost_certificate();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = crate::support::spawn_tls(token_and_api(seen.clone()), &cert, &key).await;
    let heads = Arc::new(Mutex::new(Vec::new()));
    let egress = connect_proxy(heads.clone()).await;
    let base = format!("https://localhost:{}", api.port());
    let proxy = Proxy::start(
        &base,
        &format!("{base}/connect/token"),
        &[("UEM_PROXY_EGRESS_PROXY", &format!("http://corp%5Cuser:p%40ss@{egress}")), ("UEM_CA_BUNDLE", &cert)],
    )
    .await;
    let response = raw(
        proxy.addr,
        "GET /api/devices?name=O'Brien&tag=[a] HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("over tls with Bearer tunnelled"), "{response}");
    assert_eq!(*seen.lock().unwrap(), ["HTTP/1.1 /api/devices?name=O'Brien&tag=[a] proxy-auth=false"]);

    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "one tunnel for the token service, one for the API: {heads:?}");
    let expected_auth = format!("Basic {}", base64_of("corp\\user:p@ss"));
    for head in &heads {
        assert!(head.starts_with(&format!("CONNECT localhost:{} HTTP/1.1\r\n", api.port())), "{head}");
        assert_eq!(header_values(head, "proxy-authorization"), [expected_auth.as_str()], "{head}");
    }
}

#[tokio::test]
async fn a_plain_http_api_is_reached_through_the_egress_proxy_in_absolute_form_with_its_credentials() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    let egress = axum::Router::new().fallback(move |req: Request| {
        let recorded = recorded.clone();
        async move {
            let auth = req.headers().get("proxy-authorization").map(|v| v.to_str().unwrap().to_owned());
            recorded.lock().unwrap().push(format!("{} {} {auth:?}", req.method(), req.uri()));
            if req.uri().path() == "/connect/token" {
                let token = r#"{"access_token":"relayed","token_type":"Bearer","expires_in":3600}"#;
                return ([("content-type", "application/json")], token).into_response();
            }
            "relayed".into_response()
        }
    });
    let egress = crate::support::spawn(egress).await;
    let proxy = Proxy::start(
        "http://api.uem.invalid",
        "http://token.uem.invalid/connect/token",
        &[("UEM_PROXY_EGRESS_PROXY", &format!("http://user:secret@{egress}"))],
    )
    .await;
    // A caller's own proxy credentials are not passed on; the configured ones are sent instead.
    let request = "GET /api/x?n=O'Brien HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: Basic Y2FsbGVyOng=\r\n\
                   Connection: close\r\n\r\n";
    let response = raw(proxy.addr, request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let auth = format!("Some(\"Basic {}\")", base64_of("user:secret"));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!("POST http://token.uem.invalid/connect/token {auth}"),
            format!("GET http://api.uem.invalid/api/x?n=O'Brien {auth}")
        ]
    );
}

#[tokio::test]
async fn an_api_that_offers_http2_is_spoken_to_in_http2() {
    let (cert, key) = localhost_certificate();
    let mut tls = uem_proxy::listen::tls::server_config(cert.as_ref(), key.as_ref()).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = token_and_api(seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                if h2 {
                    let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = builder.serve_connection(io, service).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    let base = format!("https://localhost:{port}");
    let proxy = Proxy::start(
        &base,
        &format!("{base}/connect/token"),
        &[("UEM_CA_BUNDLE", &cert), ("UEM_PROXY_EGRESS_PROXY", "none")],
    )
    .await;
    for _ in 0..2 {
        let response =
            raw(proxy.addr, "GET /api/y?q='x' HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert_eq!(*seen.lock().unwrap(), ["HTTP/2.0 /api/y?q='x' proxy-auth=false"; 2]);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// An API whose first connection answers one request, then reads the next and closes without a
/// word (with a reset when `reset`), as an API does when its idle timeout meets the proxy's reuse
/// of the connection. Later connections answer every request.
async fn api_closing_a_reused_connection(
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    reset: bool,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut served = 0;
                while let Some(head) = read_head(&mut stream).await {
                    heads.lock().unwrap().push(head);
                    if first && served == 1 {
                        if reset {
                            stream.set_zero_linger().unwrap();
                        }
                        return;
                    }
                    served += 1;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_read_on_a_connection_the_api_closed_as_it_was_reused_is_sent_again_a_write_is_not() {
    // Closed with a FIN, and with a reset: either way no answer came.
    for reset in [false, true] {
        let (connections, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let addr = api_closing_a_reused_connection(connections.clone(), heads.clone(), reset).await;
        let tokens = TokenService::default();
        let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
        let client = client();
        let url = format!("{}/api/system/info", proxy.url);
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        let again = client.get(&url).send().await.unwrap();
        assert_eq!(again.status(), 200, "reset {reset}: the read went out again on a new connection");
        assert_eq!(again.text().await.unwrap(), "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(heads.lock().unwrap().len(), 3, "one request, the one the API dropped, and its repeat");

        // The same race for a write: it may have been carried out, so it is never sent twice.
        let (connections, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let addr = api_closing_a_reused_connection(connections.clone(), heads.clone(), reset).await;
        let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
        let url = format!("{}/api/mdm/devices/1/commands?command=Lock", proxy.url);
        assert_eq!(client.post(&url).send().await.unwrap().status(), 200);
        let refused = client.post(&url).send().await.unwrap();
        assert_eq!(refused.status(), 502, "reset {reset}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "upstream_error");
        assert_eq!(heads.lock().unwrap().len(), 2, "reset {reset}: the write was sent once");
    }
}
