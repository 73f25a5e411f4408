//! The checks on a complete head or trailer section: its request line, its fields, and what
//! its framing fields make of the body that follows. Each is done in one pass over the bytes for
//! the common case, and the long way, rule by rule, for any other.

use super::rules::{Kind, MAX_FIELDS, State, Violation};

/// A `token` character (RFC 9110 §5.6.2): method and field names. Looked up, as every byte of
/// every header name is.
pub(super) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What a byte of a field value is to [`for_each_field`]: allowed, the CR that ends the line, or
/// a control character (white space and obs-text are allowed, RFC 9110 §5.5).
const VALUE_OK: u8 = 0;
const VALUE_CR: u8 = 1;
const VALUE_CONTROL: u8 = 2;

const VALUE: [u8; 256] = {
    let mut table = [VALUE_OK; 256];
    let mut b = 0;
    while b < 256 {
        if (b < 0x20 && b != b'\t' as usize) || b == 0x7f {
            table[b] = VALUE_CONTROL;
        }
        b += 1;
    }
    table[b'\r' as usize] = VALUE_CR;
    table
};

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// How many bytes at the start of `bytes` are allowed in a field value (see [`VALUE`]): eight
/// at a time while none of them is below 0x20 (a control, HT or the CR that ends the line) or
/// 0x7f, then one at a time. The word test may stop early, never late: a word with such a byte
/// always fails it.
pub(super) fn plain_value_len(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let below_space = x.wrapping_sub(0x20 * ONES) & !x & HIGHS;
        let del = x ^ (0x7f * ONES);
        let has_del = del.wrapping_sub(ONES) & !del & HIGHS;
        if below_space | has_del != 0 {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && VALUE[usize::from(bytes[i])] == VALUE_OK {
        i += 1;
    }
    i
}

/// Checks the field lines of a section (a head from the CR LF that ends its request line, or
/// trailers) and calls `field` with each (name, trimmed value), in order, once all are checked
/// up to it. Values may hold obs-text (RFC 9110 §5.5).
///
/// Every CR of a section is followed by an LF and every LF follows a CR: bare ones are refused
/// byte by byte before a section is complete. So a line runs to the next CR. A line that is a
/// plain `token:value` is checked in one pass; any other is checked by [`odd_field`], which
/// finds what is wrong with it in the order the rules give.
pub(super) fn for_each_field<'a>(
    section: &'a [u8],
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<(), Violation> {
    let mut count = 0;
    let mut at = 0;
    while at < section.len() {
        let line = &section[at..];
        let mut n = 0;
        while n < line.len() && is_tchar(line[n]) {
            n += 1;
        }
        let (name, value, end) = if n > 0 && line.get(n) == Some(&b':') {
            let v = n + 1 + plain_value_len(&line[n + 1..]);
            if v == line.len() || line[v] == b'\r' {
                (&line[..n], trim_ows(&line[n + 1..v]), v)
            } else {
                let end = memchr::memchr(b'\r', line).unwrap_or(line.len());
                let (name, value) = odd_field(&line[..end])?;
                (name, value, end)
            }
        } else if line[0] == b'\r' {
            at += 2;
            continue;
        } else {
            let end = memchr::memchr(b'\r', line).unwrap_or(line.len());
            let (name, value) = odd_field(&line[..end])?;
            (name, value, end)
        };
        if count == MAX_FIELDS {
            return Err(Violation { kind: Kind::TooLarge, reason: "too many header fields" });
        }
        count += 1;
        field(name, value);
        at += end + 2;
    }
    Ok(())
}

/// A header field's name and value, as bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Checks a field line (not empty, without its CR LF) that is not a plain `token:value`.
fn odd_field(line: &[u8]) -> Result<Field<'_>, Violation> {
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err(Violation::malformed("obsolete line folding"));
    }
    let Some(colon) = memchr::memchr(b':', line) else {
        return Err(Violation::malformed("a header line without a colon"));
    };
    let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
    if name.ends_with(b" ") || name.ends_with(b"\t") {
        return Err(Violation::malformed("white space before a header's colon"));
    }
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(Violation::malformed("a header name that is not a token"));
    }
    if value.iter().any(|b| VALUE[usize::from(*b)] != VALUE_OK) {
        return Err(Violation::malformed("a control character in a header value"));
    }
    Ok((name, value))
}

/// What a byte of a request target is to [`request_line`]'s common case, as the URI parser
/// behind the guard (`http` 1.x, the WHATWG path and query sets) takes it: a byte allowed in the
/// path, in the query, or both. `?` is the query's start; `#`, spaces, controls and bytes outside
/// ASCII are in neither (a target with them is checked the long way).
const IN_PATH: u8 = 1;
const IN_QUERY: u8 = 2;

const TARGET: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if matches!(c, 0x21 | 0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7E) {
            table[b] |= IN_PATH;
        }
        if matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E) {
            table[b] |= IN_QUERY;
        }
        b += 1;
    }
    table
};

