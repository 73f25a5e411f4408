//! Body wrappers that keep bodies streaming while the proxy watches them: noticing the end of an
//! upload, bounding its size, and bounding pauses in a download.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sync_wrapper::SyncWrapper;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Ends a body with an error when its sender pauses longer than `idle` between two pieces, so a
/// stalled upstream cannot hold a caller, nor a stalled caller an upstream slot, forever.
///
/// Only time spent waiting for the sender counts: the clock starts when a piece is asked for and
/// is not there yet, so time the receiver takes (a slow caller reading a download, a request
/// waiting for its turn in the pacer) is never counted against the sender. A steady body of any
/// size and duration passes.
///
/// It also holds `keep` (the pacer's pass) until the body is done, so a request counts as in
/// flight to the upstream for as long as its response streams.
pub struct IdleTimeout<B, K = ()> {
    inner: B,
    idle: Duration,
    side: Side,
    /// Made at the first pause only: most bodies never pause, and a timer costs.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether `deadline` counts the current pause.
    armed: bool,
    _keep: K,
}

/// Whose body a pause limit watches, for the error it ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The upstream's response body.
    Upstream,
    /// The caller's request body.
    Caller,
}

impl<B, K> IdleTimeout<B, K> {
    /// Bounds pauses in an upstream's response body, holding `keep` until the body is done.
    pub fn new(inner: B, idle: Duration, keep: K) -> Self {
        IdleTimeout::watching(Side::Upstream, inner, idle, keep)
    }

    pub fn watching(side: Side, inner: B, idle: Duration, keep: K) -> Self {
        IdleTimeout { inner, idle, side, deadline: None, armed: false, _keep: keep }
    }
}

/// A sender paused too long inside a body.
#[derive(Debug)]
pub struct Paused {
    pub side: Side,
    pub idle: Duration,
}

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (who, body) = match self.side {
            Side::Upstream => ("upstream", "response"),
            Side::Caller => ("caller", "request"),
        };
        write!(f, "the {who} paused longer than {:?} inside the {body} body", self.idle)
    }
}

impl std::error::Error for Paused {}

impl Paused {
    /// The pause behind `error`, when that is what it is (looked for along its sources).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Paused> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(paused) = e.downcast_ref::<Paused>() {
                return Some(paused);
            }
            current = e.source();
        }
        None
    }
}

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
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.idle;
                let sleep = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    sleep.as_mut().reset(deadline);
                    this.armed = true;
                }
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(Paused { side: this.side, idle: this.idle }))))
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

/// A body whose first frame has already been read (to learn whether it breaks before anything is
/// sent), put back in front of the rest.
pub struct Primed<B> {
    first: Option<Frame<Bytes>>,
    rest: B,
}

impl<B> Primed<B> {
    pub fn new(first: Frame<Bytes>, rest: B) -> Self {
        Primed { first: Some(first), rest }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Primed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.first.as_ref().and_then(Frame::data_ref).map_or(0, |d| d.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// The bytes of request bodies held for replay, shared by all requests, so that the memory kept
/// for replays stays bounded however many callers there are and however slowly they send.
#[derive(Clone)]
pub struct ReplayBudget {
    bytes: Arc<Semaphore>,
    total: u64,
}

impl ReplayBudget {
    pub fn new(total: u64) -> ReplayBudget {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        ReplayBudget { bytes: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// A share of `len` bytes, held until dropped, when that much is left; never waits.
    pub fn take(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        let len = u32::try_from(len).ok()?;
        self.bytes.clone().try_acquire_many_owned(len).ok()
    }

    /// The bytes held now.
    pub fn held(&self) -> u64 {
        self.total - self.bytes.available_permits() as u64
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn only_the_senders_pauses_count_and_a_long_one_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        let idle = Duration::from_secs(1);
        let mut body = IdleTimeout::watching(Side::Caller, StreamBody::new(Box::pin(stream)), idle, ());
        // The receiver takes its time before asking: not a pause of the sender, whose clock
        // starts when a piece is asked for.
        tokio::time::advance(Duration::from_secs(5)).await;
        let first = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            first.send(Bytes::from_static(b"a")).await.unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        // Pauses just under the limit, however many, pass.
        for _ in 0..10 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from_static(b"b")).await.unwrap();
            });
            assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
        }
        let error = body.frame().await.unwrap().unwrap_err();
        let paused = Paused::find(&*error).expect("a pause");
        assert_eq!((paused.side, paused.idle), (Side::Caller, idle));
        assert_eq!(error.to_string(), "the caller paused longer than 1s inside the request body");
    }

    #[test]
    fn the_replay_budget_is_shared_and_returned_on_drop() {
        let budget = ReplayBudget::new(100);
        let first = budget.take(60).expect("fits");
        assert!(budget.take(60).is_none(), "40 left");
        let second = budget.take(40).expect("fits exactly");
        assert_eq!(budget.held(), 100);
        drop(first);
        assert_eq!(budget.held(), 40);
        drop(second);
        assert!(budget.take(u64::from(u32::MAX) + 1).is_none(), "more than a share can name");
        assert_eq!(budget.held(), 0);
    }
}
