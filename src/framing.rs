//! A strict guard on the bytes callers send, in front of the HTTP parser.
//!
//! The parser is lenient where the standard allows it to be (bare LF line ends, `Content-Length`
//! beside `Transfer-Encoding`). A lenient first hop is how requests get smuggled past whatever
//! sits behind it, so this guard follows each request's framing itself and ends the connection,
//! before the parser sees a byte of it, on:
//! - a NUL byte, a bare CR or a bare LF in a request head or chunk framing;
//! - obsolete line folding, or white space before a header's colon;
//! - `Transfer-Encoding` with `Content-Length`, any coding but a single `chunked`, or on HTTP/1.0;
//! - a `Content-Length` that is not digits, or several that differ;
//! - malformed chunk sizes or chunk ends.
//!
//! It copies nothing: it reads each byte of heads and chunk-size lines, and skips body data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head into `head`.
    Head,
    /// This many body bytes remain.
    Body(u64),
    /// A chunk-size line: digits seen, the size so far, past the digits (extension or BWS).
    ChunkSize {
        digits: u8,
        size: u64,
        past_digits: bool,
    },
    ChunkData(u64),
    /// The CR LF after chunk data: how many of the two bytes are seen.
    ChunkEnd(u8),
    /// Trailer fields after the last chunk, read into `head`.
    Trailers,
    /// A head larger than the parser accepts: passed through for the parser to answer 431.
    Overflow,
}

/// Why the guard ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed request framing: {0}")]
pub struct Violation(pub &'static str);

/// The framing state machine, apart from any I/O.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    max_head: usize,
}

impl Framing {
    pub fn new(max_head: usize) -> Framing {
        Framing { state: State::Head, head: Vec::new(), max_head }
    }

    /// Follows `data`, the next bytes from the caller.
    pub fn inspect(&mut self, mut data: &[u8]) -> Result<(), Violation> {
        while !data.is_empty() {
            match self.state {
                State::Overflow => return Ok(()),
                State::Body(remaining) => {
                    let n = remaining.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if remaining == n { State::Head } else { State::Body(remaining - n) };
                }
                State::ChunkData(remaining) => {
                    let n = remaining.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if remaining == n { State::ChunkEnd(0) } else { State::ChunkData(remaining - n) };
                }
                _ => {
                    self.byte(data[0])?;
                    data = &data[1..];
                }
            }
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<(), Violation> {
        match self.state {
            State::Head | State::Trailers => self.line_byte(b),
            State::ChunkSize { digits, size, past_digits } => self.chunk_size_byte(b, digits, size, past_digits),
            State::ChunkEnd(seen) => match (seen, b) {
                (0, b'\r') => {
                    self.state = State::ChunkEnd(1);
                    Ok(())
                }
                (1, b'\n') => {
                    self.state = State::ChunkSize { digits: 0, size: 0, past_digits: false };
                    Ok(())
                }
                _ => Err(Violation("chunk data not followed by CR LF")),
            },
            State::Body(_) | State::ChunkData(_) | State::Overflow => unreachable!("handled in bulk"),
        }
    }

    /// A byte of a head or of trailers, both lines of fields ending in an empty line.
    fn line_byte(&mut self, b: u8) -> Result<(), Violation> {
        let prev = self.head.last().copied();
        if b == 0 {
            return Err(Violation("NUL byte"));
        }
        if b == b'\n' && prev != Some(b'\r') {
            return Err(Violation("bare LF"));
        }
        if prev == Some(b'\r') && b != b'\n' {
            return Err(Violation("bare CR"));
        }
        if self.state == State::Head
            && self.head.len() < 2
            && self.head.iter().chain([&b]).all(|c| *c == b'\r' || *c == b'\n')
        {
            // Empty lines before a request line are allowed and ignored.
            if b == b'\n' {
                self.head.clear();
            } else {
                self.head.push(b);
            }
            return Ok(());
        }
        self.head.push(b);
        if self.head.len() > self.max_head {
            self.head = Vec::new();
            self.state = State::Overflow;
            return Ok(());
        }
        let ended = self.head.ends_with(b"\r\n\r\n") || (self.state == State::Trailers && self.head == b"\r\n");
        if ended {
            let head = std::mem::take(&mut self.head);
            self.state = match self.state {
                State::Trailers => {
                    fields(&head, 0)?;
                    State::Head
                }
                _ => next_state(&head)?,
            };
        }
        Ok(())
    }

    fn chunk_size_byte(&mut self, b: u8, digits: u8, size: u64, past_digits: bool) -> Result<(), Violation> {
        let prev_cr = self.head.last() == Some(&b'\r');
        if prev_cr && b != b'\n' {
            return Err(Violation("bare CR in a chunk size line"));
        }
        match b {
            b'\r' => {
                if digits == 0 {
                    return Err(Violation("chunk size missing"));
                }
                self.head.push(b);
            }
            b'\n' => {
                if !prev_cr {
                    return Err(Violation("bare LF in a chunk size line"));
                }
                self.head.clear();
                self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
            }
            _ if !past_digits && b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(Violation("chunk size too large"));
                }
                let digit = (b as char).to_digit(16).expect("a hex digit") as u64;
                self.state = State::ChunkSize { digits: digits + 1, size: size * 16 + digit, past_digits };
            }
            b' ' | b'\t' | b';' if digits > 0 => {
                self.state = State::ChunkSize { digits, size, past_digits: true };
            }
            0 => return Err(Violation("NUL byte in a chunk size line")),
            _ if past_digits && (b.is_ascii_graphic() || b >= 0x80) => {}
            _ => return Err(Violation("malformed chunk size")),
        }
        Ok(())
    }
}

