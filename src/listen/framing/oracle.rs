//! The framing rules as they were before they were rewritten for speed, kept as the oracle the
//! rewrite is compared with: over generated heads, bodies and splits into reads, both give the
//! same steps, the same verdicts and the same refusals.

// The token table and the white-space trim are the guard's own (the table is held to RFC 9110
// byte by byte in `head.rs`'s tests).
use super::head::{is_tchar, trim_ows};
use super::rules::{Kind, MAX_FIELDS, Step, Violation};

const TOO_LARGE: Violation = Violation { kind: Kind::TooLarge, reason: "the request head is too large" };

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
            let trailers = self.state == State::Trailers;
            let mut i = 0;
            while i < data.len() {
                // Bytes that are neither CR, LF nor NUL, after anything but a CR, need no rule
                // but the size limit: taken as a run, not one by one.
                let plain = self.plain_run(&data[i..]);
                if plain > 0 {
                    self.head.extend_from_slice(&data[i..i + plain]);
                    self.taken += plain;
                    i += plain;
                    continue;
                }
                if let Some(section) = self.line_byte(data[i])? {
                    return Ok(if trailers { Step::Trailers(i + 1, section) } else { Step::Head(i + 1, section) });
                }
                i += 1;
            }
            return Ok(Step::Hold(data.len()));
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

    /// How many bytes at the start of `data` [`Framing::line_byte`] would take without a check
    /// failing or a line ending: none after a CR (the next byte must be LF), none past the size
    /// limit, and none of CR, LF or NUL.
    fn plain_run(&mut self, data: &[u8]) -> usize {
        if self.head.last() == Some(&b'\r') {
            return 0;
        }
        let limit = match self.state {
            State::Trailers => self.max_head.min(MAX_TRAILER_BYTES),
            _ => self.max_head,
        };
        let room = limit.saturating_sub(self.taken);
        let window = &data[..data.len().min(room)];
        let run = memchr::memchr3(0, b'\r', b'\n', window).unwrap_or(window.len());
        if run > 0 && self.head.capacity() == 0 {
            self.head.reserve(256);
        }
        run
    }

    /// A byte of a head or of trailers, both lines of fields ending in an empty line. Returns the
    /// section once it is complete and valid.
    fn line_byte(&mut self, b: u8) -> Result<Option<Vec<u8>>, Violation> {
        if self.state == State::Head && self.taken >= self.max_head {
            return Err(TOO_LARGE);
        }
        if self.state == State::Trailers && self.taken >= self.max_head.min(MAX_TRAILER_BYTES) {
            return Err(Violation { kind: Kind::TooLarge, reason: "the trailer section is too large" });
        }
        let prev = self.head.last().copied();
        if b == 0 {
            return Err(Violation::malformed("NUL byte"));
        }
        if b == b'\n' && prev != Some(b'\r') {
            return Err(Violation::malformed("bare LF"));
        }
        if prev == Some(b'\r') && b != b'\n' {
            return Err(Violation::malformed("bare CR"));
        }
        self.taken += 1;
        if self.state == State::Head && (self.head.is_empty() || self.head == b"\r") && matches!(b, b'\r' | b'\n') {
            // Empty lines before a request line are allowed and dropped (RFC 9112 §2.2).
            if b == b'\n' {
                self.head.clear();
            } else {
                self.head.push(b);
            }
            return Ok(None);
        }
        self.head.push(b);
        let ended = self.head.ends_with(b"\r\n\r\n") || (self.state == State::Trailers && self.head == b"\r\n");
        if !ended {
            return Ok(None);
        }
        let head = std::mem::take(&mut self.head);
        self.taken = 0;
        self.state = match self.state {
            State::Trailers => {
                fields(&head)?;
                State::Head
            }
            _ => {
                self.extensions = 0;
                next_state(&head)?
            }
        };
        Ok(Some(head))
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

/// The lines of a section without their CR LF (bare CR and LF are refused byte by byte before).
fn lines(section: &[u8]) -> impl Iterator<Item = &[u8]> {
    section.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty())
}

/// A header field's name and value, as bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Checks the field lines of a section (a head without its request line, or trailers) and
/// returns them as (name, trimmed value). Values may hold obs-text (RFC 9110 §5.5).
fn fields(section: &[u8]) -> Result<Vec<Field<'_>>, Violation> {
    let mut out = Vec::new();
    for line in lines(section) {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(Violation::malformed("obsolete line folding"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(Violation::malformed("a header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.ends_with(b" ") || name.ends_with(b"\t") {
            return Err(Violation::malformed("white space before a header's colon"));
        }
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(Violation::malformed("a header name that is not a token"));
        }
        if value.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) {
            return Err(Violation::malformed("a control character in a header value"));
        }
        if out.len() == MAX_FIELDS {
            return Err(Violation { kind: Kind::TooLarge, reason: "too many header fields" });
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Checks a request line: `method SP target SP HTTP/1.x`, single spaces, nothing else.
fn request_line(line: &[u8]) -> Result<bool, Violation> {
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Violation::malformed("a malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(Violation::malformed("a malformed method"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b) || *b >= 0x80) {
        return Err(Violation::malformed("a malformed request target"));
    }
    // What the parser behind would refuse with a bare answer of its own (`<`, a target that is
    // neither a path nor a URL) is refused here, answered as every refusal is. A fragment has no
    // place in a request target, and the parser would drop it in silence, with the query's end.
    if target.contains(&b'#') || http::Uri::try_from(target).is_err() {
        return Err(Violation::malformed("a malformed request target"));
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(Violation::malformed("an HTTP version other than 1.0 or 1.1")),
    }
}

/// The framing of the request whose head is `head`.
fn next_state(head: &[u8]) -> Result<State, Violation> {
    let line_end = head.iter().position(|b| *b == b'\r').unwrap_or(head.len());
    let http10 = request_line(&head[..line_end])?;
    let fields = fields(&head[line_end..])?;
    let mut length: Option<u64> = None;
    let mut codings: Option<Vec<&[u8]>> = None;
    // The parser behind takes a body as chunked only if the last `Transfer-Encoding` field ends
    // in `chunked`; an empty last element (`chunked,`) it refuses.
    let mut ends_empty = false;
    let mut hosts = 0;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Violation::malformed("Content-Length is not a number"));
            }
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(Violation::malformed("Content-Length values differ"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.get_or_insert_default().extend(value.split(|b| *b == b',').map(trim_ows).filter(|c| !c.is_empty()));
            ends_empty = value.rsplit(|b| *b == b',').next().is_none_or(|c| trim_ows(c).is_empty());
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if hosts > 1 {
        return Err(Violation::malformed("more than one Host"));
    }
    let Some(codings) = codings else {
        return Ok(match length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head,
        });
    };
    if http10 {
        return Err(Violation::malformed("Transfer-Encoding on HTTP/1.0"));
    }
    if length.is_some() {
        return Err(Violation::malformed("both Transfer-Encoding and Content-Length"));
    }
    if codings.iter().any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
        return Err(Violation { kind: Kind::UnknownCoding, reason: "a transfer coding other than chunked" });
    }
    if codings.len() != 1 {
        return Err(Violation::malformed("chunked not exactly once"));
    }
    if ends_empty {
        return Err(Violation::malformed("Transfer-Encoding ends in an empty element"));
    }
    Ok(State::ChunkSize { digits: 0, size: 0, past_digits: false, extension: false })
}
