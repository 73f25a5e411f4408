//! The client that forwards API requests: HTTP/1.1, or HTTP/2 where the API offers it by ALPN,
//! over rustls, through the egress proxy where one applies, on connections kept in a [`Pool`]. It
//! sends the request target exactly as it is given, byte for byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue, PROXY_AUTHORIZATION, USER_AGENT};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tower::ServiceExt;

use super::pool::{self, Destination, Pool, Sender};
use crate::forward::body::Upload;
use rustls::pki_types::CertificateDer;
use url::Url;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream: held whole (and replayable), or streamed from the caller.
pub type Outbound = Either<Full<Bytes>, Upload<axum::body::Body>>;

/// A response body from the API; its connection goes back to the pool at its clean end.
pub type ResponseBody = pool::ResponseBody<Outbound, Route>;

/// Sent when the caller sent no `User-Agent`, and on `CONNECT` to an egress proxy.
const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(concat!("uem-proxy/", env!("CARGO_PKG_VERSION")));

/// The forwarding client. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Pool<Outbound, Route>,
    connector: Connector,
}

/// What every request to one destination carries, built on the first request to it.
pub struct Route {
    /// The destination as the connector takes it: scheme and authority.
    origin: Uri,
    /// `Host` for HTTP/1: the host, and the port unless it is the scheme's default.
    host: HeaderValue,
    /// Plain HTTP through the egress proxy: the request line holds the whole URL.
    absolute_form: bool,
    /// The egress proxy's credentials, sent along on absolute-form requests.
    proxy_authorization: Option<HeaderValue>,
}

/// Connecting to the API (TCP, egress proxy and TLS together) took longer than `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting took longer than {0:?}")]
pub struct ConnectTimeout(Duration);

/// Why a request got no answer from the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be opened (TCP, egress proxy, TLS, HTTP/2 preface), or it took longer
    /// than the connect timeout ([`ConnectTimeout`] in the source).
    #[error("cannot connect to the API")]
    Connect(#[source] BoxError),
    /// The connection failed, or the request body did, before the response head was read.
    #[error("the API connection failed")]
    Send(#[source] hyper::Error),
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// What the client needs to know of the configuration: the API, the egress route and the time
/// a connection may take.
pub struct Reach<'a> {
    pub api_url: &'a Url,
    pub egress: &'a Egress,
    pub connect_timeout: Duration,
}

impl UpstreamClient {
    /// A client for `reach`'s egress route and connect timeout, trusting what `tls` trusts (see
    /// [`tls_config`]), keeping idle connections as [`pool::Settings::default`] says. Redirects
    /// are never followed: the client has no such feature.
    pub fn new(reach: Reach<'_>, tls: rustls::ClientConfig) -> Result<UpstreamClient, String> {
        UpstreamClient::with_pool(reach, tls, pool::Settings::default())
    }

    /// The same, with connections kept as `pool` says.
    pub fn with_pool(
        reach: Reach<'_>,
        tls: rustls::ClientConfig,
        pool: pool::Settings,
    ) -> Result<UpstreamClient, String> {
        // An HTTPS egress proxy is spoken to in HTTP/1.1 (for CONNECT); the API in either.
        let mut tls_proxy = tls.clone();
        tls_proxy.alpn_protocols.clear();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));

        let egress = Arc::new(egress_matcher(reach.egress));
        let api = Uri::try_from(reach.api_url.as_str()).map_err(|e| e.to_string())?;
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
            egress,
            timeout: reach.connect_timeout,
        };
        Ok(UpstreamClient { pool: Pool::new(pool), connector })
    }

    /// Sends `request` (its URI absolute) as it is, adding only what the client adds itself:
    /// `Host`, a `User-Agent` when there is none, and the egress proxy's credentials for a
    /// plain-HTTP API. A request on a reused connection that the API closed before the request
    /// was written goes out again on a new connection, whatever its method; one that may have
    /// been written is never sent twice here.
    ///
    /// Not an `async fn`: one keeps both its argument and the local the argument is moved into,
    /// for its whole life; the block below uses the argument itself.
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        &self,
        mut request: Request<Outbound>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Error>> + '_ {
        async move {
            let (dest, pooled) = self
                .pool
                .checkout(request.uri(), || self.route(request.uri()))
                .ok_or_else(|| Error::Connect("the request has no absolute URI".into()))?;
            let reused = pooled.is_some();
            let conn = match pooled {
                Some(conn) => conn,
                None => self.connect(&dest).await?,
            };
            let headers = request.headers_mut();
            if !headers.contains_key(USER_AGENT) {
                headers.insert(USER_AGENT, USER_AGENT_VALUE);
            }
            if let Some(auth) = &dest.route.proxy_authorization {
                headers.insert(PROXY_AUTHORIZATION, auth.clone());
            }
            address(&mut request, &dest.route, conn.is_http2());
            let mut unsent = match self.pool.send(&dest, conn, request).await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            let Some(request) = unsent.take_message().filter(|_| reused) else {
                return Err(Error::Send(unsent.into_error()));
            };
            self.resend(dest, request).await
        }
    }

    /// Sends on a new connection a request that a reused one closed under before it went out.
    /// Boxed: the rare case, whose state inline would make every request's larger.
    fn resend(
        &self,
        dest: Destination<Route>,
        mut request: Request<Outbound>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Error>> + Send + '_>> {
        Box::pin(async move {
            tracing::debug!(
                "the API closed a kept-alive connection before the request went out; sending it on a new one"
            );
            let conn = self.connect(&dest).await?;
            address(&mut request, &dest.route, conn.is_http2());
            self.pool.send(&dest, conn, request).await.map_err(|e| Error::Send(e.into_error()))
        })
    }

    /// The constants of requests to `uri`'s destination; see [`route`].
    fn route(&self, uri: &Uri) -> Route {
        let via = if uri.scheme() == Some(&Scheme::HTTP) { self.connector.egress.intercept(uri) } else { None };
        route(uri, via.as_ref())
    }

    /// Opens a connection to `dest` and starts HTTP on it: HTTP/2 if TLS chose it. Boxed: a new
    /// connection is the rare case, and its handshakes inline would make the state of every
    /// request several KiB larger (memory to set up and copy per request).
    fn connect<'a>(
        &'a self,
        dest: &'a Destination<Route>,
    ) -> Pin<Box<dyn Future<Output = Result<Sender<Outbound>, Error>> + Send + 'a>> {
        Box::pin(async move {
            let conn = self.connector.clone().oneshot(dest.route.origin.clone()).await.map_err(Error::Connect)?;
            let http2 = conn.connected().is_negotiated_h2();
            self.pool.handshake(dest, conn, http2).await.map_err(|e| Error::Connect(e.into()))
        })
    }
}

