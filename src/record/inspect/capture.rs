//! What the inspector keeps of one request while it is served: the redacted headers, and in
//! `bodies` mode the first bytes of each body, copied as they stream past (never held back).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};
use serde::Serialize;

use super::{BODY_LIMIT, Entry, InspectMode, Inspector, Secrets, hide, redact_pairs};
use crate::forward::X_UEM_PROXY_PERMISSION;

/// The start of a body, as kept.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    /// The bytes as text; `None` when they are not UTF-8.
    pub text: Option<String>,
    /// How many bytes were kept.
    pub kept: usize,
    /// Whether the body was longer than what was kept.
    pub truncated: bool,
}

impl Kept {
    /// Shows each of `secrets` as [`REDACTED`](super::REDACTED) wherever the text holds it, in
    /// any spelling, and a start of one where the text was cut.
    pub(super) fn hide(&mut self, secrets: &[String]) {
        if let Some(text) = &mut self.text
            && let Cow::Owned(hidden) = hide::hide(text, secrets, self.truncated)
        {
            *text = hidden;
        }
    }

    /// `bytes`, the start of a body of `total` bytes.
    pub fn of(bytes: &[u8], total: u64) -> Kept {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => Some(text.to_owned()),
            // Cut inside a character at the limit: the text up to it.
            Err(e) if e.error_len().is_none() && total > bytes.len() as u64 => {
                Some(String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned())
            }
            Err(_) => None,
        };
        Kept { text, kept: bytes.len(), truncated: total > bytes.len() as u64 }
    }
}

/// The first [`BODY_LIMIT`] bytes of a body, filled as it streams.
#[derive(Default)]
struct Start(Vec<u8>);

impl Start {
    fn keep(&mut self, data: &[u8]) {
        let room = BODY_LIMIT.saturating_sub(self.0.len());
        self.0.extend_from_slice(&data[..room.min(data.len())]);
    }
}

/// What an exchange saw, as text in one allocation: both header blocks (`name:value\n` each,
/// shown redacted only when read), then the request id, the path and the query. Copied rather
/// than kept as maps: a map is several allocations to make and to free, and its values share
/// their connection's read buffer, which a kept map would hold on to.
#[derive(Default)]
struct Seen {
    text: Vec<u8>,
    /// Where the request headers, the response headers, the id and the path end.
    ends: [usize; 4],
    has_query: bool,
}

impl Seen {
    fn headers(&mut self, headers: &HeaderMap) {
        for (name, value) in headers {
            self.text.extend_from_slice(name.as_str().as_bytes());
            self.text.push(b':');
            self.text.extend_from_slice(value.as_bytes());
            // A header value holds no line feed.
            self.text.push(b'\n');
        }
    }

    fn part(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.text[start..self.ends[k]]
    }

    fn text(&self, k: usize) -> &str {
        // Only `str`s went into these parts.
        std::str::from_utf8(self.part(k)).unwrap_or("")
    }

    fn header_pairs(&self, k: usize) -> impl Iterator<Item = (&str, &[u8])> {
        self.part(k).split(|b| *b == b'\n').filter(|line| !line.is_empty()).map(|line| {
            let colon = line.iter().position(|b| *b == b':').unwrap_or(line.len());
            let name = std::str::from_utf8(&line[..colon]).unwrap_or("");
            (name, line.get(colon + 1..).unwrap_or_default())
        })
    }

    fn query(&self) -> Option<&str> {
        self.has_query.then(|| std::str::from_utf8(&self.text[self.ends[3]..]).unwrap_or(""))
    }
}

/// One request's capture, boxed in its record so that a record without one stays small.
pub struct Capture {
    inspector: Arc<Inspector>,
    time: SystemTime,
    seen: Seen,
    hint: Option<String>,
    /// Shared with the request body's [`Tee`]; `None` unless bodies are kept and there is one.
    request_body: Option<Arc<Mutex<Start>>>,
    /// `None` unless bodies are kept.
    response_body: Option<Start>,
}

/// What the record knows when it is written, for [`Capture::finish`].
pub struct Finished<'a> {
    pub request_id: &'a str,
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub status: u16,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
    pub caller: Option<Cow<'static, str>>,
    pub permission: Option<&'static str>,
    pub activity_id: Option<&'a str>,
    /// With several tenants, the one served.
    pub tenant: Option<Arc<str>>,
}

