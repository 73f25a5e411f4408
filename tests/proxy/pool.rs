//! The pool of connections to the API, seen from the API's side of real sockets: connections
//! kept alive and reused, checked before reuse, given back only after a whole answer, closed
//! after their idle time; and HTTP/2 on one connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use uem_proxy::forward::pool::Settings;
use uem_proxy::forward::upstream::{Outbound, ResponseBody, UpstreamClient};

use crate::support::{Proxy, TokenService, client, localhost_certificate, raw};

/// An API on plain sockets, each connection served by a thread of its own, so that it answers
/// while a test holds its own runtime. It numbers connections from 1 and records each request
/// line with its connection's number. It answers `/ok` with `ok`, `/chunked` with `ok` in two
/// chunks, `/big` with 4 MiB, and `/then-close` with `ok`, after which it closes the connection
/// (without saying so) once the test says so, see [`Closing`].
#[derive(Clone)]
struct Api {
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    /// Connections that have ended, either side having closed them.
    ended: Arc<Mutex<Vec<usize>>>,
    closing: Arc<Mutex<Option<ApiClosing>>>,
}

/// The API's side of [`Closing`].
type ApiClosing = (mpsc::Receiver<()>, UnixStream, mpsc::Sender<()>);

/// The test's side of `/then-close`: `now` makes the API close the connection; the API writes a
/// byte to `about_to` just before it closes, and sends on `done` just after.
struct Closing {
    now: mpsc::Sender<()>,
    about_to: UnixStream,
    done: mpsc::Receiver<()>,
}