/// The constants of requests to `uri`'s destination, `via` the egress proxy for plain HTTP. Such
/// a request goes to the proxy in absolute form and carries its credentials; an HTTPS one is
/// tunnelled, and the credentials go on the `CONNECT` instead.
fn route(uri: &Uri, via: Option<&Intercept>) -> Route {
    let mut origin = http::uri::Parts::default();
    origin.scheme = uri.scheme().cloned();
    origin.authority = uri.authority().cloned();
    origin.path_and_query = Some(PathAndQuery::from_static("/"));
    let origin = Uri::from_parts(origin).expect("scheme and authority make a URI");
    let host = uri.host().unwrap_or_default();
    let host = match uri.port_u16().filter(|port| Some(*port) != default_port(uri.scheme())) {
        Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
        None => HeaderValue::try_from(host),
    }
    .expect("a URI's host is a header value");
    Route { origin, host, absolute_form: via.is_some(), proxy_authorization: via.and_then(|p| p.basic_auth().cloned()) }
}

fn default_port(scheme: Option<&Scheme>) -> Option<u16> {
    match scheme {
        Some(s) if *s == Scheme::HTTPS => Some(443),
        Some(s) if *s == Scheme::HTTP => Some(80),
        _ => None,
    }
}

/// Puts `request`'s target in the form its connection takes. HTTP/1: origin form (`/path?query`)
/// with `Host`, or absolute form to an egress proxy. HTTP/2: absolute, the authority going in
/// its own field and no `Host`.
fn address(request: &mut Request<Outbound>, route: &Route, http2: bool) {
    let to_origin_form = !http2 && !route.absolute_form && request.uri().scheme().is_some();
    let to_absolute_form = (http2 || route.absolute_form) && request.uri().scheme().is_none();
    if to_origin_form || to_absolute_form {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        if to_origin_form {
            (parts.scheme, parts.authority) = (None, None);
            parts.path_and_query.get_or_insert(PathAndQuery::from_static("/"));
        } else {
            (parts.scheme, parts.authority) = (route.origin.scheme().cloned(), route.origin.authority().cloned());
        }
        *request.uri_mut() = Uri::from_parts(parts).expect("a URI in another form is still one");
    }
    if http2 {
        request.headers_mut().remove(HOST);
    } else {
        request.headers_mut().insert(HOST, route.host.clone());
    }
}

