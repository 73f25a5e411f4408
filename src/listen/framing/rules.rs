//! The framing rules as a state machine over bytes, apart from any I/O.
//!
//! Heads are read as bytes, never as text: a byte outside ASCII in one field changes nothing about
//! the checks on the others. Header names are compared without regard to letter case.

use http::StatusCode;

use super::head::{for_each_field, next_state};

/// What a refused request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the bytes are not a well-formed request, or its length is ambiguous.
    Malformed,
    /// 431: the head (or the trailer section) is larger than `max_header_bytes`, or has more than
    /// [`MAX_FIELDS`] fields.
    TooLarge,
    /// 501: a transfer coding other than `chunked` (RFC 9112 §6.1).
    UnknownCoding,
}

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    pub kind: Kind,
    pub reason: &'static str,
}

impl Violation {
    pub(super) const fn malformed(reason: &'static str) -> Violation {
        Violation { kind: Kind::Malformed, reason }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::Malformed => StatusCode::BAD_REQUEST,
            Kind::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The stable `error` code of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self.kind {
            Kind::Malformed => "malformed_request",
            Kind::TooLarge => "request_header_too_large",
            Kind::UnknownCoding => "unsupported_transfer_coding",
        }
    }
}

const TOO_LARGE: Violation = Violation { kind: Kind::TooLarge, reason: "the request head is too large" };
const TRAILERS_TOO_LARGE: Violation = Violation { kind: Kind::TooLarge, reason: "the trailer section is too large" };

/// The largest buffer kept from one head for the next (see [`Framing::recycle`]).
const RECYCLED_CAPACITY: usize = 4096;

/// The most header fields a head may carry (the HTTP parser's own limit is the same).
pub const MAX_FIELDS: usize = 100;

/// The parser behind the guard reads at most 16 KiB of chunk extensions in one body and of
/// trailers, and fails the body beyond (which would reach the caller as the API's failure): the
/// guard refuses first. Extensions are counted with their `;` and white space, trailers whole.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024 - 1;
const MAX_TRAILER_BYTES: usize = 16 * 1024 - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Reading a request head into `head`.
    Head,
    /// This many body bytes remain.
    Body(u64),
    /// A chunk-size line: digits seen, the size so far, past the digits (extension or BWS), past
    /// the `;` that starts the extensions (before it, only BWS may follow the digits).
    ChunkSize {
        digits: u8,
        size: u64,
        past_digits: bool,
        extension: bool,
    },
    ChunkData(u64),
    /// The CR LF after chunk data: how many of the two bytes are seen.
    ChunkEnd(u8),
    /// Trailer fields after the last chunk, read into `head`.
    Trailers,
}

/// What became of the first bytes given to [`Framing::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes (body data, chunk framing) may go on to the parser as they are.
    Pass(usize),
    /// The first `n` bytes belong to a head or trailer section not complete yet: held back.
    Hold(usize),
    /// The first `n` bytes complete a request head, which may now go on whole (the bytes held
    /// back before and these, without the empty lines before its request line).
    Head(usize, Vec<u8>),
    /// The same for the trailer section after a chunked body.
    Trailers(usize, Vec<u8>),
}

/// The framing of a connection's requests, followed byte by byte.
#[derive(Debug)]
pub struct Framing {
    pub(super) state: State,
    /// The head or trailer section being read.
    head: Vec<u8>,
    /// Bytes taken for the current head or trailer section, empty lines before a request line
    /// included; at most `max_head`.
    taken: usize,
    max_head: usize,
    /// Chunk extension bytes seen in the current body.
    extensions: u64,
}

impl Framing {
    pub fn new(max_head: usize) -> Framing {
        Framing { state: State::Head, head: Vec::new(), taken: 0, max_head, extensions: 0 }
    }

    /// True between requests (reading a head), where a refusal can be answered in turn.
    pub fn between_requests(&self) -> bool {
        self.state == State::Head
    }

