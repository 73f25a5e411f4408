//! Body wrappers that keep bodies streaming while the proxy watches them: counting bytes,
//! noticing the end of an upload, and bounding pauses in a download.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sync_wrapper::SyncWrapper;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Adds the size of every data frame to a shared counter, for the access log.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            self.count.fetch_add(data.map_or(0, |d| d.len() as u64), Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A caller's request body on its way upstream. Says when it has been read to its end, so the
/// upstream's time to answer is counted from then and not from the start of a long upload; and is
/// `Sync`, as the HTTP client requires, without the body having to be.
pub struct Upload<B> {
    inner: SyncWrapper<B>,
    size_hint: SizeHint,
    finished: Option<oneshot::Sender<()>>,
    /// The most bytes allowed; `None` for no limit.
    limit: Option<u64>,
    sent: u64,
}

/// A request body went past the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct TooLarge(pub u64);

impl<B: Body> Upload<B> {
    /// The body, and a receiver that completes when the body ends (or is dropped unfinished).
    /// A body longer than `limit` ends in a [`TooLarge`] error.
    pub fn new(inner: B, limit: Option<u64>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let size_hint = inner.size_hint();
        let upload = Upload { inner: SyncWrapper::new(inner), size_hint, finished: Some(tx), limit, sent: 0 };
        (upload, rx)
    }
}

impl<B> Body for Upload<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(self.inner.get_mut()).poll_frame(cx));
        if frame.is_none() {
            self.finished.take().map(|tx| tx.send(()));
        }
        if let Some(Ok(frame)) = &frame {
            self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            if let Some(limit) = self.limit.filter(|limit| self.sent > *limit) {
                return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn size_hint(&self) -> SizeHint {
        // Taken at the start: `SyncWrapper` gives no shared access to the body.
        self.size_hint
    }
}

/// Ends a response body with an error when the upstream pauses longer than `idle` between two
/// pieces, so a stalled upstream cannot hold a caller forever.
///
/// It also holds `keep` (the pacer's pass) until the body is done, so a request counts as in
/// flight to the upstream for as long as its response streams.
pub struct IdleTimeout<B, K = ()> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _keep: K,
}

impl<B, K> IdleTimeout<B, K> {
    pub fn new(inner: B, idle: Duration, keep: K) -> Self {
        IdleTimeout { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), _keep: keep }
    }
}

/// The upstream paused too long inside a response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream paused longer than {0:?} inside the response body")]
pub struct IdleTimeoutError(Duration);

impl<B, K: Unpin> Body for IdleTimeout<B, K>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.as_mut().reset(Instant::now() + this.idle);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
