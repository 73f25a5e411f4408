//! Rewriting absolute URLs of the API host inside textual response bodies to the proxy's own
//! address, as a stream: a URL split between two pieces of the body is still found, and nothing
//! is held back longer than the length of one URL prefix.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http_body::{Body, Frame, SizeHint};

use super::rewrite::ProxyBase;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a response body is text the API may have put its own URLs in: JSON, XML or `text/*`,
/// not compressed.
pub fn is_rewritable(headers: &HeaderMap) -> bool {
    // Every field: `identity` in the first and `gzip` in a second is still gzip.
    let codings = headers.get_all(CONTENT_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if codings.map(<[u8]>::trim_ascii).any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity")) {
        return false;
    }
    let Some(media) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = media.split(';').next().unwrap_or("").trim().as_bytes();
    let starts = |p: &[u8]| media.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    let ends = |p: &[u8]| media.len() >= p.len() && media[media.len() - p.len()..].eq_ignore_ascii_case(p);
    starts(b"text/")
        || media.eq_ignore_ascii_case(b"application/json")
        || media.eq_ignore_ascii_case(b"application/xml")
        || ends(b"+json")
        || ends(b"+xml")
}

/// The API base to look for, plain and as JSON escapes it (`\/`), with a vectorised searcher
/// for each, so that a large text body costs little more than a copy. Made once per route:
/// every rewritten answer of the route shares it.
#[derive(Debug)]
pub struct Needles {
    from: [Box<[u8]>; 2],
    finders: [memchr::memmem::Finder<'static>; 2],
    longest: usize,
}

impl Needles {
    /// The needles for the API base `from` (like `https://as1.awmdm.com`).
    pub fn new(from: &str) -> Needles {
        let from = [Box::from(from.as_bytes()), escaped(from).into_bytes().into_boxed_slice()];
        let finders = [0, 1].map(|k| memchr::memmem::Finder::new(&from[k]).into_owned());
        let longest = from.iter().map(|f| f.len()).max().unwrap_or(1);
        Needles { from, finders, longest }
    }

    /// The first place at or after `at` where a base occurs, and which spelling it is.
    fn next(&self, buf: &[u8], at: usize) -> Option<(usize, usize)> {
        let found = self.finders.iter().enumerate().filter_map(|(k, f)| f.find(&buf[at..]).map(|p| (at + p, k)));
        found.min()
    }

    /// How many bytes at the end of `tail` could be the start of a base, to be held back until
    /// the next piece says.
    fn partial_tail(&self, tail: &[u8]) -> usize {
        (1..self.longest.min(tail.len() + 1))
            .rev()
            .find(|&n| self.from.iter().any(|from| from.starts_with(&tail[tail.len() - n..])))
            .unwrap_or(0)
    }
}

fn escaped(s: &str) -> String {
    s.replace('/', "\\/")
}

/// What a base found is replaced with: the proxy's own base, made into text only when a body
/// holds the API's (most bodies do not).
pub enum To {
    Text(String),
    Base(ProxyBase),
}

/// Finds the API base in a byte stream and replaces it, plain and as JSON escapes it (`\/`).
pub struct Replacer {
    needles: Arc<Needles>,
    to: To,
    /// `to` as text, plain and escaped, once a base has been found.
    replacements: Option<[Box<[u8]>; 2]>,
    carry: Vec<u8>,
}

impl Replacer {
    /// Replaces `from` (the API base, like `https://as1.awmdm.com`) with `to` (the proxy's).
    pub fn new(from: &str, to: &str) -> Replacer {
        Replacer::with(Arc::new(Needles::new(from)), To::Text(to.to_owned()))
    }

    /// Replaces what `needles` find with `to`.
    pub fn with(needles: Arc<Needles>, to: To) -> Replacer {
        Replacer { needles, to, replacements: None, carry: Vec::new() }
    }

    fn replacement(&mut self, k: usize) -> &[u8] {
        let to = &self.to;
        let made = self.replacements.get_or_insert_with(|| {
            let text = match to {
                To::Text(text) => text.clone(),
                To::Base(base) => base.text(),
            };
            [Box::from(text.as_bytes()), escaped(&text).into_bytes().into_boxed_slice()]
        });
        &made[k]
    }

    fn next(&self, buf: &[u8], at: usize) -> Option<(usize, usize)> {
        self.needles.next(buf, at)
    }

    fn partial_tail(&self, tail: &[u8]) -> usize {
        self.needles.partial_tail(tail)
    }

    /// Rewrites a whole body; returns it as it was, without copying, when the API's base does
    /// not occur in it (the usual case).
    pub fn rewrite_whole(&mut self, body: Bytes) -> Bytes {
        if self.next(&body, 0).is_none() {
            return body;
        }
        let mut out = self.push(&body);
        out.extend(self.finish());
        Bytes::from(out)
    }

    /// Whether `piece` can be sent on as it is: nothing is held back, no base occurs in it and
    /// its end cannot start one (most pieces of most bodies; no copy is made of them).
    pub fn passes(&self, piece: &[u8]) -> bool {
        self.carry.is_empty() && self.next(piece, 0).is_none() && self.partial_tail(piece) == 0
    }

    /// Takes the next piece; returns what can be sent on now.
    pub fn push(&mut self, piece: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(piece);
        self.scan(buf, false)
    }

    /// The rest, at the end of the body.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.carry);
        self.scan(buf, true)
    }

