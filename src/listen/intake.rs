//! A caller's request body as the proxy reads it: counted for the record, and never left half
//! read on a connection that is to carry another request.
//!
//! An answer can come before the body is read: a refusal, a denial, a limit, an upstream error.
//! hyper then throws away what it has already buffered of the body and, if more is due, closes
//! the connection after the answer, without saying so. A client that sends its next request on
//! that connection (a pipelining one, or a script's pooled connection) loses it. So what is left
//! of a body dropped before its end waits in its [`Intake`] for the answer, which decides with
//! [`Intake::answered`]: read it to its end in the background, or leave it, and say
//! `Connection: close`. It is read only when at most [`DRAIN_LIMIT`] bytes are due by
//! `Content-Length`, the caller is not waiting for `100 Continue`, the request keeps its
//! connection alive, the caller's address is let in, and fewer than [`MAX_DRAINS`] others are
//! being read.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http::header::{CONNECTION, EXPECT};
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The most bytes still due that a dropped body is read to its end for. More is not worth
/// reading to keep one connection: the answer says `Connection: close` instead.
pub const DRAIN_LIMIT: u64 = 1024 * 1024;

/// How long reading a dropped body to its end may take; a caller slower than this loses its
/// connection, as it would have without the reading.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The most bodies read to their ends at once, in the whole process: each holds its
/// connection's read buffer, which grows as a body arrives quickly. Over hyper's 16 requests a
/// connection serves before it gives way to other tasks, so that one pipelining caller, whose
/// bodies are read a turn later, cannot take them all.
pub const MAX_DRAINS: usize = 64;

/// Bodies being read to their ends now.
static DRAINING: AtomicUsize = AtomicUsize::new(0);

/// What is left of a body dropped before its end, whatever its type.
type Rest = Box<dyn Body<Data = Bytes, Error = ()> + Send + Unpin>;

/// What the service and the record learn of a request body as it is read.
pub struct Intake {
    bytes: AtomicU64,
    /// Read to its end (or to an error, after which hyper closes the connection).
    done: AtomicBool,
    /// Its length by `Content-Length`; `None` when chunked.
    declared: Option<u64>,
    /// The request lets its connection carry another (HTTP/1.1 without `Connection: close`,
    /// or HTTP/1.0 with `keep-alive`).
    keeps_alive: bool,
    /// The count of places taken to read bodies to their ends: [`DRAINING`], or a test's own.
    places: &'static AtomicUsize,
    fate: Mutex<Fate>,
}

enum Fate {
    /// Being read, read to its end, or not dropped yet.
    Open,
    /// Dropped before its end, before the answer, with this many bytes declared and not read;
    /// `bool`: the caller waited for `100 Continue`, which reading it now would send after the
    /// answer.
    Left(Rest, Option<u64>, bool),
    /// The answer has been decided; what is dropped now is read to its end in this place, if
    /// there is one (taken when the answer was, so that it cannot be missing then).
    Answered(Option<Place>),
}

impl Intake {
    /// The body's bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Called once the answer is ready, before it is sent. `closing`: the answer already says
    /// `Connection: close`; `let_in`: the caller's address may call (a body from any other is
    /// never read). True when the answer must say `Connection: close`: what is left of the body
    /// will not be read, so hyper will close the connection.
    pub fn answered(&self, closing: bool, let_in: bool) -> bool {
        let may_drain = let_in && !closing && self.keeps_alive;
        let mut fate = self.fate.lock().unwrap_or_else(|e| e.into_inner());
        let (close, later) = match std::mem::replace(&mut *fate, Fate::Answered(None)) {
            _ if closing => (false, None),
            Fate::Left(rest, due, awaited) => {
                let drained =
                    may_drain && !awaited && small(due) && Place::take(self.places).is_some_and(|p| drain(rest, p));
                (!drained, None)
            }
            // Still being read: an upload in flight when the API answered early. What it drops
            // later must be readable then, or the connection closes without a word.
            Fate::Open if self.done.load(Ordering::Relaxed) => (false, None),
            Fate::Open => {
                let due = self.declared.map(|n| n.saturating_sub(self.bytes()));
                let place = (may_drain && small(due)).then(|| Place::take(self.places)).flatten();
                (place.is_none(), place)
            }
            Fate::Answered(place) => (false, place),
        };
        *fate = Fate::Answered(later);
        close
    }

