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

use super::{BODY_LIMIT, Entry, InspectMode, Inspector, Secrets, hide, redact};
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

/// One request's capture, boxed in its record so that a record without one stays small.
pub struct Capture {
    inspector: Arc<Inspector>,
    time: SystemTime,
    /// As received, shown redacted only when read: a request pays for a copy of its map, no more.
    request_headers: HeaderMap,
    response_headers: HeaderMap,
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
    pub caller: Option<String>,
    pub permission: Option<&'static str>,
    pub activity_id: Option<&'a str>,
    /// With several tenants, the one served.
    pub tenant: Option<Arc<str>>,
}

impl Capture {
    pub(super) fn new(inspector: Arc<Inspector>, mode: InspectMode, time: SystemTime, headers: &HeaderMap) -> Capture {
        Capture {
            inspector,
            time,
            request_headers: headers.clone(),
            response_headers: HeaderMap::new(),
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
        self.response_headers = headers.clone();
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
        let exchange = Exchange {
            seq: 0,
            request_id: done.request_id.to_owned(),
            time: self.time,
            method: done.method.clone(),
            uri: done.uri.clone(),
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
            request_headers: self.request_headers,
            response_headers: self.response_headers,
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
    request_id: String,
    time: SystemTime,
    method: http::Method,
    uri: http::Uri,
    pub(super) status: u16,
    total: Duration,
    upstream: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
    tenant: Option<Arc<str>>,
    caller: Option<String>,
    permission: Option<&'static str>,
    hint: Option<String>,
    activity_id: Option<String>,
    request_headers: HeaderMap,
    response_headers: HeaderMap,
    request_body: Option<Kept>,
    response_body: Option<Kept>,
    secrets: Secrets,
}

impl Exchange {
    /// The exchange as the page, `/_proxy/requests` and the events show it: credential headers as
    /// `***`, credentials hidden wherever else they appear.
    pub fn entry(&self) -> Entry {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        // An API that echoes the request's headers in its body, or puts a token in a `Location`,
        // would show the credentials the proxy injects.
        let secrets = self.secrets.strings(self.tenant.as_deref());
        let hidden = |text: &str| hide::hide(text, &secrets, false).into_owned();
        let headers = |map: &HeaderMap| {
            let mut shown = redact(map);
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
            request_id: self.request_id.clone(),
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            method: self.method.to_string(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(|query| hidden(&hide::query(query))),
            status: self.status,
            total_ms: ms(self.total),
            upstream_ms: self.upstream.map(ms),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
            tenant: self.tenant.as_deref().map(str::to_owned),
            caller: self.caller.clone(),
            permission: self.permission,
            hint: self.hint.clone(),
            activity_id: self.activity_id.clone(),
            request_headers: headers(&self.request_headers),
            response_headers: headers(&self.response_headers),
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
