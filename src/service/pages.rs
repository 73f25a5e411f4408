//! `GET /_proxy/all/<api path>`: every page of a UEM list in one answer, streamed as NDJSON, one
//! JSON document or CSV. Each page is a call of its own through [`Service::dispatch`] (tenant,
//! policy, cache, pacer, token), so it is paced and decided like any call.
//!
//! Page 0 decides the answer: its failure is passed on as the API sent it. Later pages are
//! fetched by a task one page ahead of what the caller reads (a channel of one page), so memory
//! stays at a few pages however long the list; a failure among them cuts the connection, so the
//! transfer is visibly truncated, and the log names the page.

mod encode;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Learnt, Service};
use crate::app::Settings;
use crate::error::ProxyError;
use crate::gate::target::{canonical_path, is_own};
use crate::request_id::X_REQUEST_ID;
use encode::{Format, Page, Writer};

/// Page 0's `Total`, when the API sent one.
pub static X_UEM_PROXY_TOTAL: HeaderName = HeaderName::from_static("x-uem-proxy-total");

/// Where paging starts: `/_proxy/all` followed by the API path.
const PREFIX: &str = "/_proxy/all";

/// The page size asked for when the caller names none.
const DEFAULT_PAGE_SIZE: u64 = 500;

/// The largest page read; a page is read whole to be split into items.
const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// The API path of a `/_proxy/all/…` request.
pub fn inner(path: &str) -> Option<&str> {
    path.strip_prefix(PREFIX).filter(|rest| rest.starts_with('/'))
}

/// Answers `/_proxy/all` + `inner`.
pub(super) async fn all(
    service: Service,
    settings: Arc<Settings>,
    parts: Parts,
    inner: String,
    https: bool,
    learnt: &mut Learnt,
) -> Result<Response, ProxyError> {
    if parts.method != Method::GET {
        return Err(ProxyError::MethodNotAllowed(parts.method));
    }
    if is_own(&canonical_path(&inner).map_err(ProxyError::BadTarget)?) {
        return Err(ProxyError::NotFound);
    }
    let format = Format::of(parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    let (start, size) = encode::paging(parts.uri.query()).map_err(ProxyError::BadTarget)?;
    let (start, size) = (start.unwrap_or(0), size.unwrap_or(DEFAULT_PAGE_SIZE));
    let template = Template::new(&parts, inner);
    let request_id = parts.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();

    let response =
        service.dispatch(&settings, &mut template.request(start, size)?, Body::empty(), https, learnt).await?;
    let first = match response.status() {
        StatusCode::OK => read_page(response).await?,
        StatusCode::NO_CONTENT => Page { key: None, items: Vec::new(), total: Some(0), page_size: None },
        // Page 0's failure, as the API sent it.
        _ => return Ok(response),
    };
    let total = first.total;
    let mut writer = Writer::new(format, &first);
    let mut chunk = writer.start();
    writer.items(&first.items, &mut chunk);
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Ok(Bytes::from(chunk))).expect("an empty channel has room");
    let state = Next { page: start, size, pages: 1, max_pages: settings.max_pages, total };
    let done = state.done(&first);
    let run = Run { service, settings, template, https, writer, state, tx, request_id };
    let task = tokio::spawn(run.pages(done));

    let mut response = Response::new(Body::new(Pages { rx, task }));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    if let Some(total) = total {
        headers.insert(X_UEM_PROXY_TOTAL.clone(), HeaderValue::from(total));
    }
    Ok(response)
}

/// Reads and parses one page.
async fn read_page(response: Response) -> Result<Page, ProxyError> {
    let bytes = match Limited::new(response.into_body(), MAX_PAGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, "a page's body failed");
            return Err(crate::forward::from_body(&*error));
        }
    };
    encode::page(&bytes).map_err(ProxyError::BadUpstreamAnswer)
}

/// The request every page is made from: the caller's headers, with `Accept` asking for JSON
/// (in the version the caller named), and the API path and query.
struct Template {
    headers: HeaderMap,
    path: String,
    query: Option<String>,
}

impl Template {
    fn new(parts: &Parts, path: String) -> Template {
        let mut headers = parts.headers.clone();
        let version = headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split([';', ',']).find_map(|p| p.trim().strip_prefix("version=").map(str::to_owned)));
        let accept = match version {
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
                format!("application/json;version={v}")
            }
            _ => "application/json".to_owned(),
        };
        headers.insert(ACCEPT, HeaderValue::try_from(accept).expect("a valid media type"));
        // Each page is a plain read: no body, and no condition that could answer 304.
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING, IF_NONE_MATCH, IF_MODIFIED_SINCE] {
            headers.remove(name);
        }
        Template { headers, path, query: parts.uri.query().map(str::to_owned) }
    }

    fn request(&self, page: u64, size: u64) -> Result<Parts, ProxyError> {
        let uri = format!("{}?{}", self.path, encode::with_page(self.query.as_deref(), page, size));
        let request = Request::get(uri).body(()).map_err(|_| ProxyError::BadTarget("the path cannot be paged"))?;
        let (mut parts, ()) = request.into_parts();
        parts.headers = self.headers.clone();
        Ok(parts)
    }
}