    /// A body dropped before its end, with `due` bytes of it declared and not read: left for
    /// the answer, or read to its end now if the answer has gone and allows it.
    fn leave(&self, rest: Rest, due: Option<u64>, awaited: bool) {
        let mut fate = self.fate.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *fate {
            Fate::Answered(place) => {
                let place = place.take();
                drop(fate);
                if let Some(place) = place.filter(|_| !awaited && small(due)) {
                    drain(rest, place);
                }
            }
            _ => *fate = Fate::Left(rest, due, awaited),
        }
    }
}

/// At most [`DRAIN_LIMIT`] bytes are due, by `Content-Length`.
fn small(due: Option<u64>) -> bool {
    due.is_some_and(|n| n <= DRAIN_LIMIT)
}

/// A caller's request body, reporting to its [`Intake`].
pub struct CallerBody<B: Body<Data = Bytes> + Send + Unpin + 'static> {
    /// `None` only once dropped.
    inner: Option<B>,
    intake: Arc<Intake>,
    /// The caller waits for `100 Continue` before it sends the body; hyper sends that the first
    /// time the body is read, while no answer has started.
    awaits_continue: bool,
}

impl<B: Body<Data = Bytes> + Send + Unpin + 'static> CallerBody<B> {
    /// The body of a request with this head, and what it reports to.
    pub fn new(inner: B, head: &Parts) -> (Self, Arc<Intake>) {
        Self::placed_in(inner, head, &DRAINING)
    }

    /// [`CallerBody::new`], with the places to read bodies to their ends counted in `places`.
    fn placed_in(inner: B, head: &Parts, places: &'static AtomicUsize) -> (Self, Arc<Intake>) {
        let lists = |name, token| super::lists_token(&head.headers, name, token);
        // Any one of them: hyper heeds one, and which is its own affair.
        let awaits_continue = lists(EXPECT, b"100-continue");
        let keeps_alive = !lists(CONNECTION, b"close")
            && match head.version {
                Version::HTTP_11 => true,
                Version::HTTP_10 => lists(CONNECTION, b"keep-alive"),
                _ => false,
            };
        let intake = Arc::new(Intake {
            bytes: AtomicU64::new(0),
            done: AtomicBool::new(false),
            declared: inner.size_hint().exact(),
            keeps_alive,
            places,
            fate: Mutex::new(Fate::Open),
        });
        (CallerBody { inner: Some(inner), intake: intake.clone(), awaits_continue }, intake)
    }
}

