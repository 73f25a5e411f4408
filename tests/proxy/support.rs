//! Test doubles on real sockets: a scriptable token service, an upstream that reports what it
//! received, and helpers to start the proxy in-process or as the real binary.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// Binds port 0 on loopback and serves `app` in the background.
pub async fn spawn(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One scripted answer of the token service.
#[derive(Clone)]
pub enum Reply {
    /// A normal grant: `tok-N` (N counts grants) with this `expires_in` JSON value.
    Grant(&'static str),
    /// Any status, content type and body.
    Raw(u16, &'static str, String),
}

/// A token service: answers from a script, then with `Grant("3600")`; counts and records calls.
#[derive(Clone, Default)]
pub struct TokenService {
    pub script: Arc<Mutex<VecDeque<Reply>>>,
    pub calls: Arc<AtomicU64>,
    pub grants: Arc<AtomicU64>,
    pub forms: Arc<Mutex<Vec<HashMap<String, String>>>>,
    pub delay: Duration,
    /// Answered after the script instead of a grant, when set.
    pub after_script: Option<Reply>,
    /// Put before every token it issues, so that two services' tokens differ.
    pub prefix: &'static str,
    /// Requests being answered now, and the most there ever were at once.
    pub in_flight: Arc<AtomicU64>,
    pub most_at_once: Arc<AtomicU64>,
}

impl TokenService {
    pub fn script(replies: &[Reply]) -> TokenService {
        TokenService { script: Arc::new(Mutex::new(replies.iter().cloned().collect())), ..Default::default() }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Starts it; returns its token URL.
    pub async fn start(&self) -> String {
        let app = Router::new().route("/connect/token", post(token)).with_state(self.clone());
        format!("http://{}/connect/token", spawn(app).await)
    }
}

async fn token(State(svc): State<TokenService>, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    svc.calls.fetch_add(1, Ordering::SeqCst);
    svc.forms.lock().unwrap().push(form);
    let now = svc.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    svc.most_at_once.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(svc.delay).await;
    svc.in_flight.fetch_sub(1, Ordering::SeqCst);
    let scripted = svc.script.lock().unwrap().pop_front();
    let reply = scripted.or(svc.after_script.clone()).unwrap_or(Reply::Grant("3600"));
    match reply {
        Reply::Grant(expires_in) => {
            let n = svc.grants.fetch_add(1, Ordering::SeqCst) + 1;
            let prefix = svc.prefix;
            let body =
                format!(r#"{{"access_token":"{prefix}tok-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#);
            (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        }
        Reply::Raw(status, content_type, body) => {
            (StatusCode::from_u16(status).unwrap(), [("content-type", content_type)], body).into_response()
        }
    }
}

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The mock API. Every request is recorded; paths choose behaviours (see `upstream_handler`).
#[derive(Clone, Default)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// `/auth-check` answers 200 only to this `Authorization` value.
    pub accepted: Arc<Mutex<String>>,
    /// Notified when `/probe-upload` has received its first piece of body.
    pub first_piece: Arc<Notify>,
    /// `/probe-download` sends its second piece once this is notified.
    pub send_rest: Arc<Notify>,
    pub addr: Arc<Mutex<Option<SocketAddr>>>,
    /// `/throttle` answers 429 (with `Retry-After: ?after=`) while this is above zero.
    pub throttle_left: Arc<AtomicU64>,
    /// Uploads whose body broke off before its end (the proxy gave up on them).
    pub broken_uploads: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start(&self) -> String {
        let app = Router::new().fallback(any(upstream_handler)).with_state(self.clone());
        let addr = spawn(app).await;
        *self.addr.lock().unwrap() = Some(addr);
        format!("http://{addr}")
    }

    /// Waits (at most 10 s) until the API has seen `n` requests: a request is then in flight.
    pub async fn wait_seen(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.seen.lock().unwrap().len() < n {
            assert!(std::time::Instant::now() < deadline, "the API saw fewer than {n} requests");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }
}

/// A deterministic byte pattern and a checksum, to verify big bodies end to end.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64).map(|i| ((offset + i) % 251) as u8).collect::<Vec<_>>().into()
}

pub fn checksum(acc: u64, chunk: &[u8]) -> u64 {
    chunk.iter().fold(acc, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64))
}

/// A request body of `total` bytes of [`pattern`] in 1 MiB pieces, made as it is sent.
pub fn pattern_body(total: u64) -> reqwest::Body {
    let piece = 1024 * 1024;
    let pieces = (0..total.div_ceil(piece)).map(move |i| {
        let len = piece.min(total - i * piece);
        Ok::<_, std::io::Error>(pattern(i * piece, len as usize))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

/// The checksum of [`pattern_body`]'s bytes.
pub fn pattern_checksum(total: u64) -> u64 {
    let piece = 1024 * 1024;
    (0..total.div_ceil(piece))
        .fold(0, |sum, i| checksum(sum, &pattern(i * piece, piece.min(total - i * piece) as usize)))
}

/// Reads a response body of `total` bytes of [`pattern`], checking every byte as it streams.
pub async fn expect_pattern(response: reqwest::Response, total: u64) {
    assert_eq!(response.content_length(), Some(total));
    let (mut received, mut sum, mut expected) = (0u64, 0u64, 0u64);
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        sum = checksum(sum, &piece);
        expected = checksum(expected, &pattern(received, piece.len()));
        received += piece.len() as u64;
    }
    assert_eq!((received, sum), (total, expected));
}

async fn upstream_handler(
    State(up): State<Upstream>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let record = |body: Bytes| {
        up.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers.clone(),
            body,
        })
    };
    let number = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match path.as_str() {
        "/upload" | "/probe-upload" => {
            record(Bytes::new());
            let (mut total, mut sum) = (0u64, 0u64);
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else {
                    up.broken_uploads.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::BAD_REQUEST.into_response();
                };
                total += chunk.len() as u64;
                sum = checksum(sum, &chunk);
                up.first_piece.notify_one();
            }
            axum::Json(serde_json::json!({ "bytes": total, "checksum": sum })).into_response()
        }
        "/download" => {
            record(Bytes::new());
            let total = number("bytes");
            let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
                (sent < total).then(|| {
                    let n = (total - sent).min(256 * 1024);
                    (Ok::<_, std::io::Error>(pattern(sent, n as usize)), sent + n)
                })
            });
            ([("content-length", total.to_string())], Body::from_stream(chunks)).into_response()
        }
        "/probe-download" => {
            record(Bytes::new());
            let send_rest = up.send_rest.clone();
            let chunks = futures_util::stream::unfold(0, move |step| {
                let send_rest = send_rest.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first;")), 1)),
                        1 => {
                            send_rest.notified().await;
                            Some((Ok(Bytes::from_static(b"rest")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(chunks).into_response()
        }
        "/stall-body" => {
            record(Bytes::new());
            let chunks = futures_util::stream::unfold(0, |step| async move {
                if step == 1 {
                    std::future::pending::<()>().await;
                }
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"partial")), 1))
            });
            Body::from_stream(chunks).into_response()
        }
        _ => {
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            record(body.clone());
            special(&up, &path, &parts.headers, number("ms"), body).await
        }
    }
}

async fn special(up: &Upstream, path: &str, headers: &HeaderMap, ms: u64, body: Bytes) -> Response {
    match path {
        "/slow-headers" => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slow".into_response()
        }
        "/auth-check" => {
            let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
            if auth.as_deref() == Some(up.accepted.lock().unwrap().as_str()) {
                (StatusCode::OK, body).into_response()
            } else {
                let err = r#"{"errorCode":1005,"message":"Invalid credentials","activityId":"a1"}"#;
                (StatusCode::UNAUTHORIZED, [("content-type", "application/json")], err).into_response()
            }
        }
        "/echo-activity" | "/echo-activity-split" => {
            // An API that names the activity by the credential it was sent (split by a space the
            // access log's id leaves out).
            let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let mut token = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_owned();
            if path.ends_with("split") {
                token.insert(token.len() / 2, ' ');
            }
            let err = serde_json::json!({ "errorCode": 1, "message": "echo", "activityId": token }).to_string();
            (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "application/json")], err).into_response()
        }
        "/hop" => Response::builder()
            .header("connection", "x-conn-named, keep-alive")
            .header("x-conn-named", "dropped")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("upgrade", "h2c")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-kept", "yes")
            .body(Body::from("hop"))
            .unwrap(),
        "/throttle" if up.throttle_left.load(Ordering::SeqCst) > 0 => {
            up.throttle_left.fetch_sub(1, Ordering::SeqCst);
            let err = r#"{"errorCode":429,"message":"Too many requests","activityId":"throttled-1"}"#;
            let headers = [("retry-after", ms.to_string()), ("content-type", "application/json".to_owned())];
            (StatusCode::TOO_MANY_REQUESTS, headers, err).into_response()
        }
        "/links" | "/links-binary" | "/links-stream" => {
            let own = format!("http://{}", up.addr.lock().unwrap().unwrap());
            let text = format!(
                r#"{{"Self":"{own}/api/mdm/devices/5","Escaped":"{}","Other":"https://example.com/x"}}"#,
                format!("{own}/api/x").replace('/', "\\/")
            );
            let media = if path == "/links-binary" { "application/octet-stream" } else { "application/json" };
            if path == "/links-stream" {
                // The URL arrives split across pieces of the body.
                let cut = text.find("/api/mdm").unwrap() - 5;
                let pieces = vec![text[..cut].to_owned(), text[cut..cut + 3].to_owned(), text[cut + 3..].to_owned()];
                let stream =
                    futures_util::stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(Bytes::from(p))));
                return ([("content-type", media)], Body::from_stream(stream)).into_response();
            }
            ([("content-type", media)], text).into_response()
        }
        "/echo-auth" => {
            let auth = headers.get("authorization").cloned().unwrap_or(axum::http::HeaderValue::from_static(""));
            (StatusCode::OK, [("authorization", auth)], "echoed").into_response()
        }
        "/redirect" => {
            let own = up.addr.lock().unwrap().unwrap();
            let location = format!("http://{own}/api/elsewhere?x=1");
            (StatusCode::FOUND, [("location", location)], "").into_response()
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = headers
                .keys()
                .map(|k| {
                    let values = headers.get_all(k).iter().map(|v| v.to_str().unwrap_or("?").to_owned());
                    (k.to_string(), values.collect::<Vec<_>>().into())
                })
                .collect();
            axum::Json(serde_json::json!({ "headers": headers, "body_len": body.len() })).into_response()
        }
    }
}

