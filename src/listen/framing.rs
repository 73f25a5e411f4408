//! A strict guard on the bytes callers send, in front of the HTTP parser.
//!
//! The parser is lenient where the standard allows it to be (bare LF line ends, `Content-Length`
//! beside `Transfer-Encoding`). A lenient first hop is how requests get smuggled past whatever
//! sits behind it, so this guard follows each request's framing itself. It holds a head back
//! until the head is complete and valid, so the parser never sees a byte of a bad one, and it
//! refuses:
//! - with 400: a NUL byte, a bare CR or a bare LF in a head or chunk framing; obsolete line
//!   folding, white space before a header's colon, a malformed request line or field, a request
//!   target the URI parser would refuse or that holds a fragment;
//!   `Transfer-Encoding` with `Content-Length` or on HTTP/1.0, `chunked` more than once; a
//!   `Content-Length` that is not digits, or several that differ; more than one `Host`; malformed
//!   chunk sizes or chunk ends, more than 16 KiB of chunk extensions in a body; a
//!   `Transfer-Encoding` ending in an empty element;
//! - with 431: a head larger than `max_header_bytes` (every byte from the end of the previous
//!   request through the empty line that ends the head: empty lines before the request line, the
//!   request line, the fields, each with its CR LF), or with more than [`MAX_FIELDS`] fields; a
//!   trailer section larger than that or than 16 KiB less one byte;
//! - with 501: any transfer coding but `chunked` (RFC 9112 §6.1).
//!
//! Every refusal is answered, then the connection closes. A refused head is answered in its turn:
//! the guard hands the parser a stand-in request in its place (`Connection: close`), which
//! [`Refusals::next_request`] recognises, so the answers to the requests before it go out first,
//! in order. A refusal inside a body is answered at once if nothing of the response has been
//! written yet; either way the connection is cut.
//!
//! Body data is not copied: it goes from the socket straight into the parser's buffer. Only
//! what follows a head in the same read is copied once, and a head is held only up to
//! `max_header_bytes`. After a refusal the guard reads and drops what the caller still sends for
//! a moment before closing, so the close does not become a reset that could destroy the answer.

mod head;
mod rules;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::response::Response;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ProxyError;
pub use rules::{Framing, Kind, MAX_FIELDS, Step, Violation};

/// What the parser is given in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";

#[derive(Debug, Default)]
struct Shared {
    /// Heads handed to the parser so far, the stand-in included.
    heads: u64,
    /// Requests the parser has handed on so far.
    requests: u64,
    /// The stand-in's place among the heads, and what it stands for.
    refused: Option<(u64, Violation)>,
}

/// The service's side of the guard: tells which request stands in for a refused head.
#[derive(Clone, Debug, Default)]
pub struct Refusals(Arc<Mutex<Shared>>);

impl Refusals {
    /// Called once for each request the parser hands on, in order: the refusal this request
    /// stands in for, if it does.
    pub fn next_request(&self) -> Option<Violation> {
        let mut shared = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let index = shared.requests;
        shared.requests += 1;
        shared.refused.filter(|(at, _)| *at == index).map(|(_, v)| v)
    }

    fn released_head(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).heads += 1;
    }

    fn refuse(&self, violation: Violation) {
        let mut shared = self.0.lock().unwrap_or_else(|e| e.into_inner());
        shared.refused = Some((shared.heads, violation));
        shared.heads += 1;
    }
}

/// A new request id, as the access log makes them.
/// The proxy's error for a refusal.
fn framing_error(violation: Violation) -> ProxyError {
    ProxyError::Framing { status: violation.status(), code: violation.code(), reason: violation.to_string() }
}

/// The answer to the stand-in for a refused head, logged as the refusal.
pub fn refused(violation: Violation, peer: &impl std::fmt::Display) -> Response {
    let id = crate::request_id::new();
    let id = id.to_str().unwrap_or("");
    tracing::warn!(request_id = %id, %peer, reason = %violation, status = violation.status().as_u16(), "request refused");
    answer(violation, id)
}

/// The answer to a refused request: the proxy's JSON error, and `Connection: close`.
fn answer(violation: Violation, request_id: &str) -> Response {
    let mut response = framing_error(violation).into_response(request_id);
    let headers = response.headers_mut();
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(crate::request_id::X_REQUEST_ID.clone(), id);
    }
    response.map(Body::new)
}

