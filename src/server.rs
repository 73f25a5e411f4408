//! The listener: accepts connections on TCP or a Unix socket, puts the framing guard in front of
//! each, serves it with hyper under header-size and header-time limits, and on shutdown stops
//! accepting and drains in-flight requests for a bounded time.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::config::Listen;
use crate::framing::Guarded;

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
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix(Some(uid)) => write!(f, "unix:uid={uid}"),
            Peer::Unix(None) => f.write_str("unix"),
        }
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
}

/// The most header fields a request may carry; more are answered 431 (by the framing guard).
pub const MAX_HEADERS: usize = crate::framing::MAX_FIELDS;

/// Marks requests that arrived over the HTTPS listener (for `Location` and body rewrites).
#[derive(Clone, Copy, Debug)]
pub struct Https;

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

/// Serves `app` on every listener until `shutdown` completes, then drains for at most `grace`.
pub async fn serve(
    bound: Vec<Bound>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // The framing guard enforces `max_header_bytes`; the parser's own limit is set well above
        // it so that it never refuses what the guard let through.
        .max_buf_size(limits.max_header_bytes.saturating_add(64 * 1024))
        .max_headers(MAX_HEADERS);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loops: Vec<_> = bound
        .into_iter()
        .map(|b| {
            let (http, graceful, app, mut stopped) = (http.clone(), graceful.clone(), app.clone(), stopped.clone());
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        accepted = accept(&b.listener) => accepted,
                        _ = stopped.wait_for(|s| *s) => break,
                    };
                    match accepted {
                        Ok((Stream::Tcp(stream), peer)) => {
                            let _ = stream.set_nodelay(true);
                            match &b.tls {
                                None => spawn_connection(&http, &graceful, stream, peer, app.clone(), limits, false),
                                Some(acceptor) => {
                                    let (acceptor, http, graceful, app) =
                                        (acceptor.clone(), http.clone(), graceful.clone(), app.clone());
                                    tokio::spawn(async move {
                                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                                        {
                                            Ok(Ok(tls)) => {
                                                spawn_connection(&http, &graceful, tls, peer, app, limits, true)
                                            }
                                            Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                        }
                                    });
                                }
                            }
                        }
                        Ok((Stream::Unix(stream), peer)) => {
                            spawn_connection(&http, &graceful, stream, peer, app.clone(), limits, false)
                        }
                        Err(error) => {
                            // Out of file descriptors and the like: wait rather than spin.
                            tracing::warn!(%error, "accept failed");
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
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("the accept loops have ended"));
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
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

fn spawn_connection<S>(
    http: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    stream: S,
    peer: Peer,
    app: Router,
    limits: Limits,
    https: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (guarded, refusals) = Guarded::new(stream, limits.max_header_bytes);
    let service_peer = peer.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let refused = refusals.next_request().map(|violation| crate::framing::refused(violation, &service_peer));
        req.extensions_mut().insert(service_peer.clone());
        if https {
            req.extensions_mut().insert(Https);
        }
        let app = app.clone();
        async move {
            match refused {
                Some(answer) => Ok(answer),
                None => app.oneshot(req.map(Body::new)).await,
            }
        }
    });
    let conn = graceful.watch(http.serve_connection(TokioIo::new(guarded), service));
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            let framing = std::error::Error::source(&error)
                .and_then(|e| e.downcast_ref::<io::Error>())
                .and_then(|e| e.get_ref())
                .and_then(|e| e.downcast_ref::<crate::framing::Violation>());
            match framing {
                Some(violation) => tracing::warn!(%peer, %violation, "connection refused"),
                None => tracing::debug!(%error, %peer, "connection ended with an error"),
            }
        }
    });
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
