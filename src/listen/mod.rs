//! The listener: accepts connections on TCP or a Unix socket within the connection cap
//! ([`conns`]), puts the framing guard in front of each, serves it with hyper under header-size
//! and header-time limits and a bound on stalled writes ([`idle`]), and on shutdown stops
//! accepting and drains in-flight requests for a bounded time. A request's body is read through
//! [`intake`], which counts it and does not leave it half read on a connection that is kept.

pub mod conns;
pub mod framing;
pub mod idle;
pub mod intake;
pub mod tls;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use conns::{Connections, Counts};
use conns::{LogThrottle, Slot, Tracked};
use framing::Guarded;
use idle::WriteIdle;

/// Whether one of `headers`' `name` fields lists `token` (a comma-separated list, as `Connection`
/// and `Expect` are), in any letter case.
pub fn lists_token(headers: &http::HeaderMap, name: http::header::HeaderName, token: &[u8]) -> bool {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|listed| listed.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where the proxy accepts callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    /// A Unix socket, created owner-only (for sidecars sharing a volume).
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Who is calling, as the access log names them.
#[derive(Clone, Debug)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix-socket peer and its user id, when the system tells it.
    Unix(Option<u32>),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Every access line names its peer: written without the general formatter's detour
            // through a padded buffer, the same text.
            Peer::Tcp(SocketAddr::V4(addr)) => f.write_str(ipv4_text(addr).as_str()),
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix(Some(uid)) => write!(f, "unix:uid={uid}"),
            Peer::Unix(None) => f.write_str("unix"),
        }
    }
}

/// `a.b.c.d:port`, as `SocketAddrV4` displays it.
pub fn ipv4_text(addr: &std::net::SocketAddrV4) -> Ipv4Text {
    let mut text = Ipv4Text { bytes: [0; 21], len: 0 };
    let mut push = |n: u32, dot: u8| {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &b in &digits[i..] {
            text.bytes[text.len] = b;
            text.len += 1;
        }
        if dot != 0 {
            text.bytes[text.len] = dot;
            text.len += 1;
        }
    };
    let [a, b, c, d] = addr.ip().octets();
    push(a.into(), b'.');
    push(b.into(), b'.');
    push(c.into(), b'.');
    push(d.into(), b':');
    push(addr.port().into(), 0);
    text
}

/// The text of an IPv4 socket address, without allocating.
pub struct Ipv4Text {
    bytes: [u8; 21],
    len: usize,
}

impl Ipv4Text {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("digits, dots and a colon are ASCII")
    }
}

/// A bound listener of either kind.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Listener {
    pub async fn bind(listen: &Listen) -> io::Result<Listener> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp),
            Listen::Unix(path) => bind_unix(path),
        }
    }

    /// Where it listens, as a user would write it in `UEM_PROXY_LISTEN`.
    pub fn local(&self) -> io::Result<Listen> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Listen::Tcp),
            Listener::Unix(_, file) => Ok(Listen::Unix(file.0.clone())),
        }
    }
}

/// The socket file of a Unix listener, removed when the listener goes.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket that only its owner can connect to. The socket is created in a private
/// directory, restricted, then moved into place, so it is never reachable with looser rights.
fn bind_unix(path: &Path) -> io::Result<Listener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists and is not a socket"));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process listens on this socket"));
        }
        std::fs::remove_file(path)?;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(".uem-proxy-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("socket");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound.map(|listener| Listener::Unix(listener, SocketFile(path.to_path_buf())))
}

/// Limits on what a caller's connection may send before a request is handled.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection must deliver a complete request head within this time of connecting or of
    /// its previous response (slow senders and idle keep-alive connections are closed).
    pub header_timeout: Duration,
    /// The largest request head; larger ones are answered 431.
    pub max_header_bytes: usize,
    /// A write to a caller that makes no progress for this long closes the connection.
    pub write_idle_timeout: Duration,
    /// Caller connections at once, over all listeners.
    pub max_connections: usize,
}

impl Limits {
    /// The connection cap: `configured`, or the open-file limit less a reserve.
    pub fn max_connections(configured: Option<usize>) -> usize {
        let open_files = conns::open_file_limit();
        match (configured, open_files) {
            (Some(max), Some(open_files)) => {
                if max as u64 > open_files - conns::reserve(open_files) {
                    tracing::warn!(
                        max_connections = max,
                        open_files,
                        "max_connections leaves too few file descriptors for upstream connections and files"
                    );
                }
                max
            }
            (Some(max), None) => max,
            (None, Some(open_files)) => conns::automatic_cap(open_files),
            (None, None) => conns::automatic_cap(1 << 20),
        }
    }
}

