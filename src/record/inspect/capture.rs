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

use super::{BODY_LIMIT, Entry, InspectMode, Inspector, hide, redact};
use crate::forward::X_UEM_PROXY_PERMISSION;

/// The start of a body, as kept.
#[derive(Debug, Serialize)]
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
    fn hide(&mut self, secrets: &[String]) {
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
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
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
    pub tenant: Option<&'a str>,
}

impl Capture {
    pub(super) fn new(inspector: Arc<Inspector>, mode: InspectMode, time: SystemTime, headers: &HeaderMap) -> Capture {
        Capture {
            inspector,
            time,
            request_headers: redact(headers),
            response_headers: Vec::new(),
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
        self.response_headers = redact(headers);
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

    /// Hands the finished exchange to the inspector.
    pub fn finish(self, done: Finished<'_>) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let mut request_body = self.request_body.map(|start| {
            let start = start.lock().expect("not poisoned");
            Kept::of(&start.0, done.bytes_in)
        });
        let mut response_body = self.response_body.map(|start| Kept::of(&start.0, done.bytes_out));
        // An API that echoes the request's headers in its body, or puts a token in a `Location`,
        // would show the credentials the proxy injects.
        let secrets = self.inspector.credentials(done.tenant);
        request_body.iter_mut().chain(response_body.iter_mut()).for_each(|kept| kept.hide(&secrets));
        let hidden = |text: &str| hide::hide(text, &secrets, false).into_owned();
        let mut request_headers = self.request_headers;
        let mut response_headers = self.response_headers;
        for (_, value) in request_headers.iter_mut().chain(response_headers.iter_mut()) {
            if let Cow::Owned(shown) = hide::hide(value, &secrets, false) {
                *value = shown;
            }
        }
        let entry = Entry {
            seq: 0,
            request_id: done.request_id.to_owned(),
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            method: done.method.to_string(),
            path: done.uri.path().to_owned(),
            query: done.uri.query().map(|query| hidden(&hide::query(query))),
            status: done.status,
            total_ms: ms(done.total),
            upstream_ms: done.upstream.map(ms),
            bytes_in: done.bytes_in,
            bytes_out: done.bytes_out,
            complete: done.complete,
            tenant: done.tenant.map(str::to_owned),
            caller: done.caller,
            permission: done.permission,
            hint: self.hint,
            activity_id: done.activity_id.map(str::to_owned),
            request_headers,
            response_headers,
            request_body,
            response_body,
        };
        self.inspector.push(entry, self.time);
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