/// TLS for the proxy's outbound calls: the system's trust store (through the platform verifier,
/// as reqwest uses it) plus `UEM_CA_BUNDLE`'s certificates, ring as the one crypto provider, ALPN
/// offering HTTP/2 and HTTP/1.1. Built once and shared by the token client and the forwarding
/// client, because reading the system's store takes a noticeable part of start-up.
pub fn tls_config(ca_bundle: Option<&[CertificateDer<'static>]>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = ca_bundle.map(<[_]>::to_vec).unwrap_or_default();
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

/// The route of outbound calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment, if set.
    FromEnvironment,
    /// Straight to the hosts, whatever the environment says.
    Direct,
    /// Through this proxy (`http://proxy.corp:3128`), except hosts in `NO_PROXY`.
    Via(Url),
}

/// The egress proxy that requests to `url` go through, as `scheme://host:port` (never its
/// credentials), for messages about a failure to reach `url`.
pub fn egress_for(egress: &Egress, url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let via = egress_matcher(egress).intercept(&uri)?;
    let via = via.uri();
    Some(format!("{}://{}", via.scheme_str().unwrap_or("http"), via.authority()?.as_str().rsplit('@').next()?))
}

/// The egress route as hyper-util's matcher: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
/// `NO_PROXY` from the environment; nothing; or one proxy for all, except hosts in `NO_PROXY`.
pub fn egress_matcher(egress: &Egress) -> Matcher {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<Outbound> {
        let mut request = Request::new(Either::Left(Full::new(Bytes::new())));
        *request.uri_mut() = Uri::try_from(uri).unwrap();
        request
    }

    fn host(request: &Request<Outbound>) -> Option<&str> {
        request.headers().get(HOST).map(|h| h.to_str().unwrap())
    }

    #[test]
    fn host_names_the_port_only_when_it_is_not_the_schemes_own() {
        for (uri, expected) in [
            ("https://as1.awmdm.com/api", "as1.awmdm.com"),
            ("https://as1.awmdm.com:443/api", "as1.awmdm.com"),
            ("https://as1.awmdm.com:8443/api", "as1.awmdm.com:8443"),
            ("http://127.0.0.1:80/api", "127.0.0.1"),
            ("http://127.0.0.1:443/api", "127.0.0.1:443"),
            ("http://[::1]:8080/api", "[::1]:8080"),
        ] {
            let route = route(&Uri::try_from(uri).unwrap(), None);
            assert_eq!(route.host, expected, "{uri}");
            assert!(!route.absolute_form && route.proxy_authorization.is_none());
        }
    }

    #[test]
    fn http1_gets_the_origin_form_and_host_http2_the_absolute_form_without_host() {
        let direct = route(&Uri::from_static("https://api.example:8443/prefix"), None);
        let mut sent = request("https://api.example:8443/prefix/api/x?q=%7e&b=O'Brien");
        address(&mut sent, &direct, false);
        assert_eq!(sent.uri(), "/prefix/api/x?q=%7e&b=O'Brien");
        assert_eq!(host(&sent), Some("api.example:8443"));
        // Sent again on a connection that turned out HTTP/2, and back.
        address(&mut sent, &direct, true);
        assert_eq!(sent.uri(), "https://api.example:8443/prefix/api/x?q=%7e&b=O'Brien");
        assert_eq!(host(&sent), None);
        address(&mut sent, &direct, false);
        assert_eq!(sent.uri(), "/prefix/api/x?q=%7e&b=O'Brien");
        assert_eq!(host(&sent), Some("api.example:8443"));
    }

    #[test]
    fn the_egress_proxy_of_a_url_is_named_without_its_credentials() {
        let via = Egress::Via(url::Url::parse("http://corp%5Cuser:p%40ss@127.0.0.1:3128").unwrap());
        let named = egress_for(&via, "https://na1.uemauth.workspaceone.com/connect/token");
        assert_eq!(named.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(egress_for(&Egress::Direct, "https://na1.uemauth.workspaceone.com/connect/token"), None);
        assert_eq!(egress_for(&via, "not a url"), None);
    }

    #[test]
    fn plain_http_through_the_egress_proxy_keeps_the_absolute_form_and_carries_its_credentials() {
        let egress = Matcher::builder().all("http://corp%5Cuser:p%40ss@127.0.0.1:3128").build();
        let api = Uri::from_static("http://api.example/x");
        let via = route(&api, egress.intercept(&api).as_ref());
        assert!(via.absolute_form);
        let expected =
            format!("Basic {}", base64::Engine::encode(&base64::prelude::BASE64_STANDARD, "corp\\user:p@ss"));
        assert_eq!(via.proxy_authorization.as_ref().unwrap(), expected.as_str());
        let mut sent = request("http://api.example/x?y=1");
        address(&mut sent, &via, false);
        assert_eq!(sent.uri(), "http://api.example/x?y=1");
        assert_eq!(host(&sent), Some("api.example"));
    }
}