/// The URI parser's longest target.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The length of the origin-form target of ASCII at the start of `rest` (up to the first byte
/// that can stand in neither a path nor a query, such as a space) if the URI parser takes it: `/`,
/// then path bytes, then optionally `?` and query bytes. `None` says nothing: the long way decides.
pub(super) fn plain_origin_form(rest: &[u8]) -> Option<usize> {
    if rest.first() != Some(&b'/') {
        return None;
    }
    let mut i = 1;
    while i < rest.len() && TARGET[usize::from(rest[i])] & IN_PATH != 0 {
        i += 1;
    }
    if rest.get(i) == Some(&b'?') {
        i += 1;
        while i < rest.len() && TARGET[usize::from(rest[i])] & IN_QUERY != 0 {
            i += 1;
        }
    }
    (i <= MAX_TARGET).then_some(i)
}

/// Checks the request line at the start of `head`: `method SP target SP HTTP/1.x`, single
/// spaces, nothing else. Returns whether it is HTTP/1.0, and where the line ends.
fn request_line(head: &[u8]) -> Result<(bool, usize), Violation> {
    // The common case: a token, an origin-form target the URI parser takes, a version, CR.
    let method = head.iter().position(|b| !is_tchar(*b)).unwrap_or(head.len());
    if method > 0 && head.get(method) == Some(&b' ') {
        let rest = &head[method + 1..];
        if let Some(target) = plain_origin_form(rest)
            && let Some(version) = rest[target..].strip_prefix(b" HTTP/1.")
            && let [minor @ (b'0' | b'1'), b'\r', ..] = version
        {
            return Ok((*minor == b'0', method + 1 + target + " HTTP/1.x".len()));
        }
    }
    let line_end = memchr::memchr(b'\r', head).unwrap_or(head.len());
    Ok((odd_request_line(&head[..line_end])?, line_end))
}

/// Checks a request line (without its CR LF) that is not of the common case, in the order the rules give.
fn odd_request_line(line: &[u8]) -> Result<bool, Violation> {
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

/// What the framing fields of a head say, gathered in one pass over its fields.
#[derive(Default)]
struct Framed {
    /// The first refusal a framing field gave: it stands unless a later line is malformed,
    /// which is refused first (every line is checked before any framing field is judged).
    refused: Option<Violation>,
    length: Option<u64>,
    /// `Transfer-Encoding` fields seen; their non-empty codings counted, and whether one is
    /// not `chunked`.
    chunked_fields: bool,
    codings: usize,
    other_coding: bool,
    /// The parser behind takes a body as chunked only if the last `Transfer-Encoding` field ends
    /// in `chunked`; an empty last element (`chunked,`) it refuses.
    ends_empty: bool,
    hosts: usize,
}

impl Framed {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                    self.refused = Some(Violation::malformed("Content-Length is not a number"));
                    return;
                }
                let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                if self.length.is_some_and(|l| l != n) {
                    self.refused = Some(Violation::malformed("Content-Length values differ"));
                    return;
                }
                self.length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.chunked_fields = true;
                for coding in value.split(|b| *b == b',').map(trim_ows).filter(|c| !c.is_empty()) {
                    self.codings += 1;
                    self.other_coding |= !coding.eq_ignore_ascii_case(b"chunked");
                }
                self.ends_empty = value.rsplit(|b| *b == b',').next().is_none_or(|c| trim_ows(c).is_empty());
            }
            4 if name.eq_ignore_ascii_case(b"host") => self.hosts += 1,
            _ => {}
        }
    }
}

/// The framing of the request whose head is `head`.
pub(super) fn next_state(head: &[u8]) -> Result<State, Violation> {
    let (http10, line_end) = request_line(head)?;
    let mut framed = Framed::default();
    for_each_field(&head[line_end..], |name, value| framed.field(name, value))?;
    if let Some(refused) = framed.refused {
        return Err(refused);
    }
    if framed.hosts > 1 {
        return Err(Violation::malformed("more than one Host"));
    }
    if !framed.chunked_fields {
        return Ok(match framed.length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head,
        });
    }
    if http10 {
        return Err(Violation::malformed("Transfer-Encoding on HTTP/1.0"));
    }
    if framed.length.is_some() {
        return Err(Violation::malformed("both Transfer-Encoding and Content-Length"));
    }
    if framed.other_coding {
        return Err(Violation { kind: Kind::UnknownCoding, reason: "a transfer coding other than chunked" });
    }
    if framed.codings != 1 {
        return Err(Violation::malformed("chunked not exactly once"));
    }
    if framed.ends_empty {
        return Err(Violation::malformed("Transfer-Encoding ends in an empty element"));
    }
    Ok(State::ChunkSize { digits: 0, size: 0, past_digits: false, extension: false })
}

#[cfg(test)]
mod tests {
    /// Every byte, against RFC 9110's list: `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" /
    /// "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`.
    #[test]
    fn the_token_table_is_rfc_9110_s() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(super::is_tchar(b), rfc, "byte {b:#04x}");
        }
    }
}
