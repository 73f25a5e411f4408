//! The pool of connections to the API: kept-alive HTTP/1.1 connections reused most recently used
//! first, or one multiplexed HTTP/2 connection per destination; checked before reuse, given back
//! only at the clean end of a response, closed after an idle time even when no request comes.
//!
//! Opening connections is not its business: the caller hands it an open one to
//! [`Pool::handshake`] (see `upstream::Connector`). Nothing here spawns a task per request or
//! hashes anything: a destination is found by comparing scheme and authority in a short list.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONNECTION;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

/// A kept-alive connection idle this long is closed, and never reused. Load balancers and servers
/// in front of an API close idle connections after their own timeout (AWS ALB 60 s, nginx 75 s,
/// IIS 120 s, Azure 4 min); a pool that keeps a connection longer meets that close as it sends a
/// request, and a request already written then cannot be sent again unless it is a read. 30 s is
/// well below all of them and still spans the pauses of a script working through a list.
pub const IDLE: Duration = Duration::from_secs(30);

/// At most this many idle connections are kept per destination: enough for the concurrency the
/// proxy serves without reconnecting, while a burst of thousands of callers does not leave as many
/// idle connections (and their TLS buffers) behind.
pub const MAX_IDLE: usize = 256;

/// How long connections are kept and how many.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// See [`IDLE`].
    pub idle: Duration,
    /// Idle connections kept per destination; see [`MAX_IDLE`].
    pub max_idle: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { idle: IDLE, max_idle: MAX_IDLE }
    }
}

/// The pool, generic over the request body `B` and the constants `R` the caller keeps per
/// destination (built once, on the first request to it). Cloning is cheap and shares it; the
/// sweep that closes expired connections stops when the last clone goes.
pub struct Pool<B, R> {
    shared: Arc<Shared<B, R>>,
    _sweep: Arc<Sweep>,
}

impl<B, R> Clone for Pool<B, R> {
    fn clone(&self) -> Self {
        Pool { shared: self.shared.clone(), _sweep: self._sweep.clone() }
    }
}

struct Shared<B, R> {
    /// Never shrinks: destinations are few (the API host; later one per tenant), and a
    /// [`Destination`] names one by its index.
    dests: Mutex<Vec<Dest<B, R>>>,
    settings: Settings,
}

struct Dest<B, R> {
    scheme: Scheme,
    authority: Authority,
    route: Arc<R>,
    /// Idle HTTP/1 connections, the most recently used at the back.
    idle: VecDeque<Idle<B>>,
    /// The HTTP/2 connection, when the destination chose HTTP/2 by ALPN, and when it last got
    /// a request.
    h2: Option<(http2::SendRequest<B>, Instant)>,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// One destination (scheme and authority) of the pool, and its constants.
pub struct Destination<R> {
    index: usize,
    pub route: Arc<R>,
}

/// A connection to send one request on.
pub enum Sender<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

impl<B> Sender<B> {
    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }
}

/// The sweep task that closes expired connections; aborted when the pool goes.
struct Sweep(Option<tokio::task::AbortHandle>);

impl Drop for Sweep {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl<B, R> Shared<B, R> {
    fn lock(&self) -> MutexGuard<'_, Vec<Dest<B, R>>> {
        // Nothing panics while holding it; and a list of connections stays usable if it did.
        self.dests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connections idle for `settings.idle` or longer, and forgets closed ones.
    fn expire(&self, now: Instant) {
        let idle = self.settings.idle;
        for dest in self.lock().iter_mut() {
            dest.idle.retain(|c| now.saturating_duration_since(c.since) < idle && !c.sender.is_closed());
            if dest.h2.as_ref().is_some_and(|(s, used)| s.is_closed() || now.saturating_duration_since(*used) >= idle) {
                dest.h2 = None;
            }
        }
    }

    /// Takes back an HTTP/1 connection whose exchange ended cleanly.
    fn put(&self, index: usize, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        let mut dests = self.lock();
        let idle = &mut dests[index].idle;
        if idle.len() >= self.settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since });
    }
}