/// The most header fields a request may carry; more are answered 431 (by the framing guard).
pub const MAX_HEADERS: usize = framing::MAX_FIELDS;

/// What answers the requests of every connection: called once per request with the caller's
/// address and whether it came over the HTTPS listener.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(
        self,
        req: http::Request<Incoming>,
        peer: Peer,
        https: bool,
    ) -> impl Future<Output = Response> + Send + 'static;
}

/// A plain router (the sandbox's) learns the caller from the request's extensions.
impl Handler for axum::Router {
    fn call(
        self,
        mut req: http::Request<Incoming>,
        peer: Peer,
        _https: bool,
    ) -> impl Future<Output = Response> + Send + 'static {
        req.extensions_mut().insert(peer);
        async move {
            match tower::ServiceExt::oneshot(self, req.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

/// A listener and, for the HTTPS listener, its TLS acceptor.
pub struct Bound {
    pub listener: Listener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl From<Listener> for Bound {
    fn from(listener: Listener) -> Self {
        Bound { listener, tls: None }
    }
}

/// Serves every listener with its handler until `shutdown` completes, then drains for at most
/// `grace`. The listeners share the connection cap; `counts` receives the connection figures for
/// the metrics.
pub async fn serve<H: Handler>(
    bound: Vec<(Bound, H)>,
    limits: Limits,
    counts: Arc<Counts>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let connections = Connections::new(limits.max_connections, counts);
    tracing::debug!(max_connections = limits.max_connections, "connection cap");
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timeout is kept by the connections' sweep, not by a timer per request.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        // The framing guard enforces `max_header_bytes`; the parser's own limit is set well above
        // it so that it never refuses what the guard let through.
        .max_buf_size(limits.max_header_bytes.saturating_add(64 * 1024))
        .max_headers(MAX_HEADERS);
    let sweep = tokio::spawn(connections.clone().sweep(limits.header_timeout));
    let (stop, stopped) = watch::channel(false);
    let accept_errors = Arc::new(std::sync::Mutex::new(LogThrottle::new(Duration::from_secs(1))));
    let loops: Vec<_> = bound
        .into_iter()
        .map(|(b, app)| {
            let (http, connections, accept_errors) = (http.clone(), connections.clone(), accept_errors.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    // Accepted first, admitted second: only a caller actually waiting sheds an
                    // idle connection, and while it waits for room this listener accepts no more.
                    let admitted = async {
                        let accepted = accept(&b.listener).await?;
                        Ok::<_, io::Error>((connections.admit().await, accepted))
                    };
                    let admitted = tokio::select! {
                        admitted = admitted => admitted,
                        _ = stopped.wait_for(|s| *s) => break,
                    };
                    let accepted = admitted.map(|(permit, accepted)| {
                        let slot = connections.open(permit);
                        (
                            Conn { http: http.clone(), stopped: stopped.clone(), slot, app: app.clone(), limits },
                            accepted,
                        )
                    });
                    match accepted {
                        Ok((conn, (Stream::Tcp(stream), peer))) => {
                            let _ = stream.set_nodelay(true);
                            match &b.tls {
                                None => conn.spawn(stream, peer, false),
                                Some(acceptor) => conn.spawn_tls(acceptor.clone(), stream, peer),
                            }
                        }
                        Ok((conn, (Stream::Unix(stream), peer))) => conn.spawn(stream, peer, false),
                        Err(error) => {
                            // Out of file descriptors and the like: say so once a second, and
                            // wait rather than spin.
                            let allowed = accept_errors.lock().expect("not poisoned").allow(std::time::Instant::now());
                            if let Some(suppressed) = allowed {
                                tracing::warn!(%error, suppressed, "accept failed");
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
        .collect();
    shutdown.await;
    let _ = stop.send(true);
    for accept_loop in loops {
        let _ = accept_loop.await;
    }
    tracing::info!(grace_s = grace.as_secs(), "shutting down: no new connections; draining");
    tokio::select! {
        () = connections.closed() => tracing::info!("drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    sweep.abort();
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, Peer)> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, addr)| (Stream::Tcp(s), Peer::Tcp(addr))),
        Listener::Unix(l, _) => {
            let (stream, _) = l.accept().await?;
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            Ok((Stream::Unix(stream), Peer::Unix(uid)))
        }
    }
}

/// What serving one admitted connection needs.
struct Conn<H> {
    http: hyper::server::conn::http1::Builder,
    /// Becomes `true` when the proxy shuts down.
    stopped: watch::Receiver<bool>,
    slot: Arc<Slot>,
    app: H,
    limits: Limits,
}

impl<H: Handler> Conn<H> {
    /// Serves the connection in a task of its own. It closes, once between requests, when the
    /// proxy shuts down or the connection cap needs its place; and at once when a write to the
    /// caller stalls. A request the framing guard refused is answered here, in its turn.
    fn spawn<S>(self, stream: S, peer: Peer, https: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(self.serving(stream, peer, https));
    }

    /// Serves a connection to the HTTPS listener once its TLS handshake, bounded by the header
    /// timeout, is done. A connection still shaking hands counts as idle: at the cap it may be
    /// the one asked to make room, and at shutdown it holds up no drain; it goes at once rather
    /// than when its handshake ends.
    fn spawn_tls(self, acceptor: tokio_rustls::TlsAcceptor, stream: tokio::net::TcpStream, peer: Peer) {
        let mut stopping = self.stopped.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
            let outcome = tokio::select! {
                outcome = handshake => outcome,
                () = self.slot.shed.notified() => {
                    tracing::debug!(%peer, "TLS handshake cut: the connection cap needs its place");
                    return;
                }
                _ = stopping.wait_for(|s| *s) => {
                    tracing::debug!(%peer, "TLS handshake cut: the proxy is shutting down");
                    return;
                }
            };
            match outcome {
                Ok(Ok(tls)) => {
                    self.slot.idle_from_now();
                    self.spawn(tls, peer, true);
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }

    /// The connection's task. Its future is kept for the connection's whole life, idle or busy.
    fn serving<S>(self, stream: S, peer: Peer, https: bool) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { http, mut stopped, slot, app, limits } = self;
        let stream = WriteIdle::new(stream, limits.write_idle_timeout);
        let (guarded, refusals) = Guarded::new(stream, limits.max_header_bytes);
        let service_peer = peer.clone();
        let service_slot = slot.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let busy = service_slot.busy();
            let answer = match refusals.next_request() {
                Some(violation) => Either::Left(std::future::ready(framing::refused(violation, &service_peer))),
                None => Either::Right(app.clone().call(req, service_peer.clone(), https)),
            };
            async move {
                let response = answer.await;
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, busy)))
            }
        });
        // Boxed: pinned inside the task's future, hyper's connection (about 1 KiB, 2 KiB over
        // TLS) would be stored there twice, as captured and as pinned.
        let mut conn = Box::pin(http.serve_connection(TokioIo::new(guarded), service));
        async move {
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = slot.expired.notified() => {
                    tracing::debug!(%peer, "no complete request head within the header timeout: connection closed");
                    Ok(())
                }
                () = async {
                    tokio::select! {
                        () = slot.shed.notified() => {},
                        _ = stopped.wait_for(|s| *s) => {},
                    }
                } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            drop(slot);
            if let Err(error) = result {
                let io = std::error::Error::source(&error).and_then(|e| e.downcast_ref::<io::Error>());
                let cause = io.and_then(|e| e.get_ref());
                if let Some(violation) = cause.and_then(|e| e.downcast_ref::<framing::Violation>()) {
                    tracing::warn!(%peer, %violation, "connection refused");
                } else if let Some(stalled) = cause.and_then(|e| e.downcast_ref::<idle::Stalled>()) {
                    tracing::info!(%peer, error = %stalled, "caller stopped reading: connection closed");
                } else {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
            }
        }
    }
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task lives as long as the connection, idle ones included: a thousand idle
    /// callers cost a thousand times its size (2 296 bytes here when it held hyper's connection
    /// twice).
    #[tokio::test]
    async fn the_task_kept_for_each_connection_stays_small() {
        let connections = Connections::new(8, Arc::default());
        let slot = connections.open(connections.admit().await);
        let (_stop, stopped) = watch::channel(false);
        let limits = Limits {
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 65536,
            write_idle_timeout: Duration::from_secs(30),
            max_connections: 8,
        };
        let http = hyper::server::conn::http1::Builder::new();
        let conn = Conn { http, stopped, slot, app: axum::Router::new(), limits };
        let (stream, _peer_end) = tokio::io::duplex(64);
        let serving = conn.serving(stream, Peer::Unix(None), false);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1024, "{size} bytes");
    }
}