impl Api {
    fn start() -> (Api, SocketAddr, Closing) {
        let (now_tx, now_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let (about_to, about_to_api) = UnixStream::pair().unwrap();
        let api = Api {
            accepted: Arc::default(),
            requests: Arc::default(),
            ended: Arc::default(),
            closing: Arc::new(Mutex::new(Some((now_rx, about_to_api, done_tx)))),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = api.clone();
        std::thread::spawn(move || {
            // Bounded: no test here opens more.
            for stream in listener.incoming().take(16) {
                let n = serving.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let api = serving.clone();
                let stream = stream.unwrap();
                std::thread::spawn(move || {
                    let _ = api.serve(n, stream);
                    api.ended.lock().unwrap().push(n);
                });
            }
        });
        (api, addr, Closing { now: now_tx, about_to, done: done_rx })
    }

    fn serve(&self, n: usize, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end().to_owned();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header)?;
                if header.trim_end().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
            let head_only = line.starts_with("HEAD ");
            let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
            self.requests.lock().unwrap().push((n, line));
            match path.as_str() {
                "/chunked" => out
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n")?,
                "/big" => {
                    out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n")?;
                    for _ in 0..64 {
                        out.write_all(&[b'x'; 65536])?;
                    }
                }
                _ if head_only => out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")?,
                _ => out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?,
            }
            if path == "/then-close" {
                let (now, mut about_to, done) = self.closing.lock().unwrap().take().unwrap();
                let _ = now.recv_timeout(Duration::from_secs(10));
                about_to.write_all(b"!")?;
                drop((out, reader));
                let _ = done.send(());
                return Ok(());
            }
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.requests.lock().unwrap().clone()
    }

    /// Whether connection `n` has ended, waiting up to `max` for it.
    async fn ended_within(&self, n: usize, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            if self.ended.lock().unwrap().contains(&n) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The forwarding client alone, for `api`, keeping connections as `settings` says.
fn upstream_client(api: SocketAddr, settings: Settings) -> UpstreamClient {
    let config = crate::support::config(&format!("http://{api}"), "http://127.0.0.1:9/token", None, &[]).unwrap();
    let tls = uem_proxy::forward::upstream::tls_config(None).unwrap();
    let reach = uem_proxy::forward::upstream::Reach {
        api_url: &config.api_url,
        egress: &config.egress,
        connect_timeout: config.connect_timeout,
    };
    UpstreamClient::with_pool(reach, tls, settings).unwrap()
}

fn request(method: &str, api: SocketAddr, path: &str, body: &'static str) -> http::Request<Outbound> {
    let body: Outbound = Either::Left(Full::new(Bytes::from_static(body.as_bytes())));
    let mut request = http::Request::new(body);
    *request.method_mut() = method.parse().unwrap();
    *request.uri_mut() = format!("http://{api}{path}").parse().unwrap();
    request
}

async fn text(response: http::Response<ResponseBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn long_idle() -> Settings {
    Settings { idle: Duration::from_secs(60), max_idle: 8 }
}

#[tokio::test]
async fn callers_on_connections_of_their_own_share_one_kept_alive_connection_to_the_api() {
    let (api, addr, _closing) = Api::start();
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
    for path in ["/ok", "/chunked", "/ok", "/chunked", "/chunked", "/ok"] {
        let answer =
            raw(proxy.addr, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(api.requests().len(), 6);
    assert_eq!(api.accepted(), 1, "six callers, one connection to the API: {:?}", api.requests());
}

#[tokio::test]
async fn a_chunked_answer_gives_its_connection_back_once_read_to_its_end() {
    let (api, addr, _closing) = Api::start();
    let client = upstream_client(addr, long_idle());
    for _ in 0..3 {
        let response = client.send(request("GET", addr, "/chunked", "")).await.unwrap();
        assert_eq!(text(response).await, "ok");
    }
    assert_eq!(api.accepted(), 1, "{:?}", api.requests());
}

#[tokio::test]
async fn an_answer_without_a_body_gives_its_connection_back_at_once() {
    let (api, addr, _closing) = Api::start();
    let client = upstream_client(addr, long_idle());
    // The body of the HEAD answer is held, unread, while the next request goes out.
    let head = client.send(request("HEAD", addr, "/ok", "")).await.unwrap();
    assert!(http_body::Body::is_end_stream(head.body()));
    let get = client.send(request("GET", addr, "/ok", "")).await.unwrap();
    assert_eq!(text(get).await, "ok");
    drop(head);
    assert_eq!(api.accepted(), 1, "{:?}", api.requests());
}

#[tokio::test]
async fn a_body_dropped_before_its_end_loses_its_connection_and_the_next_request_works() {
    let (api, addr, _closing) = Api::start();
    let client = upstream_client(addr, long_idle());
    let response = client.send(request("GET", addr, "/big", "")).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(!first.into_data().unwrap().is_empty());
    drop(body);
    assert!(api.ended_within(1, Duration::from_secs(5)).await, "the half-read connection is closed");

    let response = client.send(request("GET", addr, "/ok", "")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(api.requests(), [(1, "GET /big HTTP/1.1".to_owned()), (2, "GET /ok HTTP/1.1".to_owned())]);
}

/// The API closes a kept-alive connection just as the next request is sent: the client's
/// connection task learns of the close only when it next runs, with the request waiting for it,
/// which then comes back unsent and goes out on a new connection. A POST, once.
#[tokio::test]
async fn a_post_meeting_a_connection_the_api_closed_while_idle_goes_once_on_a_new_connection() {
    use tokio::io::AsyncReadExt;
    let (api, addr, closing) = Api::start();
    let upstream = upstream_client(addr, long_idle());
    let response = upstream.send(request("GET", addr, "/then-close", "")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    // Blocking on purpose, so that both the byte on `about_to` and the close are there when this
    // runtime next polls its sockets: this task is woken first and sends before the
    // connection's task has run.
    closing.about_to.set_nonblocking(true).unwrap();
    let mut about_to = tokio::net::UnixStream::from_std(closing.about_to).unwrap();
    closing.now.send(()).unwrap();
    closing.done.recv_timeout(Duration::from_secs(10)).unwrap();
    about_to.read_exact(&mut [0]).await.unwrap();
    let response = upstream.send(request("POST", addr, "/ok", "{\"a\":1}")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(
        api.requests(),
        [(1, "GET /then-close HTTP/1.1".to_owned()), (2, "POST /ok HTTP/1.1".to_owned())],
        "the POST went once, on a new connection"
    );
}

#[tokio::test]
async fn a_connection_the_api_closed_while_idle_is_not_used_and_a_post_after_it_goes_once() {
    let (api, addr, closing) = Api::start();
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[]).await;
    let first = client().get(format!("{}/then-close", proxy.url)).send().await.unwrap();
    assert_eq!(first.text().await.unwrap(), "ok");
    closing.now.send(()).unwrap();
    assert!(api.ended_within(1, Duration::from_secs(5)).await);
    let post = client().post(format!("{}/ok", proxy.url)).body("{}").send().await.unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(api.requests()[1..], [(2, "POST /ok HTTP/1.1".to_owned())]);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_idle_time_without_any_request() {
    let (api, addr, _closing) = Api::start();
    let idle = Duration::from_millis(400);
    let client = upstream_client(addr, Settings { idle, max_idle: 8 });
    let response = client.send(request("GET", addr, "/ok", "")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    let started = Instant::now();
    assert!(!api.ended_within(1, idle / 2).await, "kept while it is young");
    assert!(api.ended_within(1, Duration::from_secs(5)).await, "closed once expired");
    assert!(started.elapsed() >= idle / 2);
    let response = client.send(request("GET", addr, "/ok", "")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(api.accepted(), 2);
}

/// Made outside a runtime, the pool has no sweep: only the check before reuse keeps an expired
/// connection from being used.
#[test]
fn an_expired_connection_is_never_reused_even_before_the_sweep_closes_it() {
    let (api, addr, _closing) = Api::start();
    let idle = Duration::from_millis(200);
    let upstream = upstream_client(addr, Settings { idle, max_idle: 8 });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for pause in [Duration::ZERO, idle / 4, idle + idle / 2, Duration::ZERO] {
            tokio::time::sleep(pause).await;
            assert_eq!(text(upstream.send(request("GET", addr, "/ok", "")).await.unwrap()).await, "ok");
        }
        let connections: Vec<usize> = api.requests().iter().map(|(n, _)| *n).collect();
        assert_eq!(connections, [1, 1, 2, 2], "a new connection after the idle time, not before");
        assert!(api.ended_within(1, Duration::from_secs(5)).await, "the expired one is closed");
    });
}

#[tokio::test]
async fn no_more_idle_connections_are_kept_than_allowed() {
    let (api, addr, _closing) = Api::start();
    let client = upstream_client(addr, Settings { idle: Duration::from_secs(60), max_idle: 2 });
    // Four answers held at once need four connections; only two stay.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(client.send(request("GET", addr, "/ok", "")).await.unwrap());
    }
    for response in held {
        assert_eq!(text(response).await, "ok");
    }
    assert_eq!(api.accepted(), 4);
    assert!(api.ended_within(1, Duration::from_secs(5)).await, "the oldest idle connection went");
    assert!(api.ended_within(2, Duration::from_secs(5)).await);
    for _ in 0..3 {
        assert_eq!(text(client.send(request("GET", addr, "/ok", "")).await.unwrap()).await, "ok");
    }
    let last: Vec<usize> = api.requests()[4..].iter().map(|(n, _)| *n).collect();
    assert_eq!(last, [4, 4, 4], "the most recently used connection first");
}

#[tokio::test]
async fn an_api_that_offers_http2_gets_every_request_on_one_connection() {
    use axum::response::IntoResponse;
    let (cert, key) = localhost_certificate();
    let mut tls = uem_proxy::listen::tls::server_config(cert.as_ref(), key.as_ref()).unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (counted, recorded) = (connections.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_owned());
                        recorded.lock().unwrap().push(format!("{:?} {} host={host:?}", req.version(), req.uri()));
                        Ok::<_, std::convert::Infallible>("h2 ok".into_response())
                    }
                });
                let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
            });
        }
    });
    let tokens = TokenService::default();
    let proxy = Proxy::start(
        &format!("https://localhost:{port}"),
        &tokens.start().await,
        &[("UEM_CA_BUNDLE", &cert), ("UEM_PROXY_EGRESS_PROXY", "none")],
    )
    .await;
    let url = format!("{}/api/y?q=1", proxy.url);
    assert_eq!(client().get(&url).send().await.unwrap().text().await.unwrap(), "h2 ok");
    let many = (0..8).map(|_| async { client().get(&url).send().await.unwrap().text().await.unwrap() });
    assert_eq!(futures_util::future::join_all(many).await, ["h2 ok"; 8]);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "nine requests, one connection");
    let expected = format!("HTTP/2.0 https://localhost:{port}/api/y?q=1 host=None");
    assert_eq!(*seen.lock().unwrap(), vec![expected; 9]);
}