/// Checks the header fields of `head` (after `skip` lines) and returns them as (name, value).
fn fields(head: &[u8], skip: usize) -> Result<Vec<(String, String)>, Violation> {
    let text = std::str::from_utf8(head).unwrap_or("");
    let mut out = Vec::new();
    for line in text.split("\r\n").skip(skip).filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(Violation("obsolete line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            // Not a field; the parser will refuse it.
            continue;
        };
        if name.ends_with([' ', '\t']) {
            return Err(Violation("white space before a header's colon"));
        }
        out.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(out)
}

/// The framing of the request whose head is `head`.
fn next_state(head: &[u8]) -> Result<State, Violation> {
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or(&[]);
    let http10 = request_line.ends_with(b"HTTP/1.0");
    let fields = fields(head, 1)?;
    let mut length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    for (name, value) in &fields {
        match name.as_str() {
            "content-length" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 19 {
                    return Err(Violation("Content-Length is not a number"));
                }
                let n: u64 = value.parse().map_err(|_| Violation("Content-Length is not a number"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Violation("Content-Length values differ"));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                codings.extend(value.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()))
            }
            _ => {}
        }
    }
    let has_te = fields.iter().any(|(n, _)| n == "transfer-encoding");
    if has_te {
        if http10 {
            return Err(Violation("Transfer-Encoding on HTTP/1.0"));
        }
        if length.is_some() {
            return Err(Violation("both Transfer-Encoding and Content-Length"));
        }
        if codings != ["chunked"] {
            return Err(Violation("a transfer coding other than a single chunked"));
        }
        return Ok(State::ChunkSize { digits: 0, size: 0, past_digits: false });
    }
    Ok(match length {
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

/// A caller's connection with the guard on its reading side.
pub struct Guarded<S> {
    inner: S,
    framing: Framing,
    violation: Option<Violation>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, max_head: usize) -> Self {
        Guarded { inner, framing: Framing::new(max_head), violation: None }
    }

    /// What ended the connection, if the guard did.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(v) = self.violation {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(v) = this.framing.inspect(&buf.filled()[before..]) {
            // The parser never sees the offending bytes.
            buf.set_filled(before);
            this.violation = Some(v);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
