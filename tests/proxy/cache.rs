//! The cache for reads (`[cache]`): hits and misses, single flight, stale answers while the API
//! fails, the caller's `Cache-Control`, purges after writes, the policy first, memory bounds,
//! metrics and reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::support::{Proxy, TokenService, client, spawn};

/// A mock API: every answer says how many requests it has seen (`{"n": N}`), after `delay`;
/// while `status` is not 200 it answers with that status instead (0: it closes the connection).
#[derive(Clone, Default)]
struct Api {
    calls: Arc<AtomicU64>,
    status: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    /// Bytes of padding in each answer.
    pad: Arc<AtomicU64>,
}

impl Api {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer_with(&self, status: u64) {
        self.status.store(status, Ordering::SeqCst);
    }
}

async fn answer(State(api): State<Api>, request: Request) -> Response {
    let n = api.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = api.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = api.status.load(Ordering::SeqCst);
    if status != 0 && status != 200 {
        let status = StatusCode::from_u16(status as u16).unwrap();
        return (status, [("content-type", "application/json")], r#"{"errorCode":1,"message":"no"}"#).into_response();
    }
    let pad = "x".repeat(api.pad.load(Ordering::SeqCst) as usize);
    let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let (user, encoding) = (header("x-user"), header("accept-encoding"));
    let body =
        format!(r#"{{"n":{n},"method":"{}","user":"{user}","encoding":"{encoding}","pad":"{pad}"}}"#, request.method());
    // No connection is kept: a stopped API is one that cannot be reached.
    let mut response = ([("content-type", "application/json"), ("connection", "close")], body).into_response();
    // `…/vary` answers differ by caller and by encoding; `…/vary-all` by anything.
    let path = request.uri().path();
    let vary = if path.ends_with("/vary") {
        Some("Accept-Encoding, X-User")
    } else {
        path.ends_with("/vary-all").then_some("*")
    };
    if let Some(vary) = vary {
        response.headers_mut().insert("vary", http::HeaderValue::from_static(vary));
    }
    response
}

const RULES: &str = r#"
[cache]
max_bytes = "1MiB"
[[cache.rules]]
path = "/api/system/info"
ttl = "10m"
[[cache.rules]]
path = "/api/system/info/vary"
ttl = "10m"
[[cache.rules]]
path = "/api/system/users/**"
ttl = "10m"
[[cache.rules]]
path = "/api/mdm/devices/**"
ttl = "300ms"
stale_if_error = "10m"
[[cache.rules]]
path = "/api/mdm/profiles/**"
ttl = "300ms"
"#;

async fn start(file: &str) -> (Proxy, Api) {
    let api = Api::default();
    api.answer_with(200);
    let addr = spawn(Router::new().fallback(answer).with_state(api.clone())).await;
    let tokens = TokenService::default();
    let proxy = Proxy::start_with_file(&format!("http://{addr}"), &tokens.start().await, Some(file), &[]).await;
    (proxy, api)
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, String, String) {
    let mut request = client().get(format!("{}{path}", proxy.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let (status, cache, age) = (response.status(), header("x-uem-proxy-cache"), header("age"));
    assert!(response.headers().contains_key("x-request-id"));
    (status, cache, age, response.text().await.unwrap())
}

/// Waits past a 300 ms time to live: expiry is the behaviour under test, there is no signal.
async fn expire() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_second_read_is_a_hit_with_its_age_and_its_own_request_id() {
    let (proxy, api) = start(RULES).await;
    let (status, cache, age, first) = get(&proxy, "/api/system/info", &[]).await;
    assert_eq!((status.as_u16(), cache.as_str(), age.as_str()), (200, "miss", "0"));
    let response = client().get(format!("{}/api/system/info", proxy.url)).header("x-request-id", "mine-2").send().await;
    let response = response.unwrap();
    assert_eq!(response.headers()["x-uem-proxy-cache"], "hit");
    assert_eq!(response.headers()["x-request-id"], "mine-2");
    assert!(response.headers().contains_key("age"));
    assert_eq!(response.text().await.unwrap(), first);
    assert_eq!(api.calls(), 1);
    // Another query, another Accept: other entries.
    assert_eq!(get(&proxy, "/api/system/info?x=1", &[]).await.1, "miss");
    assert_eq!(get(&proxy, "/api/system/info", &[("accept", "application/json;version=2")]).await.1, "miss");
    // A HEAD is answered from the GET's entry.
    let head = client().head(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
    assert_eq!(head.headers()["x-uem-proxy-cache"], "hit");
    assert_eq!(api.calls(), 3);
    // Outside every rule: no header, every time upstream.
    let (_, cache, _, _) = get(&proxy, "/api/mdm/users/1", &[]).await;
    assert_eq!(cache, "");
}

#[tokio::test]
async fn an_answer_that_varies_answers_only_requests_alike() {
    let (proxy, api) = start(RULES).await;
    let user = |name: &'static str| [("x-user", name)];
    let field = |body: &str, name: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()[name].clone();
    // Alice's answer is kept, and answers alice.
    let (_, cache, _, alices) = get(&proxy, "/api/system/info/vary", &user("alice")).await;
    assert_eq!((cache.as_str(), field(&alices, "user")), ("miss", "alice".into()));
    assert_eq!(get(&proxy, "/api/system/info/vary", &user("alice")).await.3, alices);
    // Never bob, nor a caller without the header: each gets its own from the API.
    for who in [&user("bob")[..], &[]] {
        let (_, cache, _, body) = get(&proxy, "/api/system/info/vary", who).await;
        assert_eq!(cache, "miss", "{who:?}");
        assert_eq!(field(&body, "user"), who.first().map_or("", |(_, v)| *v), "{who:?}");
    }
    // Nor as a HEAD, nor as a stale answer while the API fails.
    let head = client().head(format!("{}/api/system/info/vary", proxy.url)).header("x-user", "bob").send().await;
    assert_eq!(head.unwrap().headers()["x-uem-proxy-cache"], "miss");
    get(&proxy, "/api/mdm/devices/vary", &user("alice")).await;
    expire().await;
    api.answer_with(503);
    let (status, cache, _, _) = get(&proxy, "/api/mdm/devices/vary", &user("bob")).await;
    assert_eq!((status.as_u16(), cache.as_str()), (503, "miss"));
    assert_eq!(get(&proxy, "/api/mdm/devices/vary", &user("alice")).await.1, "stale", "bob took it away");
    api.answer_with(200);
    // A compressed answer never reaches a caller that did not ask for one, and each keeps its own.
    let gzip = [("accept-encoding", "gzip"), ("x-user", "alice")];
    let (_, cache, _, zipped) = get(&proxy, "/api/system/users/vary", &gzip).await;
    assert_eq!((cache.as_str(), field(&zipped, "encoding")), ("miss", "gzip".into()));
    let (_, cache, _, plain) = get(&proxy, "/api/system/users/vary", &user("alice")).await;
    assert_eq!((cache.as_str(), field(&plain, "encoding")), ("miss", "".into()));
    assert_eq!(get(&proxy, "/api/system/users/vary", &gzip).await.3, zipped);
    assert_eq!(get(&proxy, "/api/system/users/vary", &user("alice")).await.3, plain);
    // Every field of a header counts, as the API reads them all, whether it says Vary or not.
    let (_, cache, _, body) =
        get(&proxy, "/api/system/users/two", &[("accept-encoding", ""), ("accept-encoding", "gzip")]).await;
    assert_eq!((cache.as_str(), field(&body, "encoding")), ("miss", "".into()), "the mock reads the first");
    assert_eq!(get(&proxy, "/api/system/users/two", &[]).await.1, "miss");
    // A field the caller's Connection names is not sent: the entry is not alice's.
    let hidden = [("x-user", "alice"), ("connection", "X-User")];
    let (_, cache, _, nobodys) = get(&proxy, "/api/system/users/hidden/vary", &hidden).await;
    assert_eq!((cache.as_str(), field(&nobodys, "user")), ("miss", "".into()));
    let (_, cache, _, body) = get(&proxy, "/api/system/users/hidden/vary", &user("alice")).await;
    assert_eq!((cache.as_str(), field(&body, "user")), ("miss", "alice".into()));
    // `Vary: *`: kept for nobody.
    let calls = api.calls();
    for _ in 0..2 {
        assert_eq!(get(&proxy, "/api/system/users/vary-all", &[]).await.1, "miss");
    }
    assert_eq!(api.calls(), calls + 2);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let (proxy, api) = start(RULES).await;
    api.delay_ms.store(300, Ordering::SeqCst);
    let proxy = Arc::new(proxy);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { get(&proxy, "/api/system/info", &[]).await })
        })
        .collect();
    let mut labels = Vec::new();
    for task in tasks {
        let (status, cache, _, body) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(r#""n":1"#), "{body}");
        labels.push(cache);
    }
    assert_eq!(api.calls(), 1, "one upstream request for eight callers");
    assert_eq!(labels.iter().filter(|l| *l == "miss").count(), 1, "{labels:?}");
}

#[tokio::test]
async fn a_stale_entry_answers_while_the_api_throttles_or_fails() {
    let (proxy, api) = start(RULES).await;
    let (_, _, _, first) = get(&proxy, "/api/mdm/devices/search", &[]).await;
    expire().await;
    for status in [429, 503] {
        api.answer_with(status);
        let (code, cache, age, body) = get(&proxy, "/api/mdm/devices/search", &[]).await;
        assert_eq!((code.as_u16(), cache.as_str(), body.as_str()), (200, "stale", first.as_str()), "{status}");
        assert!(age.parse::<u64>().is_ok());
    }
    // A 404 is the answer, not a failure to stand in for.
    api.answer_with(404);
    assert_eq!(get(&proxy, "/api/mdm/devices/search", &[]).await.0, 404);
    // Without stale_if_error, the failure is passed on.
    api.answer_with(200);
    get(&proxy, "/api/mdm/profiles/search", &[]).await;
    expire().await;
    api.answer_with(429);
    let (code, cache, _, _) = get(&proxy, "/api/mdm/profiles/search", &[]).await;
    assert_eq!((code.as_u16(), cache.as_str()), (429, "miss"));
}

#[tokio::test]
async fn a_stale_entry_answers_while_the_api_cannot_be_reached() {
    let api = Api::default();
    api.answer_with(200);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, Router::new().fallback(answer).with_state(api)).await.unwrap();
    });
    let tokens = TokenService::default();
    let env = [("UEM_PROXY_UPSTREAM_TIMEOUT", "2s")];
    let proxy = Proxy::start_with_file(&format!("http://{addr}"), &tokens.start().await, Some(RULES), &env).await;
    let (_, _, _, first) = get(&proxy, "/api/mdm/devices/1", &[]).await;
    server.abort();
    let _ = server.await;
    expire().await;
    let (code, cache, _, body) = get(&proxy, "/api/mdm/devices/1", &[("connection", "close")]).await;
    assert_eq!((code.as_u16(), cache.as_str(), body), (200, "stale", first));
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_bypasses() {
    let (proxy, api) = start(RULES).await;
    assert_eq!(get(&proxy, "/api/system/info", &[("cache-control", "no-store")]).await.1, "bypass");
    assert_eq!(get(&proxy, "/api/system/info", &[]).await.1, "miss", "no-store kept nothing");
    let (_, cache, _, body) = get(&proxy, "/api/system/info", &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, "miss");
    assert!(body.contains(r#""n":3"#), "{body}");
    let (_, cache, _, kept) = get(&proxy, "/api/system/info", &[]).await;
    assert_eq!((cache.as_str(), kept), ("hit", body), "the refreshed answer is kept");
    assert_eq!(api.calls(), 3);
}

#[tokio::test]
async fn a_successful_write_purges_its_area_only() {
    let (proxy, api) = start(&RULES.replace("300ms", "10m")).await;
    get(&proxy, "/api/mdm/devices/7", &[]).await;
    get(&proxy, "/api/system/info", &[]).await;
    assert_eq!(get(&proxy, "/api/mdm/devices/7", &[]).await.1, "hit");
    let write = client().post(format!("{}/api/mdm/devices/7/commands?command=Lock", proxy.url)).send().await.unwrap();
    assert_eq!(write.status(), 200);
    assert!(write.headers().get("x-uem-proxy-cache").is_none());
    let (_, cache, _, body) = get(&proxy, "/api/mdm/devices/7", &[]).await;
    assert_eq!(cache, "miss", "a read after a write sees the API");
    assert!(body.contains(r#""n":4"#), "{body}");
    assert_eq!(get(&proxy, "/API/V1/System/info", &[]).await.1, "miss", "another spelling, another key");
    assert_eq!(get(&proxy, "/api/system/info", &[]).await.1, "hit", "another area stays");
    // A failed write purges nothing.
    api.answer_with(500);
    client().delete(format!("{}/api/mdm/devices/7", proxy.url)).send().await.unwrap();
    api.answer_with(200);
    assert_eq!(get(&proxy, "/api/mdm/devices/7", &[]).await.1, "hit");
}

#[tokio::test]
async fn a_request_the_policy_denies_is_never_answered_from_the_cache() {
    let file = format!(
        "{RULES}\n[policy]\n[[policy.rules]]\naction = \"deny\"\nmethods = [\"DELETE\"]\npath = \"/api/system/**\"\n"
    );
    let (proxy, api) = start(&file).await;
    get(&proxy, "/api/system/info", &[]).await;
    let (status, cache, _, body) = get(&proxy, "/api/system/info", &[("x-http-method-override", "DELETE")]).await;
    assert_eq!((status.as_u16(), cache.as_str()), (403, ""));
    assert!(body.contains("policy_denied"), "{body}");
    assert_eq!(api.calls(), 1);
}

#[tokio::test]
async fn memory_stays_within_max_bytes_and_the_metrics_say_so() {
    let file = RULES.replace("1MiB", "64KiB").replace("300ms", "10m");
    let (proxy, api) = start(&file).await;
    api.pad.store(4000, Ordering::SeqCst);
    for i in 0..60 {
        assert_eq!(get(&proxy, &format!("/api/system/info?i={i}"), &[]).await.0, 200);
    }
    get(&proxy, "/api/system/info?i=59", &[]).await;
    let metrics = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("uem_proxy_cache_held_bytes") <= 65536.0);
    assert!(value("uem_proxy_cache_held_bytes") > 0.0);
    assert!(value("uem_proxy_cache_evictions_total") > 0.0);
    assert_eq!(value("uem_proxy_cache_answers_total{result=\"miss\"}"), 60.0);
    assert_eq!(value("uem_proxy_cache_answers_total{result=\"hit\"}"), 1.0);
}

#[tokio::test]
async fn a_reload_that_changes_the_rules_empties_the_cache() {
    let tokens = TokenService::default();
    let token_url = tokens.start().await;
    let config = |file: &str| crate::support::config("http://127.0.0.1:9", &token_url, Some(file), &[]).unwrap();
    let local = uem_proxy::config::Listen::Tcp("127.0.0.1:0".parse().unwrap());
    let app = uem_proxy::app::App::new(config(RULES), local).unwrap();
    let cache = || app.settings.load().cache.clone().unwrap();
    let before = cache();
    let changes = app.apply(config(&format!("max_pages = 7\n{RULES}"))).await.unwrap();
    assert!(!changes.iter().any(|c| c.contains("cache")), "{changes:?}");
    assert!(Arc::ptr_eq(&before, &cache()), "the same rules keep the cache");
    let changes = app.apply(config(&RULES.replace("10m", "20m"))).await.unwrap();
    assert!(changes.iter().any(|c| c.contains("cache")), "{changes:?}");
    assert!(!Arc::ptr_eq(&before, &cache()), "other rules, another (empty) cache");
}
