//! The one service every request goes through, against what it replaced: the access line as
//! the log has always written it, the metrics' labels, and the header timeout's clock.

use std::sync::Arc;
use std::time::Duration;

use crate::binary::{Running, base_env};
use crate::support::{Proxy, TokenService, Upstream, client, raw};

/// The access line of the request to `path` in a text log, once it is written.
async fn text_access(proxy: &Running, path: &str) -> String {
    for _ in 0..500 {
        let log = proxy.log();
        if let Some(line) = log.lines().find(|l| l.contains(&format!(" path={path} "))) {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access line for {path}: {}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_access_line_quotes_the_caller_as_it_always_has() {
    // `caller="loopback"`: the field is a string, and scripts that read the text log match it
    // with its quotes. Written as a displayed value instead, it lost them.
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut env = base_env(&api, &token_url);
    env.retain(|(k, _)| *k != "UEM_PROXY_LOG_FORMAT");
    env.push(("UEM_PROXY_LOG_FORMAT", "text"));
    let proxy = Running::start_with(&env, &[]);
    let response = client().get(format!("http://{}/api/mdm/devices/1", proxy.addr())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let line = text_access(&proxy, "/api/mdm/devices/1").await;
    assert!(line.contains(" uem_proxy::access: request request_id=\""), "{line}");
    assert!(line.contains(" caller=\"loopback\" method=GET "), "{line}");
}

#[tokio::test]
async fn a_refused_request_is_logged_without_a_caller_and_a_served_one_with_it() {
    // `caller` says why a caller was let in, for audits; a request refused at the gate was not
    // let in, and its access event has always had no such field.
    let log = crate::bodies::Captured::start();
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let refused = raw(proxy.addr, "GET /api/refused HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let event = log.access("/api/refused").await;
    assert_eq!(event["status"], 403, "{event}");
    assert!(event.get("caller").is_none(), "{event}");
    let traced = raw(proxy.addr, "TRACE /api/traced HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(traced.starts_with("HTTP/1.1 405"), "{traced}");
    assert!(log.access("/api/traced").await.get("caller").is_none());
    let served = raw(proxy.addr, "GET /api/served HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert_eq!(log.access("/api/served").await["caller"], "loopback");
    assert_eq!(upstream.seen().len(), 1, "only the served one went upstream");
}

#[tokio::test]
async fn preflights_and_unforwardable_targets_are_counted_under_the_permission_category_of_their_path() {
    // The metrics' category is the permission family the path belongs to, whatever the answer;
    // a preflight answered at the gate and a target refused as unforwardable were counted as
    // `unknown` once the category was taken from the forwarder alone.
    let (proxy, upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_ALLOWED_ORIGINS", "http://localhost:3000")]).await;
    let preflight = raw(
        proxy.addr,
        "OPTIONS /api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n\
         Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(preflight.starts_with("HTTP/1.1 204"), "{preflight}");
    let connect =
        raw(proxy.addr, "CONNECT /api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 400"), "{connect}");
    let metrics = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap().text().await.unwrap();
    for counted in [
        r#"uem_proxy_requests_total{method="OPTIONS",category="Devices",status_class="2xx"} 1"#,
        r#"uem_proxy_requests_total{method="other",category="Devices",status_class="4xx"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted}\n{metrics}");
    }
    assert!(!metrics.contains(r#"category="unknown""#), "{metrics}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn the_header_timeout_counts_from_the_end_of_a_tls_handshake() {
    // The handshake has a time limit of its own (the header timeout); the request head then has
    // the whole header timeout too, as it had before the timeout was kept by a sweep. Counted
    // from the accept, a slow handshake left the head almost no time.
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cert_path, key_path) = crate::support::localhost_certificate();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let (_proxy, _upstream, _tokens) = Proxy::with_defaults(&[
        ("UEM_PROXY_TLS_CERT", cert_path.as_str()),
        ("UEM_PROXY_TLS_KEY", key_path.as_str()),
        ("UEM_PROXY_TLS_LISTEN", tls_listen.as_str()),
        ("UEM_PROXY_HEADER_TIMEOUT", "1s"),
    ])
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&cert_path).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = None;
    for _ in 0..100 {
        if let Ok(stream) = tokio::net::TcpStream::connect(&tls_listen).await {
            tcp = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tcp = tcp.expect("the HTTPS listener accepts");
    // A slow handshake, within its limit: the stall is what is tested.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake completes within its limit");
    // A head well within the header timeout of the handshake's end, but not of the accept.
    tokio::time::sleep(Duration::from_millis(600)).await;
    tls.write_all(b"GET /_proxy/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn cookies_the_api_sets_leave_the_service_marked_sensitive() {
    // Marked, no `Debug` of the answer's headers (a log line at trace level) shows their values.
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let config = crate::support::config(&api, &token_url, None, &[]).unwrap();
    let local = uem_proxy::config::Listen::Tcp("127.0.0.1:8080".parse().unwrap());
    let service = uem_proxy::service(&config, &local).unwrap();
    let request = http::Request::get("/hop").header("host", "localhost").body(axum::body::Body::empty()).unwrap();
    let response = service.serve(request, uem_proxy::listen::Peer::Tcp("127.0.0.1:4000".parse().unwrap()), false).await;
    assert_eq!(response.status(), 200);
    let cookies: Vec<_> = response.headers().get_all(http::header::SET_COOKIE).iter().collect();
    assert_eq!(cookies.len(), 2, "{:?}", response.headers());
    assert!(cookies.iter().all(|c| c.is_sensitive()), "{cookies:?}");
    assert!(!format!("{:?}", response.headers()).contains("a=1"));
}

#[tokio::test]
async fn a_caller_who_leaves_before_the_answer_is_recorded_once_as_499() {
    use tokio::io::AsyncWriteExt;
    let log = crate::bodies::Captured::start();
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let mut caller = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    caller.write_all(b"GET /slow-headers?ms=700 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    upstream.wait_seen(1).await;
    drop(caller);
    let event = log.access("/slow-headers").await;
    assert_eq!((event["status"].as_u64(), event["complete"].as_bool()), (Some(499), Some(false)), "{event}");
    // Past the moment the API answers: nothing more is written for it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let text = String::from_utf8(log.lines.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("\"path\":\"/slow-headers\"")).count(), 1, "{text}");
    let metrics = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\nuem_proxy_requests_in_flight 1\n"), "only the scrape: {metrics}");
    assert!(
        metrics.contains(r#"uem_proxy_requests_total{method="GET",category="unknown",status_class="4xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_header_timeout_never_cuts_a_connection_busy_with_a_request() {
    // The timeout is kept by a sweep over idle connections; one sending a body, or waiting for
    // the API, is busy, whatever the time.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_HEADER_TIMEOUT", "300ms")]).await;
    let mut caller = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    caller.write_all(b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8\r\n\r\n").await.unwrap();
    for piece in [b"up", b"lo", b"ad", b"ed"] {
        // Pauses within the body's own limit, adding up to well past the header timeout.
        tokio::time::sleep(Duration::from_millis(250)).await;
        caller.write_all(piece).await.unwrap();
    }
    let mut head = [0u8; 12];
    caller.read_exact(&mut head).await.expect("answered, not cut");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(upstream.last().body, "uploaded");
    let slow = client().get(format!("{}/slow-headers?ms=900", proxy.url)).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.text().await.unwrap(), "slow");
}
