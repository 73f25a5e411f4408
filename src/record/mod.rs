//! Request ids and the access log: one structured event per request, written when the response
//! body is finished (or abandoned), so it can report the bytes that really went out.

pub mod metrics;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::App;
use crate::forward::ActivityId;
use crate::forward::body::Counted;
use crate::forward::rewrite::X_REQUEST_ID;
use crate::gate::Caller;
use crate::listen::Peer;
use crate::record::metrics::RequestLabels;
use crate::uem::mapping;

/// The id of the request being served, as an extension for handlers that answer with errors.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// Set by the forwarding handler: how long the upstream took to send response headers.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);

/// The caller's `x-request-id` when it is a sane token (1 to 128 visible ASCII characters),
/// otherwise a new random one. The id goes upstream and comes back on the response.
fn request_id(req: &Request) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID)
        && (1..=128).contains(&v.len())
        && v.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return v.clone();
    }
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::try_from(id).expect("hex is a valid header value")
}

/// The middleware: assigns the id, counts bytes both ways, and arranges the log event and the
/// request's metrics.
pub async fn middleware(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    app.metrics.started();
    let id = request_id(&req);
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let peer = req.extensions().get::<Peer>().cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req = req.map(|b| Body::new(Counted::new(b, bytes_in.clone())));

    // Debug lines written while serving the request carry its id through this span.
    let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or(""));
    let mut response = next.run(req).instrument(span).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    let upstream = response.extensions().get::<UpstreamLatency>().map(|u| u.0);
    let caller = response.extensions().get::<Caller>().map(|c| c.0.clone());
    let activity_id = response.extensions().get::<ActivityId>().map(|a| a.0.clone());
    let status = response.status().as_u16();
    let expected = expected_length(&response);
    // hyper sends no body for these, and may never poll an empty one: complete as they stand.
    let bodiless = method == Method::HEAD || matches!(status, 100..=199 | 204 | 304);
    response.map(|inner| {
        let complete = bodiless || inner.is_end_stream() || expected == Some(0);
        let record = Record {
            app,
            id,
            peer,
            caller,
            activity_id,
            method,
            path,
            status,
            upstream,
            started,
            bytes_in,
            bytes_out: 0,
            complete,
        };
        Body::new(Logged { inner, record, expected })
    })
}

/// The body length the caller was promised, when there is one: hyper stops polling a body once it
/// has sent that many bytes, so reaching it is how the end of such a body is seen.
fn expected_length(response: &Response) -> Option<u64> {
    let header = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    header.or(response.body().size_hint().exact())
}

struct Record {
    app: Arc<App>,
    id: HeaderValue,
    peer: Option<Peer>,
    /// Why the caller was let in (audit): `loopback`, `uid=N`, or the allow-list entry.
    caller: Option<String>,
    /// UEM's id of a failed API call, from its error body.
    activity_id: Option<String>,
    method: Method,
    path: String,
    status: u16,
    upstream: Option<Duration>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    complete: bool,
}

impl Drop for Record {
    fn drop(&mut self) {
        // Milliseconds to the microsecond: precise enough, and short in text logs.
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: "uem_proxy::access",
            request_id = self.id.to_str().unwrap_or(""),
            peer = self.peer.as_ref().map(tracing::field::display),
            caller = self.caller.as_deref(),
            activity_id = self.activity_id.as_deref(),
            method = %self.method,
            path = %self.path,
            status = self.status,
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.started.elapsed()),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            complete = self.complete,
            "request"
        );
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let labels = RequestLabels {
            method: method_label(&self.method),
            category: category(&self.method, &self.path),
            status_class: status_class(self.status),
        };
        self.app.metrics.finished(labels, self.started.elapsed(), self.upstream, (bytes_in, self.bytes_out));
    }
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

fn category(method: &Method, path: &str) -> &'static str {
    if path.starts_with("/_proxy") {
        return "proxy";
    }
    mapping::required(method, path).map_or("unknown", |r| r.permission.category)
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

/// The response body, counted; its drop writes the access-log event. The body is complete when
/// it ended (or reached its promised length) without an error; dropped before that, it is not.
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