impl<B, R> Dest<B, R> {
    /// The connection to use now: the HTTP/2 one, or the most recently used idle HTTP/1 one
    /// that is open, younger than `idle` and ready for a request (one whose response ended
    /// while its request body is still being written is not; it stays for later).
    fn take(&mut self, now: Instant, idle: Duration) -> Option<Sender<B>> {
        if let Some((sender, used)) = &mut self.h2 {
            if !sender.is_closed() && now.saturating_duration_since(*used) < idle {
                *used = now;
                return Some(Sender::Http2(sender.clone()));
            }
            self.h2 = None;
        }
        let mut i = self.idle.len();
        while i > 0 {
            i -= 1;
            let c = &self.idle[i];
            if now.saturating_duration_since(c.since) >= idle {
                // The older ones below are expired as well.
                self.idle.drain(..=i);
                return None;
            }
            if c.sender.is_closed() {
                self.idle.remove(i);
            } else if c.sender.is_ready() {
                return self.idle.remove(i).map(|c| Sender::Http1(c.sender));
            }
        }
        None
    }
}

impl<B, R> Pool<B, R>
where
    B: Send + 'static,
    R: Send + Sync + 'static,
{
    /// An empty pool. Inside a Tokio runtime it starts its sweep, which closes connections at
    /// most `settings.idle / 2` after they expire; outside one (commands that never forward),
    /// expired connections are only ever dropped when a request meets them.
    pub fn new(settings: Settings) -> Pool<B, R> {
        let shared = Arc::new(Shared { dests: Mutex::new(Vec::new()), settings });
        let sweep = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(sweep(Arc::downgrade(&shared), settings.idle / 2)).abort_handle());
        Pool { shared, _sweep: Arc::new(Sweep(sweep)) }
    }
}

/// Every `every`, closes what expired; ends when the pool is gone.
async fn sweep<B, R>(shared: Weak<Shared<B, R>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.expire(Instant::now());
    }
}

impl<B, R> Pool<B, R>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// The destination of `uri` (absolute: `None` without scheme or authority), its constants
    /// (`route` is called on the first request to it), and a connection to reuse, if one is
    /// healthy: open, not expired, and ready for a request.
    pub fn checkout(&self, uri: &Uri, route: impl FnOnce() -> R) -> Option<(Destination<R>, Option<Sender<B>>)> {
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        let now = Instant::now();
        let idle = self.shared.settings.idle;
        let mut dests = self.shared.lock();
        let index = match dests.iter().position(|d| d.authority == *authority && d.scheme == *scheme) {
            Some(index) => index,
            None => {
                let route = Arc::new(route());
                dests.push(Dest {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    route,
                    idle: VecDeque::new(),
                    h2: None,
                });
                dests.len() - 1
            }
        };
        let dest = &mut dests[index];
        let conn = dest.take(now, idle);
        Some((Destination { index, route: dest.route.clone() }, conn))
    }

    /// Starts HTTP/1.1 or (`http2`, as ALPN chose) HTTP/2 on `io`, with the connection driven
    /// by a task of its own that ends when the connection does. An HTTP/2 connection becomes the
    /// destination's for the requests that follow.
    pub async fn handshake<T>(&self, dest: &Destination<R>, io: T, http2: bool) -> hyper::Result<Sender<B>>
    where
        T: Read + Write + Send + Unpin + 'static,
    {
        if http2 {
            let (sender, conn) =
                http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(io).await?;
            tokio::spawn(driven(conn, "an HTTP/2 connection to the API failed"));
            self.shared.lock()[dest.index].h2 = Some((sender.clone(), Instant::now()));
            return Ok(Sender::Http2(sender));
        }
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(driven(conn, "an HTTP/1 connection to the API failed"));
        Ok(Sender::Http1(sender))
    }

    /// Sends `request` on `conn`. The request comes back in the error when it was certainly not
    /// written (the connection closed first). An HTTP/1 connection returns to the pool when the
    /// response's body has ended cleanly, if the API keeps it alive.
    pub fn send(
        &self,
        dest: &Destination<R>,
        conn: Sender<B>,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<ResponseBody<B, R>>, TrySendError<Request<B>>>> + use<B, R> {
        let shared = self.shared.clone();
        let index = dest.index;
        async move {
            match conn {
                Sender::Http2(mut sender) => {
                    let response = sender.try_send_request(request).await?;
                    Ok(response.map(|body| ResponseBody { inner: body, ended: false, giveback: None }))
                }
                Sender::Http1(mut sender) => {
                    let response = sender.try_send_request(request).await?;
                    let pool = keeps_alive(response.version(), response.headers()).then_some(shared);
                    let (parts, body) = response.into_parts();
                    let mut body =
                        ResponseBody { inner: body, ended: false, giveback: Some(Giveback { pool, index, sender }) };
                    if body.inner.is_end_stream() {
                        // HEAD, 204, 304, `Content-Length: 0`: nothing more will be read.
                        body.finish();
                    }
                    Ok(Response::from_parts(parts, body))
                }
            }
        }
    }
}