/// The proxy, running in this test's runtime on a port of its own.
pub struct Proxy {
    pub addr: SocketAddr,
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    /// Runs the proxy for `config` in this test's runtime on a port of its own.
    pub async fn run(config: uem_proxy::Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(uem_proxy::run(config, listener, async {
            let _ = rx.await;
        }));
        Proxy { addr, url: format!("http://{addr}"), shutdown: Some(tx), task }
    }

    /// Starts the proxy for `api` and `token_url` with extra environment settings.
    pub async fn start(api: &str, token_url: &str, extra: &[(&str, &str)]) -> Proxy {
        Proxy::start_with_file(api, token_url, None, extra).await
    }

    /// The same, with a configuration file of this text.
    pub async fn start_with_file(api: &str, token_url: &str, file: Option<&str>, extra: &[(&str, &str)]) -> Proxy {
        Proxy::run(config(api, token_url, file, extra).expect("valid config")).await
    }
}

/// A configuration from these settings (and file text), as the proxy's tests use.
pub fn config(
    api: &str,
    token_url: &str,
    file: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<uem_proxy::Config, uem_proxy::config::ConfigError> {
    let mut env: HashMap<String, String> = [
        ("UEM_API_URL", api),
        ("UEM_TOKEN_URL", token_url),
        ("UEM_CLIENT_ID", "test-client"),
        ("UEM_CLIENT_SECRET", SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let path = file.map(|text| {
        let path = std::env::temp_dir().join(format!("uem-proxy-test-{}.toml", fastrand::u64(..)));
        std::fs::write(&path, text).unwrap();
        path
    });
    let config = uem_proxy::Config::load(path.as_deref(), &|k| env.get(k).cloned());
    if let Some(path) = path {
        std::fs::remove_file(path).unwrap();
    }
    config
}

impl Proxy {
    /// Starts mock token service and upstream with defaults, and the proxy in front of them.
    pub async fn with_defaults(extra: &[(&str, &str)]) -> (Proxy, Upstream, TokenService) {
        let tokens = TokenService::default();
        let upstream = Upstream::default();
        let proxy = Proxy::start(&upstream.start().await, &tokens.start().await, extra).await;
        (proxy, upstream, tokens)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The client secret every test proxy is configured with; logs are searched for it.
pub const SECRET: &str = "c1ient-s3cret-VALUE";

/// A plain HTTP client for the tests: no proxy from the environment, no redirects.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Sends raw bytes and reads until the server closes or `Connection: close` completes the reply.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP response.
pub fn raw_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").expect("a complete response").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Starts a sandbox tenant on port 0; returns its base URL and its state.
pub async fn start_sandbox(options: uem_proxy::sandbox::Options) -> (String, Arc<uem_proxy::sandbox::Sandbox>) {
    let sandbox = uem_proxy::sandbox::Sandbox::new(options).unwrap();
    let addr = spawn(uem_proxy::sandbox::router(sandbox.clone())).await;
    (format!("http://{addr}"), sandbox)
}

/// The sandbox's client credentials in tests.
pub const SANDBOX_ID: &str = "sandbox-client";
pub const SANDBOX_SECRET: &str = "sandbox-s3cret";

pub fn sandbox_options() -> uem_proxy::sandbox::Options {
    uem_proxy::sandbox::Options::new(SANDBOX_ID, SANDBOX_SECRET)
}

/// The proxy in front of a sandbox, configured with the sandbox's credentials.
pub async fn proxy_for_sandbox(base: &str, extra: &[(&str, &str)]) -> Proxy {
    let mut env = vec![("UEM_CLIENT_ID", SANDBOX_ID), ("UEM_CLIENT_SECRET", SANDBOX_SECRET)];
    env.extend_from_slice(extra);
    Proxy::start(base, &format!("{base}/connect/token"), &env).await
}

/// Serves `app` over HTTPS on port 0 with the given PEM certificate and key.
pub async fn spawn_tls(app: Router, cert: &str, key: &str) -> SocketAddr {
    let config = uem_proxy::listen::tls::server_config(std::path::Path::new(cert), std::path::Path::new(key)).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), req.map(Body::new))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A self-signed certificate for `localhost`: (certificate file, key file).
pub fn localhost_certificate() -> (String, String) {
    let dir = std::env::temp_dir().join(format!("uem-proxy-cert-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("localhost.crt"), dir.join("localhost.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path.display().to_string(), key_path.display().to_string())
}
