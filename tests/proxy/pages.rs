//! `GET /_proxy/all/…`: every page of a list in one answer, against the sandbox and against a
//! mock API that fails where a test wants it to.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{Proxy, TokenService, client, proxy_for_sandbox, sandbox_options, spawn, start_sandbox};

async fn sandbox_proxy(devices: usize, extra: &[(&str, &str)]) -> Proxy {
    let mut options = sandbox_options();
    options.devices = devices;
    let (base, _) = start_sandbox(options).await;
    proxy_for_sandbox(&base, extra).await
}

fn ids(lines: &[Value]) -> HashSet<u64> {
    lines.iter().map(|d| d["Id"]["Value"].as_u64().expect("an id")).collect()
}

#[tokio::test]
async fn every_device_arrives_once_as_ndjson_with_the_total() {
    let proxy = sandbox_proxy(1234, &[]).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?pagesize=100", proxy.url);
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(response.headers()["x-uem-proxy-total"], "1234");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1234);
    assert_eq!(ids(&lines).len(), 1234, "no device twice");
}

#[tokio::test]
async fn a_page_size_over_the_maximum_is_clamped_by_the_api_and_still_pages_through() {
    // The sandbox serves at most 1000 a page, as UEM does, and says so in PageSize.
    let proxy = sandbox_proxy(2500, &[]).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?pagesize=5000", proxy.url);
    let text = client().get(url).send().await.unwrap().text().await.unwrap();
    assert_eq!(text.lines().count(), 2500);
}

#[tokio::test]
async fn json_is_one_document_and_csv_has_dotted_columns() {
    let proxy = sandbox_proxy(120, &[]).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?pagesize=50", proxy.url);
    let doc: Value =
        client().get(&url).header("accept", "application/json").send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["Devices"].as_array().unwrap().len(), 120);
    assert_eq!(doc["Total"], 120);

    let response = client().get(&url).header("accept", "text/csv").send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let text = response.text().await.unwrap();
    let mut rows = text.split("\r\n").filter(|r| !r.is_empty());
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert!(header.contains(&"Id.Value"), "{header:?}");
    assert_eq!(rows.count(), 120);
}

#[tokio::test]
async fn an_empty_list_is_an_empty_answer() {
    let proxy = sandbox_proxy(50, &[]).await;
    // The sandbox answers 204 when nothing matches, as UEM does.
    let url = format!("{}/_proxy/all/api/mdm/devices/search?user=nobody-at-all", proxy.url);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-uem-proxy-total"], "0");
    assert_eq!(response.text().await.unwrap(), "");
}

#[tokio::test]
async fn max_pages_ends_the_transfer_as_a_failure_not_a_short_list() {
    let proxy = sandbox_proxy(1000, &[("UEM_PROXY_MAX_PAGES", "3")]).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?pagesize=100", proxy.url);
    let (lines, failed) = read_lines(client().get(url).send().await.unwrap()).await;
    assert!(failed, "the transfer must be cut");
    assert_eq!(lines, 300);
}