impl Capture {
    pub(super) fn new(inspector: Arc<Inspector>, mode: InspectMode, time: SystemTime, headers: &HeaderMap) -> Capture {
        let mut seen = Seen::default();
        let size: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 2).sum();
        // Room for the answer's headers, the id and the target too, most of the time.
        seen.text.reserve(size + 512);
        seen.headers(headers);
        seen.ends[0] = seen.text.len();
        Capture {
            inspector,
            time,
            seen,
            hint: None,
            request_body: None,
            response_body: (mode == InspectMode::Bodies).then(Start::default),
        }
    }

    /// The request body, its start copied as it is read when bodies are kept.
    pub fn tee_request(&mut self, body: Body) -> Body {
        if self.response_body.is_none() {
            return body;
        }
        let start = Arc::new(Mutex::new(Start::default()));
        self.request_body = Some(start.clone());
        Body::new(Tee { inner: body, start })
    }

    /// Notes the answer's headers as they go out.
    pub fn response(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.seen.text.truncate(self.seen.ends[0]);
        self.seen.headers(headers);
        if status == StatusCode::FORBIDDEN
            && let Some(permission) = headers.get(&X_UEM_PROXY_PERMISSION).and_then(|v| v.to_str().ok())
        {
            self.hint = Some(format!("the OAuth client's role lacks the permission '{permission}'"));
        }
    }

    /// Copies the start of the answer's body as it goes out.
    pub fn response_data(&mut self, data: &[u8]) {
        if let Some(start) = &mut self.response_body {
            start.keep(data);
        }
    }

    /// Hands the finished exchange to the inspector. What it shows is made only when it is read
    /// (redaction, hiding the credentials, formatting): a request pays for copies, no more.
    pub fn finish(self, done: Finished<'_>) {
        let request_body = self.request_body.map(|start| {
            let start = start.lock().expect("not poisoned");
            Kept::of(&start.0, done.bytes_in)
        });
        let response_body = self.response_body.map(|start| Kept::of(&start.0, done.bytes_out));
        // The credentials in use now: a later refresh must not uncover one this exchange holds.
        let secrets = self.inspector.snapshot(done.tenant.as_deref());
        let mut seen = self.seen;
        seen.ends[1] = seen.text.len();
        seen.text.extend_from_slice(done.request_id.as_bytes());
        seen.ends[2] = seen.text.len();
        seen.text.extend_from_slice(done.uri.path().as_bytes());
        seen.ends[3] = seen.text.len();
        if let Some(query) = done.uri.query() {
            seen.has_query = true;
            seen.text.extend_from_slice(query.as_bytes());
        }
        let exchange = Exchange {
            seq: 0,
            seen,
            time: self.time,
            method: done.method.clone(),
            status: done.status,
            total: done.total,
            upstream: done.upstream,
            bytes_in: done.bytes_in,
            bytes_out: done.bytes_out,
            complete: done.complete,
            tenant: done.tenant,
            caller: done.caller,
            permission: done.permission,
            hint: self.hint,
            activity_id: done.activity_id.map(str::to_owned),
            request_body,
            response_body,
            secrets,
        };
        self.inspector.push(exchange, self.time);
    }
}

/// One finished exchange as kept: what was seen, and the credentials to hide when it is shown.
pub struct Exchange {
    pub(super) seq: u64,
    seen: Seen,
    time: SystemTime,
    method: http::Method,
    pub(super) status: u16,
    total: Duration,
    upstream: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
    tenant: Option<Arc<str>>,
    caller: Option<Cow<'static, str>>,
    permission: Option<&'static str>,
    hint: Option<String>,
    activity_id: Option<String>,
    request_body: Option<Kept>,
    response_body: Option<Kept>,
    secrets: Secrets,
}

impl Exchange {
    /// Whether the exchange is shown where only `only`'s exchanges are (a tenant's own
    /// listener); everywhere when `None`.
    pub(super) fn shown_to(&self, only: Option<&str>) -> bool {
        only.is_none_or(|name| self.tenant.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(name)))
    }

    /// The exchange as the page, `/_proxy/requests` and the events show it: credential headers as
    /// `***`, credentials hidden wherever else they appear.
    pub fn entry(&self) -> Entry {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        // An API that echoes the request's headers in its body, or puts a token in a `Location`,
        // would show the credentials the proxy injects.
        let secrets = self.secrets.strings(self.tenant.as_deref());
        let hidden = |text: &str| hide::hide(text, &secrets, false).into_owned();
        let headers = |k: usize| {
            let mut shown = redact_pairs(self.seen.header_pairs(k));
            for (_, value) in shown.iter_mut() {
                if let Cow::Owned(hidden) = hide::hide(value, &secrets, false) {
                    *value = hidden;
                }
            }
            shown
        };
        let mut request_body = self.request_body.clone();
        let mut response_body = self.response_body.clone();
        request_body.iter_mut().chain(response_body.iter_mut()).for_each(|kept| kept.hide(&secrets));
        Entry {
            seq: self.seq,
            request_id: self.seen.text(2).to_owned(),
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            method: self.method.to_string(),
            path: self.seen.text(3).to_owned(),
            query: self.seen.query().map(|query| hidden(&hide::query(query))),
            status: self.status,
            total_ms: ms(self.total),
            upstream_ms: self.upstream.map(ms),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
            tenant: self.tenant.as_deref().map(str::to_owned),
            caller: self.caller.as_deref().map(str::to_owned),
            permission: self.permission,
            hint: self.hint.clone(),
            activity_id: self.activity_id.clone(),
            request_headers: headers(0),
            response_headers: headers(1),
            request_body,
            response_body,
        }
    }
}

/// A request body that copies its first bytes into `start` as they pass.
struct Tee {
    inner: Body,
    start: Arc<Mutex<Start>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
            && let Some(data) = data
        {
            let mut start = self.start.lock().expect("not poisoned");
            if start.0.len() < BODY_LIMIT {
                start.keep(data);
            }
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