    /// Follows the start of `data` (not empty). After an error the state is unchanged, so the
    /// same bytes are refused again; bytes that may pass before an offending one are passed first.
    pub fn step(&mut self, data: &[u8]) -> Result<Step, Violation> {
        if matches!(self.state, State::Head | State::Trailers) {
            return self.section_step(data);
        }
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Head | State::Trailers => break,
                State::Body(remaining) => {
                    let n = remaining.min((data.len() - i) as u64);
                    i += n as usize;
                    self.state = if remaining == n { State::Head } else { State::Body(remaining - n) };
                }
                State::ChunkData(remaining) => {
                    let n = remaining.min((data.len() - i) as u64);
                    i += n as usize;
                    self.state = if remaining == n { State::ChunkEnd(0) } else { State::ChunkData(remaining - n) };
                }
                State::ChunkSize { digits, size, past_digits, extension } => {
                    match self.chunk_size_byte(data[i], digits, size, past_digits, extension) {
                        Ok(()) => i += 1,
                        Err(_) if i > 0 => break,
                        Err(v) => return Err(v),
                    }
                }
                State::ChunkEnd(seen) => match (seen, data[i]) {
                    (0, b'\r') => {
                        self.state = State::ChunkEnd(1);
                        i += 1;
                    }
                    (1, b'\n') => {
                        self.state = State::ChunkSize { digits: 0, size: 0, past_digits: false, extension: false };
                        i += 1;
                    }
                    _ if i > 0 => break,
                    _ => return Err(Violation::malformed("chunk data not followed by CR LF")),
                },
            }
        }
        Ok(Step::Pass(i))
    }

    /// Gives back a buffer a released head or trailer section came in, once its bytes are
    /// copied or handed on: the next section is read into it, so a connection's requests do not
    /// allocate one each. A buffer grown large by one big head is dropped instead.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.head.capacity() == 0 && buffer.capacity() <= RECYCLED_CAPACITY {
            buffer.clear();
            self.head = buffer;
        }
    }

    /// [`Framing::step`] in a head or trailer section, both lines of fields ending in an empty
    /// line. Bytes that are neither CR, LF nor NUL need no rule but the size limit and are taken
    /// as a run; after a CR only an LF may follow, and it ends a line.
    fn section_step(&mut self, data: &[u8]) -> Result<Step, Violation> {
        let trailers = self.state == State::Trailers;
        let limit = if trailers { self.max_head.min(MAX_TRAILER_BYTES) } else { self.max_head };
        let mut i = 0;
        while i < data.len() {
            if self.taken >= limit {
                return Err(if trailers { TRAILERS_TOO_LARGE } else { TOO_LARGE });
            }
            let b = data[i];
            if self.head.last() == Some(&b'\r') {
                match b {
                    0 => return Err(Violation::malformed("NUL byte")),
                    b'\n' => {}
                    _ => return Err(Violation::malformed("bare CR")),
                }
                self.taken += 1;
                i += 1;
                if !trailers && self.head.len() == 1 {
                    // Empty lines before a request line are allowed and dropped (RFC 9112 §2.2).
                    self.head.clear();
                    continue;
                }
                self.head.push(b'\n');
                if self.head.ends_with(b"\r\n\r\n") || (trailers && self.head.len() == 2) {
                    let section = self.finish()?;
                    return Ok(if trailers { Step::Trailers(i, section) } else { Step::Head(i, section) });
                }
                continue;
            }
            let special = matches!(b, 0 | b'\r' | b'\n');
            let window = &data[i..data.len().min(i + (limit - self.taken))];
            let run = if special { 0 } else { memchr::memchr3(0, b'\r', b'\n', window).unwrap_or(window.len()) };
            if run > 0 {
                if self.head.capacity() == 0 {
                    self.head.reserve(256);
                }
                self.head.extend_from_slice(&window[..run]);
                self.taken += run;
                i += run;
                continue;
            }
            match b {
                0 => return Err(Violation::malformed("NUL byte")),
                b'\n' => return Err(Violation::malformed("bare LF")),
                _ => {
                    self.taken += 1;
                    self.head.push(b'\r');
                    i += 1;
                }
            }
        }
        Ok(Step::Hold(data.len()))
    }

    /// The section just ended, checked, and the state after it.
    fn finish(&mut self) -> Result<Vec<u8>, Violation> {
        let section = std::mem::take(&mut self.head);
        self.taken = 0;
        self.state = match self.state {
            State::Trailers => {
                for_each_field(&section, |_, _| {})?;
                State::Head
            }
            _ => {
                self.extensions = 0;
                next_state(&section)?
            }
        };
        Ok(section)
    }

    fn chunk_size_byte(
        &mut self,
        b: u8,
        digits: u8,
        size: u64,
        past_digits: bool,
        extension: bool,
    ) -> Result<(), Violation> {
        let prev_cr = self.head.last() == Some(&b'\r');
        if prev_cr && b != b'\n' {
            return Err(Violation::malformed("bare CR in a chunk size line"));
        }
        match b {
            b'\r' => {
                if digits == 0 {
                    return Err(Violation::malformed("chunk size missing"));
                }
                self.head.push(b);
            }
            b'\n' => {
                if !prev_cr {
                    return Err(Violation::malformed("bare LF in a chunk size line"));
                }
                self.head.clear();
                self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
            }
            _ if !past_digits && b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(Violation::malformed("chunk size too large"));
                }
                let digit = (b as char).to_digit(16).expect("a hex digit") as u64;
                self.state = State::ChunkSize { digits: digits + 1, size: size * 16 + digit, past_digits, extension };
            }
            b';' if digits > 0 => {
                self.state = State::ChunkSize { digits, size, past_digits: true, extension: true };
            }
            b' ' | b'\t' if digits > 0 => {
                self.state = State::ChunkSize { digits, size, past_digits: true, extension };
            }
            0 => return Err(Violation::malformed("NUL byte in a chunk size line")),
            _ if extension && (b.is_ascii_graphic() || b >= 0x80) => {}
            _ => return Err(Violation::malformed("malformed chunk size")),
        }
        if matches!(self.state, State::ChunkSize { past_digits: true, .. }) && b != b'\r' {
            self.extensions += 1;
            if self.extensions > MAX_EXTENSION_BYTES {
                return Err(Violation::malformed("chunk extensions too long"));
            }
        }
        Ok(())
    }
}