#[tokio::test]
async fn a_denied_list_is_refused_before_any_page() {
    let file = "[policy]\ndeny = [\"REST API Devices Read\"]\n";
    let mut options = sandbox_options();
    options.devices = 10;
    let (base, _) = start_sandbox(options).await;
    let env = [("UEM_CLIENT_ID", crate::support::SANDBOX_ID), ("UEM_CLIENT_SECRET", crate::support::SANDBOX_SECRET)];
    let proxy = Proxy::start_with_file(&base, &format!("{base}/connect/token"), Some(file), &env).await;
    let response = client().get(format!("{}/_proxy/all/api/mdm/devices/search", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "policy_denied");
    // Not a way to reach the proxy's own endpoints either, nor to write.
    let own = client().get(format!("{}/_proxy/all/_proxy/status", proxy.url)).send().await.unwrap();
    assert_eq!(own.status(), 404);
    let post = client().post(format!("{}/_proxy/all/api/mdm/devices/search", proxy.url)).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// A list of `total` numbered items; `fail_at` answers 500 from that page on; page 0 answers
/// `first_status` when it is not 200.
#[derive(Clone)]
struct ListApi {
    total: u64,
    fail_at: u64,
    first_status: u16,
    calls: Arc<AtomicU64>,
    /// Bytes of padding in each item.
    pad: usize,
}

async fn list(State(api): State<ListApi>, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    api.calls.fetch_add(1, Ordering::SeqCst);
    let page: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let size: u64 = q.get("pagesize").and_then(|p| p.parse().ok()).unwrap_or(500);
    if page == 0 && api.first_status != 200 {
        let body = json!({ "errorCode": 1001, "message": "no", "activityId": "act-1" }).to_string();
        return (StatusCode::from_u16(api.first_status).unwrap(), [("content-type", "application/json")], body)
            .into_response();
    }
    if page >= api.fail_at {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let items: Vec<Value> = (page * size..((page + 1) * size).min(api.total))
        .map(|i| json!({ "n": i, "pad": "x".repeat(api.pad) }))
        .collect();
    axum::Json(json!({ "page": page, "pagesize": size, "total": api.total, "Things": items })).into_response()
}

async fn list_proxy(api: ListApi) -> Proxy {
    let addr = spawn(Router::new().route("/api/mdm/devices/search", get(list)).with_state(api)).await;
    let tokens = TokenService::default();
    Proxy::start(&format!("http://{addr}"), &tokens.start().await, &[("UEM_PROXY_MAX_PAGES", "100000")]).await
}

fn list_api(total: u64, fail_at: u64, first_status: u16) -> ListApi {
    ListApi { total, fail_at, first_status, calls: Arc::default(), pad: 0 }
}

/// Reads NDJSON lines until the body ends; whether it broke off.
async fn read_lines(response: reqwest::Response) -> (usize, bool) {
    let mut stream = response.bytes_stream();
    let mut text = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    (text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), failed)
}

#[tokio::test]
async fn a_failure_after_page_zero_cuts_the_transfer() {
    let api = list_api(1000, 3, 200);
    let proxy = list_proxy(api.clone()).await;
    let response = client().get(format!("{}/_proxy/all/api/mdm/devices/search?pagesize=100", proxy.url)).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-uem-proxy-total"], "1000");
    let (lines, failed) = read_lines(response).await;
    assert!(failed, "page 3 failed: the transfer must not look complete");
    assert_eq!(lines, 300);
    assert_eq!(api.calls.load(Ordering::SeqCst), 4, "no page after the failed one");
}

#[tokio::test]
async fn page_zeros_failure_is_the_apis_answer_with_the_permission_hint() {
    let proxy = list_proxy(list_api(1000, u64::MAX, 403)).await;
    let response = client().get(format!("{}/_proxy/all/api/mdm/devices/search", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().contains_key("x-uem-proxy-permission"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["activityId"], "act-1");
}

#[tokio::test]
async fn names_in_any_case_and_the_callers_start_page_are_honoured() {
    let api = list_api(950, u64::MAX, 200);
    let proxy = list_proxy(api.clone()).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?PageSize=100&Page=5", proxy.url);
    let text = client().get(url).send().await.unwrap().text().await.unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["n"], 500);
    assert_eq!(text.lines().count(), 450);
    // Pages 5 to 9; page 9 is short (50 of 100) and `total` is reached: no call for page 10.
    assert_eq!(api.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_next_page_is_fetched_ahead_but_no_further_and_not_after_the_caller_left() {
    // 1000 pages of about 4 MB: far more than socket buffers hold.
    let mut api = list_api(100_000, u64::MAX, 200);
    api.pad = 40_000;
    let proxy = list_proxy(api.clone()).await;
    let url = format!("{}/_proxy/all/api/mdm/devices/search?pagesize=100", proxy.url);
    let response = client().get(url).send().await.unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let calls = || api.calls.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while calls() < 2 {
        assert!(std::time::Instant::now() < deadline, "page 1 was not fetched ahead");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Nothing read: the fetcher stops a page or so ahead of what the sockets hold.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ahead = calls();
    assert!(ahead <= 8, "{ahead} pages fetched for a caller that read one");
    drop(stream);
    let left = calls();
    // No signal says "nothing more happens": the fetcher must settle, and stay still.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = calls();
    assert!(after <= left + 2, "{} pages fetched after the caller left", after - left);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(calls(), after, "still fetching after the caller left");
}