/// Whether the API keeps an HTTP/1 connection open after this response: HTTP/1.1 without
/// `Connection: close`. HTTP/1.0 answers are not pooled, `keep-alive` or not.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11 && !crate::listen::lists_token(headers, CONNECTION, b"close")
}

/// Where an HTTP/1 connection goes when its response has been read: back to the pool (`pool`),
/// or, when the API closes it, nowhere. Dropped before that, it closes the connection.
struct Giveback<B, R> {
    pool: Option<Arc<Shared<B, R>>>,
    index: usize,
    sender: http1::SendRequest<B>,
}

/// A response body from the API. It tracks the end itself (hyper's own `is_end_stream` stays
/// false after a chunked body's last chunk): the declared length reached or the last frame read,
/// the connection returns to the pool at once. A body that fails or is dropped before its end
/// loses its connection, which hyper then closes.
pub struct ResponseBody<B, R> {
    inner: Incoming,
    ended: bool,
    giveback: Option<Giveback<B, R>>,
}

impl<B, R> ResponseBody<B, R> {
    fn finish(&mut self) {
        self.ended = true;
        if let Some(Giveback { pool: Some(pool), index, sender }) = self.giveback.take() {
            pool.put(index, sender);
        }
    }
}

impl<B, R> Body for ResponseBody<B, R> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.giveback = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

/// A connection driven to its end, its failure logged as `failed`. A task lives as long as its
/// connection, idle ones included, and one awaiting the connection inside an `async` block would
/// hold it twice (as captured and as awaited: 664 bytes each for HTTP/1).
fn driven<C, E>(conn: C, failed: &'static str) -> impl Future<Output = ()> + Send + 'static
where
    C: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    futures_util::FutureExt::map(conn, move |result| {
        if let Err(error) = result {
            tracing::debug!(%error, "{failed}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A connection's task holds the connection once.
    #[test]
    fn a_driven_connection_is_held_once() {
        let state = [7u8; 1024];
        let conn = async move {
            std::hint::black_box(&state);
            Ok::<(), std::io::Error>(())
        };
        let size = std::mem::size_of_val(&conn);
        let task = driven(conn, "failed");
        assert!(
            std::mem::size_of_val(&task) <= size + 32,
            "{} bytes for a {size}-byte connection",
            std::mem::size_of_val(&task)
        );
    }

    fn headers(connection: &[&'static str]) -> HeaderMap {
        connection.iter().map(|v| (CONNECTION, HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn an_http_1_1_answer_keeps_its_connection_unless_it_says_close() {
        assert!(keeps_alive(Version::HTTP_11, &headers(&[])));
        assert!(keeps_alive(Version::HTTP_11, &headers(&["keep-alive"])));
        assert!(keeps_alive(Version::HTTP_11, &headers(&["closed, x-close"])));
        assert!(!keeps_alive(Version::HTTP_11, &headers(&["close"])));
        assert!(!keeps_alive(Version::HTTP_11, &headers(&["Keep-Alive , CLOSE"])));
        assert!(!keeps_alive(Version::HTTP_11, &headers(&["x-a", " Close "])));
        assert!(!keeps_alive(Version::HTTP_10, &headers(&["keep-alive"])));
        assert!(!keeps_alive(Version::HTTP_10, &headers(&[])));
    }
}