impl<B: Body<Data = Bytes> + Send + Unpin + 'static> Body for CallerBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        // Asked for, the body is on its way: hyper has sent `100 Continue` if it was awaited.
        self.awaits_continue = false;
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    self.intake.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.is_end_stream()
                }
                // Trailers come last: a reader may stop at them without asking for the end.
                None => frame.is_trailers(),
            },
            // An error ends the body as surely as its end does: hyper closes the connection.
            Some(Err(_)) | None => true,
        };
        if ended {
            self.intake.done.store(true, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body<Data = Bytes> + Send + Unpin + 'static> Drop for CallerBody<B> {
    fn drop(&mut self) {
        let Some(rest) = self.inner.take() else { return };
        if self.intake.done.load(Ordering::Relaxed) || rest.is_end_stream() {
            return;
        }
        let due = rest.size_hint().exact();
        self.intake.leave(Box::new(rest.map_err(|_| ())), due, self.awaits_continue);
    }
}

/// One of the [`MAX_DRAINS`] places for reading a body to its end; given back when dropped.
struct Place(&'static AtomicUsize);

impl Place {
    /// A place counted in `taken`, unless all are taken.
    fn take(taken: &'static AtomicUsize) -> Option<Place> {
        let place = Place(taken);
        (taken.fetch_add(1, Ordering::Relaxed) < MAX_DRAINS).then_some(place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads a body to its end and throws it away, for at most [`DRAIN_TIME`], on a task of its own
/// that holds `place`. False when there is no runtime to read it on.
fn drain(mut rest: Rest, place: Place) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
    let reading = async move {
        let _place = place;
        let reading = async { while let Some(Ok(_)) = rest.frame().await {} };
        if tokio::time::timeout(DRAIN_TIME, reading).await.is_err() {
            tracing::debug!("a request body left behind by its answer was not read to its end in time");
        }
    };
    // In the request's span, where there is one: its line names the request.
    runtime.spawn(tracing::Instrument::in_current_span(reading));
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use http::{HeaderMap, Request};
    use http_body_util::{Empty, Full, StreamBody};

    use super::*;

    /// The head of a request with these headers.
    fn head(version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().version(version);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn plain() -> Parts {
        head(Version::HTTP_11, &[])
    }

    /// A body of `len` declared bytes that never sends them, and a flag set when it is dropped.
    struct Due {
        len: u64,
        dropped: Arc<AtomicBool>,
    }

    impl Body for Due {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.len)
        }
    }

    impl Drop for Due {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Relaxed);
        }
    }

    fn due(len: u64) -> (Due, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (Due { len, dropped: dropped.clone() }, dropped)
    }

    /// Drops a body of `len` declared bytes unread from a request with this head; whether the
    /// answer must then say `Connection: close`.
    fn dropped_unread(len: u64, head: &Parts) -> bool {
        let (body, intake) = CallerBody::new(due(len).0, head);
        drop(body);
        intake.answered(false, true)
    }

    #[tokio::test]
    async fn counts_the_bytes_read_and_a_body_read_to_its_end_leaves_the_connection_open() {
        let (body, intake) = CallerBody::new(Full::new(Bytes::from_static(b"hello")), &plain());
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(&read[..], b"hello");
        assert_eq!(intake.bytes(), 5);
        assert!(!intake.answered(false, true));
    }

    #[tokio::test]
    async fn a_body_read_to_its_trailers_is_read_to_its_end() {
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(HeaderMap::new())),
        ];
        // A chunked body: no length, and more frames could follow as far as its type knows.
        let stream =
            futures_util::StreamExt::chain(futures_util::stream::iter(frames), futures_util::stream::pending());
        let (mut body, intake) = CallerBody::new(StreamBody::new(stream), &plain());
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        drop(body);
        assert!(!intake.answered(false, true), "nothing is left to read");
    }

    #[tokio::test]
    async fn an_empty_body_dropped_unread_leaves_the_connection_open() {
        let (body, intake) = CallerBody::new(Empty::<Bytes>::new(), &plain());
        drop(body);
        assert!(!intake.answered(false, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_dropped_early_is_read_in_the_background_for_a_bounded_time() {
        let (body, dropped) = due(DRAIN_LIMIT);
        let (body, intake) = CallerBody::new(body, &plain());
        drop(body);
        assert!(!intake.answered(false, true), "it is being read: the connection can carry another request");
        tokio::time::sleep(DRAIN_TIME - Duration::from_millis(10)).await;
        assert!(!dropped.load(Ordering::Relaxed), "still being read");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(dropped.load(Ordering::Relaxed), "given up after {DRAIN_TIME:?}");
    }

    #[tokio::test]
    async fn a_body_dropped_after_the_answer_is_read_to_its_end_if_it_may_be() {
        let (body, dropped) = due(10);
        let (body, intake) = CallerBody::new(body, &plain());
        assert!(!intake.answered(false, true), "small enough to be read if it is dropped");
        drop(body);
        tokio::task::yield_now().await;
        assert!(!dropped.load(Ordering::Relaxed), "being read");

        // An upload still in flight when the answer is ready, too large to read if it is
        // dropped later: the answer says so now.
        let (body, intake) = CallerBody::new(due(DRAIN_LIMIT + 1).0, &plain());
        assert!(intake.answered(false, true));
        drop(body);
    }

    #[tokio::test]
    async fn an_answer_that_closes_anyway_is_not_held_up_by_reading() {
        let (body, dropped) = due(10);
        let (body, intake) = CallerBody::new(body, &plain());
        drop(body);
        assert!(!intake.answered(true, true), "it says so already");
        assert!(dropped.load(Ordering::Relaxed), "let go at once, so hyper closes");
    }

    #[tokio::test]
    async fn what_is_never_read_closes_the_connection() {
        assert!(!dropped_unread(10, &plain()), "the rule's other cases would pass for the wrong reason");
        assert!(dropped_unread(DRAIN_LIMIT + 1, &plain()), "past the limit");
        let stream = futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let (chunked, intake) = CallerBody::new(StreamBody::new(stream), &plain());
        drop(chunked);
        assert!(intake.answered(false, true), "no length to judge by");
        for expect in [&[("expect", "100-Continue")][..], &[("expect", "foo"), ("expect", "100-continue")]] {
            assert!(
                dropped_unread(10, &head(Version::HTTP_11, expect)),
                "{expect:?}: reading would send 100 Continue after the answer"
            );
        }
        assert!(dropped_unread(10, &head(Version::HTTP_11, &[("connection", "foo, Close")])));
        assert!(dropped_unread(10, &head(Version::HTTP_10, &[])), "HTTP/1.0 closes unless asked not to");
        assert!(!dropped_unread(10, &head(Version::HTTP_10, &[("connection", "Keep-Alive")])));

        let (body, intake) = CallerBody::new(due(10).0, &plain());
        drop(body);
        assert!(intake.answered(false, false), "a caller whose address may not call");
        assert!(!intake.answered(false, true), "decided once");
    }

    #[tokio::test]
    async fn a_body_asked_for_once_no_longer_awaits_continue() {
        let (mut body, intake) = CallerBody::new(due(10).0, &head(Version::HTTP_11, &[("expect", "100-continue")]));
        assert!(Pin::new(&mut body).poll_frame(&mut Context::from_waker(std::task::Waker::noop())).is_pending());
        drop(body);
        assert!(!intake.answered(false, true), "the caller was told to go on; the rest is read");
    }

    #[test]
    fn no_more_than_max_drains_are_read_at_once() {
        static TAKEN: AtomicUsize = AtomicUsize::new(0);
        let places: Vec<Place> = (0..MAX_DRAINS).map(|_| Place::take(&TAKEN).expect("a place")).collect();
        assert!(Place::take(&TAKEN).is_none(), "one too many");
        assert_eq!(TAKEN.load(Ordering::Relaxed), MAX_DRAINS, "the refused one is not counted");
        drop(places);
        assert_eq!(TAKEN.load(Ordering::Relaxed), 0);
        assert!(Place::take(&TAKEN).is_some());
    }

    #[tokio::test]
    async fn with_every_place_taken_what_is_left_closes_the_connection() {
        static TAKEN: AtomicUsize = AtomicUsize::new(0);
        let places: Vec<Place> = (0..MAX_DRAINS).map(|_| Place::take(&TAKEN).expect("a place")).collect();
        let (body, intake) = CallerBody::placed_in(due(10).0, &plain(), &TAKEN);
        drop(body);
        assert!(intake.answered(false, true), "dropped before the answer");
        // An upload in flight when the answer is ready: no place to read it later, so the
        // answer says so now (a place given back after the answer does not count).
        let (body, intake) = CallerBody::placed_in(due(10).0, &plain(), &TAKEN);
        assert!(intake.answered(false, true), "in flight at the answer");
        drop(places);
        drop(body);
        assert_eq!(TAKEN.load(Ordering::Relaxed), 0, "nothing taken");
        // With a place free, the one in flight holds it from the answer until it is read.
        let (body, intake) = CallerBody::placed_in(due(10).0, &plain(), &TAKEN);
        assert!(!intake.answered(false, true));
        assert_eq!(TAKEN.load(Ordering::Relaxed), 1, "held from the answer");
        drop(body);
        tokio::task::yield_now().await;
        assert_eq!(TAKEN.load(Ordering::Relaxed), 1, "held while it is read");
    }

    #[test]
    fn without_a_runtime_a_dropped_body_closes_the_connection() {
        assert!(dropped_unread(10, &plain()));
    }
}
