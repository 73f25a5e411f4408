//! The client that forwards API requests: hyper's pooled client over rustls, through the egress
//! proxy where one applies. It sends the request target exactly as it is given, byte for byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, PROXY_AUTHORIZATION, USER_AGENT};
use http::uri::Scheme;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use crate::config::{Config, Egress};
use crate::forward::body::Upload;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream: held whole (and replayable), or streamed from the caller.
pub type Outbound = Either<Full<Bytes>, Upload<axum::body::Body>>;

/// Sent when the caller sent no `User-Agent`, and on `CONNECT` to an egress proxy.
const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(concat!("uem-proxy/", env!("CARGO_PKG_VERSION")));

/// Keep-alive connections to the API idle longer than this are closed.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The forwarding client. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, Outbound>,
    egress: Arc<Matcher>,
}

/// Connecting to the API (TCP, egress proxy and TLS together) took longer than `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting took longer than {0:?}")]
pub struct ConnectTimeout(Duration);

impl UpstreamClient {
    /// A client for `config`'s egress route and connect timeout, trusting what `tls` trusts (see
    /// [`tls_config`]). Redirects are never followed: hyper's client has no such feature.
    pub fn new(config: &Config, tls: rustls::ClientConfig) -> Result<UpstreamClient, String> {
        // An HTTPS egress proxy is spoken to in HTTP/1.1 (for CONNECT); the API in either.
        let mut tls_proxy = tls.clone();
        tls_proxy.alpn_protocols.clear();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));

        let egress = Arc::new(egress_matcher(&config.egress));
        let api = Uri::try_from(config.api_url.as_str()).map_err(|e| e.to_string())?;
        if let Some(proxy) = egress.intercept(&api)
            && !matches!(proxy.uri().scheme_str(), Some("http" | "https"))
        {
            tracing::warn!(
                scheme = proxy.uri().scheme_str(),
                "the environment names a proxy that is not an HTTP proxy; API requests through it will fail"
            );
        }
        let connector = Connector {
            http,
            tls: Arc::new(tls),
            tls_proxy: Arc::new(tls_proxy),
            egress: egress.clone(),
            timeout: config.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(UpstreamClient { client, egress })
    }

    /// Sends `request` as it is, adding only what the client adds itself: `Host`, a `User-Agent`
    /// when there is none, and the egress proxy's credentials for a plain-HTTP API.
    pub fn send(
        &self,
        mut request: Request<Outbound>,
    ) -> impl Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>> + use<> {
        let headers = request.headers_mut();
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, USER_AGENT_VALUE);
        }
        // A plain-HTTP request goes to the proxy in absolute form and carries its credentials;
        // an HTTPS one is tunnelled, and the credentials go on the CONNECT instead.
        if request.uri().scheme() == Some(&Scheme::HTTP)
            && let Some(auth) = self.egress.intercept(request.uri()).as_ref().and_then(|p| p.basic_auth().cloned())
        {
            request.headers_mut().insert(PROXY_AUTHORIZATION, auth);
        }
        self.client.request(request)
    }
}

/// TLS for the proxy's outbound calls: the system's trust store (through the platform verifier,
/// as reqwest uses it) plus `UEM_CA_BUNDLE`'s certificates, ring as the one crypto provider, ALPN
/// offering HTTP/2 and HTTP/1.1. Built once and shared by the token client and the forwarding
/// client, because reading the system's store takes a noticeable part of start-up.
pub fn tls_config(config: &Config) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = config.ca_bundle.as_ref().map(|c| c.to_vec()).unwrap_or_default();
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
        .map_err(|e| format!("cannot load the system's trust store: {e}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// The egress route as hyper-util's matcher: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
/// `NO_PROXY` from the environment; nothing; or one proxy for all, except hosts in `NO_PROXY`.
fn egress_matcher(egress: &Egress) -> Matcher {
    match egress {
        Egress::FromEnvironment => Matcher::from_system(),
        Egress::Direct => Matcher::builder().build(),
        Egress::Via(url) => {
            let no_proxy =
                ["NO_PROXY", "no_proxy"].iter().find_map(|name| std::env::var(name).ok()).unwrap_or_default();
            Matcher::builder().all(url.as_str()).no(no_proxy).build()
        }
    }
}

/// Opens connections to the API: straight, or through the egress proxy (HTTPS targets through a
/// `CONNECT` tunnel, plain-HTTP targets as absolute-form requests to the proxy), with TLS to the
/// API for HTTPS; all of it within the connect timeout.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Arc<rustls::ClientConfig>,
    tls_proxy: Arc<rustls::ClientConfig>,
    egress: Arc<Matcher>,
    timeout: Duration,
}

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.timeout;
            tokio::time::timeout(timeout, this.connect(dst)).await.map_err(|_| ConnectTimeout(timeout))?
        })
    }
}

impl Connector {
    async fn connect(self, dst: Uri) -> Result<Conn, BoxError> {
        let Some(proxy) = self.egress.intercept(&dst) else {
            let io = HttpsConnector::from((self.http, self.tls)).oneshot(dst).await?;
            return Ok(Conn { io: Box::new(io), proxied: false });
        };
        if !matches!(proxy.uri().scheme_str(), Some("http" | "https")) {
            return Err(format!("the egress proxy {} is not an HTTP proxy", proxy.uri()).into());
        }
        let to_proxy = HttpsConnector::from((self.http, self.tls_proxy));
        if dst.scheme() != Some(&Scheme::HTTPS) {
            let io = to_proxy.oneshot(proxy.uri().clone()).await?;
            return Ok(Conn { io: Box::new(io), proxied: true });
        }
        let mut tunnel = Tunnel::new(proxy.uri().clone(), to_proxy);
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        tunnel = tunnel.with_headers(HeaderMap::from_iter([(USER_AGENT, USER_AGENT_VALUE)]));
        let io = HttpsConnector::from((tunnel, self.tls)).oneshot(dst).await?;
        Ok(Conn { io: Box::new(io), proxied: false })
    }
}

/// What a connection is made of (TCP, maybe a tunnel, maybe TLS), behind one type.
trait Io: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static> Io for T {}

/// One connection to the API or to the egress proxy.
pub struct Conn {
    io: Box<dyn Io>,
    /// Requests on it go to an egress proxy, so in absolute form.
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }
}