/// The same answer as bytes on the wire, for a refusal the parser cannot be asked to answer.
fn answer_bytes(violation: Violation, request_id: &str) -> Vec<u8> {
    let status = violation.status();
    let body = framing_error(violation).body(request_id).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\
         x-request-id: {request_id}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// How far the guard has gone in cutting a connection after a refusal inside a body.
enum Cut {
    /// Writing the answer (from this offset), then shutting the caller's side down.
    Answering(Vec<u8>, usize),
    ShuttingDown,
    Lingering,
    Done,
}

/// After a refusal, how long and how much the guard goes on reading (and dropping) what the
/// caller still sends, before the connection closes. Closing with unread bytes makes the system
/// reset the connection, and a reset can destroy the answer before the caller has read it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// A caller's connection with the guard on its reading side.
pub struct Guarded<S> {
    inner: S,
    framing: Framing,
    refusals: Refusals,
    /// Checked bytes waiting for the parser (released heads, and what followed them in a read),
    /// and how many of them it has taken.
    ready: Vec<u8>,
    taken: usize,
    /// A refusal found; bytes before it are passed on first.
    refused: Option<Violation>,
    /// Set once a refused head's stand-in is queued: the parser gets nothing more.
    stood_in: bool,
    cut: Option<(Violation, Cut)>,
    /// Bytes written to the caller, and their count when the latest head was released.
    written: u64,
    written_at_head: u64,
    /// The latest write or flush was not accepted: the parser may hold unsent bytes.
    write_pending: bool,
    /// Reading what the caller still sends after a refusal, until this timer (or a count of
    /// bytes) is reached.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl<S> Guarded<S> {
    /// The guard for a connection, with `max_head` the largest head in bytes, and the handle the
    /// service asks about each request.
    pub fn new(inner: S, max_head: usize) -> (Self, Refusals) {
        let refusals = Refusals::default();
        let guarded = Guarded {
            inner,
            framing: Framing::new(max_head),
            refusals: refusals.clone(),
            ready: Vec::new(),
            taken: 0,
            refused: None,
            stood_in: false,
            cut: None,
            written: 0,
            written_at_head: 0,
            write_pending: false,
            linger: None,
        };
        (guarded, refusals)
    }

    /// Follows `data`, just read. The bytes that may pass at its start stay where they are (their
    /// count is returned); the rest goes to `ready` as the rules release it.
    fn check(&mut self, data: &[u8]) -> usize {
        let (mut at, mut kept) = (0, 0);
        while at < data.len() {
            match self.framing.step(&data[at..]) {
                Ok(Step::Pass(n)) => {
                    if at == kept {
                        kept += n;
                    } else {
                        self.ready.extend_from_slice(&data[at..at + n]);
                    }
                    at += n;
                }
                Ok(Step::Hold(n)) => at += n,
                Ok(Step::Head(n, head)) => {
                    self.refusals.released_head();
                    self.written_at_head = self.written;
                    self.release(head);
                    at += n;
                }
                Ok(Step::Trailers(n, section)) => {
                    self.release(section);
                    at += n;
                }
                Err(violation) => {
                    self.refused = Some(violation);
                    break;
                }
            }
        }
        kept
    }

    /// Queues a released section for the parser: as the queue itself when the queue is empty
    /// (most heads), else copied to its end; the spare buffer goes back to the rules for the
    /// next section.
    fn release(&mut self, section: Vec<u8>) {
        let spare = if self.ready.is_empty() {
            std::mem::replace(&mut self.ready, section)
        } else {
            self.ready.extend_from_slice(&section);
            section
        };
        self.framing.recycle(spare);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Reads and drops what the caller sends, until it closes or the linger time or bytes run out.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (timer, drained) = self.linger.get_or_insert_with(|| (Box::pin(tokio::time::sleep(LINGER)), 0));
        loop {
            if timer.as_mut().poll(cx).is_ready() || *drained > LINGER_BYTES {
                return Poll::Ready(());
            }
            let mut scratch = [0u8; 4096];
            let mut scratch = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut scratch)) {
                Ok(()) if !scratch.filled().is_empty() => *drained += scratch.filled().len(),
                _ => return Poll::Ready(()),
            }
        }
    }

    /// Cuts the connection after a refusal inside a body: answers it if nothing of the response
    /// has gone out (nor waits in the parser's buffer), then shuts the caller's side down. Ends
    /// in the error that the parser's reads and writes get from then on.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some((violation, cut)) = &mut self.cut else { unreachable!("only called while cutting") };
            let violation = *violation;
            match cut {
                Cut::Answering(bytes, at) if *at < bytes.len() => {
                    let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *at += n;
                }
                Cut::Answering(..) => {
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    *cut = Cut::ShuttingDown;
                }
                Cut::ShuttingDown => {
                    ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
                    *cut = Cut::Lingering;
                }
                Cut::Lingering => {
                    ready!(self.poll_linger(cx));
                    self.cut = Some((violation, Cut::Done));
                }
                Cut::Done => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation))),
            }
        }
    }

    fn start_cut(&mut self, violation: Violation) {
        let quiet = self.written == self.written_at_head && !self.write_pending;
        let id = crate::request_id::new();
        let id = id.to_str().unwrap_or("");
        tracing::warn!(request_id = %id, reason = %violation, answered = quiet, "request refused in its body; connection cut");
        let cut = if quiet { Cut::Answering(answer_bytes(violation, id), 0) } else { Cut::ShuttingDown };
        self.cut = Some((violation, cut));
    }

    /// Notes how a write to the caller went.
    fn wrote<T>(&mut self, result: &Poll<io::Result<T>>, n: impl FnOnce(&T) -> usize) {
        match result {
            Poll::Ready(Ok(t)) => {
                self.written += n(t) as u64;
                self.write_pending = false;
            }
            Poll::Pending => self.write_pending = true,
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.ready.len() {
                let n = (this.ready.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.ready.len() {
                    this.ready.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.cut.is_some() {
                return this.poll_cut(cx);
            }
            if this.stood_in {
                // The parser answers the stand-in and closes; it needs nothing more from the
                // caller, and is woken by its service and its writes.
                return Poll::Pending;
            }
            if let Some(violation) = this.refused {
                if this.framing.between_requests() {
                    this.refusals.refuse(violation);
                    this.ready.extend_from_slice(STAND_IN);
                    this.stood_in = true;
                } else {
                    this.start_cut(violation);
                }
                continue;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            let kept = this.check(&buf.filled()[before..]);
            buf.set_filled(before + kept);
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.cut.is_some() {
            return self.poll_cut(cx).map(|r| r.map(|()| 0));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result, |n| *n);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut.is_some() {
            return self.poll_cut(cx).map(|r| r.map(|()| 0));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result, |n| *n);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.is_some() {
            return self.poll_cut(cx);
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(&result, |()| 0);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.is_some() {
            return self.poll_cut(cx);
        }
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        if self.stood_in {
            ready!(self.poll_linger(cx));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod oracle;

#[cfg(test)]
mod equivalence;