    fn scan(&mut self, buf: Vec<u8>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while let Some((at, k)) = self.next(&buf, i) {
            let end = at + self.needles.from[k].len();
            out.extend_from_slice(&buf[i..at]);
            if end == buf.len() && !last {
                // A whole base at the end: the next byte decides whether it is the API's host.
                self.carry = buf[at..].to_vec();
                return out;
            }
            let another_host = buf.get(end).is_some_and(|&b| continues_host(b));
            if another_host {
                out.extend_from_slice(&buf[at..end]);
            } else {
                out.extend_from_slice(self.replacement(k));
            }
            i = end;
        }
        let keep = if last { 0 } else { self.partial_tail(&buf[i..]) };
        out.extend_from_slice(&buf[i..buf.len() - keep]);
        self.carry = buf[buf.len() - keep..].to_vec();
        out
    }
}

/// A byte after the base that would make it another host or port (`.evil.net`, `:8443`).
fn continues_host(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':'
}

/// A response body passed through a [`Replacer`].
pub struct Rewritten<B> {
    inner: B,
    replacer: Replacer,
    finished: bool,
}

impl<B> Rewritten<B> {
    pub fn new(inner: B, replacer: Replacer) -> Self {
        Rewritten { inner, replacer, finished: false }
    }
}

impl<B> Body for Rewritten<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.replacer.passes(&data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(data) => {
                        let out = self.replacer.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    self.finished = true;
                    let out = self.replacer.finish();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> String {
        let mut r = Replacer::new("https://as1.awmdm.com", "http://localhost:8080");
        let mut out = Vec::new();
        for p in pieces {
            out.extend(r.push(p.as_bytes()));
        }
        out.extend(r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn urls_of_the_api_are_rewritten_wherever_the_pieces_split() {
        let body = r#"{"Self":"https://as1.awmdm.com/api/mdm/devices/5","Esc":"https:\/\/as1.awmdm.com\/api\/x","Other":"https://cn1.awmdm.com/x","Near":"https://as1.awmdm.com.evil.net/","Port":"https://as1.awmdm.com:8443/","End":"https://as1.awmdm.com"}"#;
        let expected = r#"{"Self":"http://localhost:8080/api/mdm/devices/5","Esc":"http:\/\/localhost:8080\/api\/x","Other":"https://cn1.awmdm.com/x","Near":"https://as1.awmdm.com.evil.net/","Port":"https://as1.awmdm.com:8443/","End":"http://localhost:8080"}"#;
        assert_eq!(run(&[body]), expected);
        for split in 1..body.len() {
            assert_eq!(run(&[&body[..split], &body[split..]]), expected, "split at {split}");
        }
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(run(&refs), expected, "one byte at a time");
    }

    #[test]
    fn a_whole_body_without_the_base_is_returned_as_it_was() {
        let mut r = Replacer::new("https://as1.awmdm.com", "http://localhost:8080");
        let body = Bytes::from_static(b"{\"Id\":1,\"Url\":\"https://cn1.awmdm.com\"}");
        let out = r.rewrite_whole(body.clone());
        assert_eq!(out.as_ptr(), body.as_ptr(), "not copied");
        let changed = r.rewrite_whole(Bytes::from_static(b"see https://as1.awmdm.com/api"));
        assert_eq!(&changed[..], b"see http://localhost:8080/api");
    }

    #[test]
    fn the_proxy_base_is_made_from_the_caller_s_host_and_prefix() {
        let needles = Arc::new(Needles::new("https://as1.awmdm.com"));
        let base =
            ProxyBase { https: true, host: http::HeaderValue::from_static("proxy:8443"), prefix: "/t/uat".into() };
        let mut r = Replacer::with(needles.clone(), To::Base(base));
        let out = r.rewrite_whole(Bytes::from_static(br#"["https://as1.awmdm.com/a","https:\/\/as1.awmdm.com\/b"]"#));
        assert_eq!(&out[..], br#"["https://proxy:8443/t/uat/a","https:\/\/proxy:8443\/t\/uat\/b"]"#);
        // One set of needles serves every answer of a route.
        let mut other = Replacer::with(needles, To::Text("http://localhost".into()));
        assert_eq!(&other.rewrite_whole(Bytes::from_static(b"https://as1.awmdm.com/c"))[..], b"http://localhost/c");
    }

    #[test]
    fn a_lone_prefix_at_the_end_is_kept() {
        assert_eq!(run(&["see https://as1.awm"]), "see https://as1.awm");
        assert_eq!(run(&["h"]), "h");
    }

    #[test]
    fn only_uncompressed_text_is_rewritten() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        assert!(is_rewritable(&headers(&[("content-type", "application/json; charset=utf-8")])));
        assert!(is_rewritable(&headers(&[("content-type", "application/json;version=2")])));
        assert!(is_rewritable(&headers(&[("content-type", "text/html")])));
        assert!(is_rewritable(&headers(&[("content-type", "application/problem+json")])));
        assert!(is_rewritable(&headers(&[("content-type", "Application/JSON")])));
        assert!(is_rewritable(&headers(&[("content-type", "TEXT/Plain")])));
        assert!(is_rewritable(&headers(&[("content-type", " application/vnd.x+JSON ; v=1")])));
        assert!(!is_rewritable(&headers(&[("content-type", "application/jsonx")])));
        assert!(!is_rewritable(&headers(&[("content-type", "application/octet-stream")])));
        assert!(!is_rewritable(&headers(&[("content-type", "application/json"), ("content-encoding", "gzip")])));
        assert!(!is_rewritable(&headers(&[])));
    }
}