/// Where paging stands.
struct Next {
    /// The page last fetched.
    page: u64,
    /// The page size asked for.
    size: u64,
    /// Pages fetched so far.
    pages: u32,
    max_pages: u32,
    /// Page 0's `Total`.
    total: Option<u64>,
}

impl Next {
    /// Whether `page`, just fetched, was the last: empty, short (shorter than the size the API
    /// says it used, which may be smaller than asked), or reaching `Total`.
    fn done(&self, page: &Page) -> bool {
        let n = page.items.len() as u64;
        let size = page.page_size.filter(|s| *s > 0).unwrap_or(self.size);
        n == 0 || n < size || self.total.is_some_and(|t| (self.page + 1).saturating_mul(size) >= t)
    }
}

/// Why a transfer was cut after page 0.
#[derive(Debug, thiserror::Error)]
#[error("page {page} failed: {reason}")]
struct PageFailed {
    page: u64,
    reason: String,
}

type Chunk = Result<Bytes, PageFailed>;

/// The task that fetches pages 1, 2, … one ahead of the caller.
struct Run {
    service: Service,
    settings: Arc<Settings>,
    template: Template,
    https: bool,
    writer: Writer,
    state: Next,
    tx: mpsc::Sender<Chunk>,
    request_id: String,
}

impl Run {
    async fn pages(mut self, mut done: bool) {
        while !done {
            let page = self.state.page + 1;
            if self.state.pages >= self.state.max_pages {
                let reason = format!("the list has more than max_pages ({}) pages", self.state.max_pages);
                return self.fail(page, reason).await;
            }
            let fetched = match self.fetch(page).await {
                Ok(fetched) => fetched,
                Err(reason) => return self.fail(page, reason).await,
            };
            self.state.page = page;
            self.state.pages += 1;
            let Some(fetched) = fetched else { break };
            tracing::debug!(request_id = %self.request_id, page, items = fetched.items.len(), "page fetched");
            done = self.state.done(&fetched);
            if fetched.items.is_empty() {
                break;
            }
            let mut chunk = Vec::new();
            self.writer.items(&fetched.items, &mut chunk);
            drop(fetched);
            if self.tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                // The caller left.
                return;
            }
        }
        let end = self.writer.end(self.state.total);
        if !end.is_empty() {
            let _ = self.tx.send(Ok(Bytes::from(end))).await;
        }
    }

    /// One page; `None` for 204.
    async fn fetch(&self, page: u64) -> Result<Option<Page>, String> {
        let mut request = self.template.request(page, self.state.size).map_err(|e| e.to_string())?;
        let mut learnt = Learnt::default();
        let call = self.service.dispatch(&self.settings, &mut request, Body::empty(), self.https, &mut learnt);
        let response = call.await.map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => read_page(response).await.map(Some).map_err(|e| e.to_string()),
            StatusCode::NO_CONTENT => Ok(None),
            status => Err(format!("the API answered {status}")),
        }
    }

    async fn fail(self, page: u64, reason: String) {
        tracing::warn!(request_id = %self.request_id, page, %reason, "paging failed; the transfer is cut");
        let _ = self.tx.send(Err(PageFailed { page, reason })).await;
    }
}

/// The answer's body: the task's chunks. Dropped (the caller left), it stops the task.
struct Pages {
    rx: mpsc::Receiver<Chunk>,
    task: JoinHandle<()>,
}

impl http_body::Body for Pages {
    type Data = Bytes;
    type Error = PageFailed;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, PageFailed>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_path_follows_the_prefix() {
        assert_eq!(inner("/_proxy/all/api/mdm/devices/search"), Some("/api/mdm/devices/search"));
        assert_eq!(inner("/_proxy/all"), None);
        assert_eq!(inner("/_proxy/allx/api"), None);
        assert_eq!(inner("/_proxy/status"), None);
    }

    fn page(n: usize, page_size: Option<u64>) -> Page {
        Page { key: None, items: vec![serde_json::value::RawValue::NULL.to_owned(); n], total: None, page_size }
    }

    #[test]
    fn paging_stops_at_total_at_a_short_or_empty_page() {
        let next = |page, total| Next { page, size: 500, pages: 1, max_pages: 10, total };
        assert!(!next(0, Some(1200)).done(&page(500, None)));
        assert!(next(2, Some(1200)).done(&page(200, None)), "short");
        assert!(next(1, Some(1000)).done(&page(500, None)), "Total reached");
        assert!(next(3, None).done(&page(0, None)), "empty");
        assert!(!next(3, None).done(&page(500, None)), "no Total: until a short page");
        // The API clamped the size to 100: 100 items are a full page.
        assert!(!next(0, Some(1000)).done(&page(100, Some(100))));
        assert!(next(9, Some(1000)).done(&page(100, Some(100))));
    }
}
