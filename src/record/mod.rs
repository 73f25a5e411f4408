//! The record of a request: one value per request, filled on its way through the gate and the
//! forwarder, written once when the response body is finished (or abandoned), so it can report
//! the bytes that really went out: one access-log event, the request's metrics, and the
//! inspector's entry.

pub mod inspect;
pub mod line;
pub mod metrics;

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Instant;

use crate::gate::Caller;
use crate::gate::target::is_own;
use crate::listen::Peer;
use crate::listen::intake::Intake;
use crate::uem::mapping;
use metrics::{Metrics, RequestLabels, TenantLabel};

/// The id of the request being served, for the proxy's own endpoints that answer with errors.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// The status recorded for a request whose caller left before it was answered.
pub const CALLER_LEFT: u16 = 499;

/// What is known of one request, filled as it is served.
pub struct Record {
    metrics: Arc<Metrics>,
    pub id: HeaderValue,
    pub peer: Peer,
    /// Why the caller was let in (audit); `None` when it was not.
    pub caller: Option<Caller>,
    /// The tenant served, when the proxy serves `[tenants]`.
    pub tenant: Option<std::sync::Arc<str>>,
    /// UEM's id of a failed API call, from its error body.
    pub activity_id: Option<Box<str>>,
    pub method: Method,
    /// The target as the caller sent it; only its path is logged.
    pub uri: Uri,
    /// The permission category, for the metrics, when the forwarder mapped the target; the
    /// others are worked out from the path when the record is written.
    pub category: Option<&'static str>,
    /// The catalogue permission the request needs, when the forwarder mapped one.
    pub permission: Option<&'static str>,
    pub status: u16,
    /// How long the upstream took to send response headers.
    pub upstream: Option<Duration>,
    pub started: Instant,
    /// The request body's bytes, counted as the body is read (`None`: it had none).
    pub bytes_in: Option<Arc<Intake>>,
    pub bytes_out: u64,
    pub complete: bool,
    /// What the inspector keeps of this request; `None` when it is off.
    pub capture: Option<Box<inspect::Capture>>,
}

impl Record {
    /// Starts the record of a request that arrived at `started`; counts it in flight.
    pub fn start(
        metrics: Arc<Metrics>,
        id: HeaderValue,
        peer: Peer,
        method: Method,
        uri: Uri,
        started: Instant,
    ) -> Record {
        metrics.started();
        Record {
            metrics,
            id,
            peer,
            caller: None,
            tenant: None,
            activity_id: None,
            method,
            uri,
            category: None,
            permission: None,
            status: 0,
            upstream: None,
            started,
            bytes_in: None,
            bytes_out: 0,
            complete: false,
            capture: None,
        }
    }

    /// Hands the record to the response's body, which writes it when it is finished or dropped.
    pub fn finish(mut self, response: Response) -> Response {
        self.status = response.status().as_u16();
        let expected = expected_length(&response);
        // hyper sends no body for these, and may never poll an empty one: complete as they stand.
        let bodiless = self.method == Method::HEAD || matches!(self.status, 100..=199 | 204 | 304);
        if let Some(capture) = &mut self.capture {
            capture.response(response.status(), response.headers());
        }
        response.map(|inner| {
            self.complete = bodiless || inner.is_end_stream() || expected == Some(0);
            Body::new(Logged { inner, record: self, expected })
        })
    }
}

/// The body length the caller was promised, when there is one: hyper stops polling a body once it
/// has sent that many bytes, so reaching it is how the end of such a body is seen.
fn expected_length(response: &Response) -> Option<u64> {
    let header = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    header.or(response.body().size_hint().exact())
}

impl Drop for Record {
    fn drop(&mut self) {
        // Milliseconds to the microsecond: precise enough, and short in text logs.
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let total = self.started.elapsed();
        let bytes_in = self.bytes_in.as_ref().map_or(0, |intake| intake.bytes());
        if self.status == 0 {
            // The caller left before the answer was ready (nginx's 499).
            self.status = CALLER_LEFT;
        }
        line::Access {
            request_id: self.id.to_str().unwrap_or(""),
            peer: &self.peer,
            tenant: self.tenant.as_deref(),
            caller: self.caller.as_ref().map(caller_text).as_deref(),
            activity_id: self.activity_id.as_deref(),
            method: &self.method,
            path: self.uri.path(),
            status: self.status,
            upstream_ms: self.upstream.map(ms),
            total_ms: ms(total),
            bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
        }
        .write();
        let labels = RequestLabels {
            tenant: TenantLabel(self.tenant.clone()),
            method: method_label(&self.method),
            category: self.category.unwrap_or_else(|| category(&self.method, self.uri.path())),
            status_class: status_class(self.status),
        };
        self.metrics.finished(labels, total, self.upstream, (bytes_in, self.bytes_out));
        if let Some(capture) = self.capture.take() {
            capture.finish(inspect::capture::Finished {
                request_id: self.id.to_str().unwrap_or(""),
                method: &self.method,
                uri: &self.uri,
                status: self.status,
                total,
                upstream: self.upstream,
                bytes_in,
                bytes_out: self.bytes_out,
                complete: self.complete,
                caller: self.caller.as_ref().map(caller_text),
                permission: self.permission,
                activity_id: self.activity_id.as_deref(),
                tenant: self.tenant.clone(),
            });
        }
    }
}

/// The caller as a string, so that the text log quotes it as it always has (`caller="loopback"`);
/// only an allow-list entry or a user id is formatted.
fn caller_text(caller: &Caller) -> Cow<'static, str> {
    match caller {
        Caller::Loopback => Cow::Borrowed("loopback"),
        Caller::Unix => Cow::Borrowed("unix"),
        other => Cow::Owned(other.to_string()),
    }
}

/// The category of a request the forwarder did not map: `proxy` for the proxy's own endpoints,
/// otherwise the permission family of its path as sent.
fn category(method: &Method, path: &str) -> &'static str {
    if is_own(path) {
        return "proxy";
    }
    mapping::required(method, path).map_or("unknown", |r| r.permission.category)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The response body, counted; its drop writes the record. The body is complete when it ended
/// (or reached its promised length) without an error; dropped before that, it is not.
struct Logged {
    inner: Body,
    record: Record,
    expected: Option<u64>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let this = &mut *self;
        match &frame {
            Some(Ok(f)) => {
                if let (Some(capture), Some(data)) = (&mut this.record.capture, f.data_ref()) {
                    capture.response_data(data);
                }
                this.record.bytes_out += f.data_ref().map_or(0, |d| d.len() as u64);
                // Trailers are a body's last frame: hyper asks for nothing after them.
                let ended = f.is_trailers() && this.expected.is_none_or(|n| n == this.record.bytes_out);
                this.record.complete =
                    ended || this.expected == Some(this.record.bytes_out) || this.inner.is_end_stream();
            }
            None => this.record.complete = this.expected.is_none_or(|n| n == this.record.bytes_out),
            Some(Err(_)) => this.record.complete = false,
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
