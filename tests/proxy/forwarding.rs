//! Requests and responses as they cross the proxy: targets, headers, redirects, errors, admin.

use std::time::Duration;

use crate::support::{Proxy, TokenService, Upstream, client, raw, raw_json};

#[tokio::test]
async fn method_path_and_query_arrive_as_sent_with_the_token_and_the_upstream_host() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let target = "/API/v1/mdm/devices/search?user=a%20b&x=1&x=2&slash=%2F&plus=a+b&empty=&";
    let response = client()
        .patch(format!("{}{target}", proxy.url))
        .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
        .header("aw-tenant-code", "TENANTCODE")
        .body("{\"x\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.target, target);
    assert_eq!(seen.body.as_ref(), b"{\"x\":1}");
    assert_eq!(seen.headers["authorization"], "Bearer tok-1", "Basic auth replaced by the token");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    assert!(seen.headers.get("aw-tenant-code").is_none(), "a caller's API key is not passed on");
    let upstream_host = upstream.addr.lock().unwrap().unwrap().to_string();
    assert_eq!(seen.headers["host"], upstream_host.as_str());
}

#[tokio::test]
async fn every_method_is_forwarded() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client().request(method.clone(), format!("{}/api/x", proxy.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(upstream.last().method, method.as_str());
    }
}

#[tokio::test]
async fn a_path_that_looks_like_another_host_stays_on_the_api_host() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response =
        raw(proxy.addr, "GET //evil.example/steal?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = upstream.last();
    assert_eq!(seen.target, "/evil.example/steal?x=1", "empty segments are dropped: the path is canonical");
    let upstream_host = upstream.addr.lock().unwrap().unwrap().to_string();
    assert_eq!(seen.headers["host"], upstream_host.as_str());
}

#[tokio::test]
async fn dot_segments_are_resolved_before_forwarding() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response =
        raw(proxy.addr, "GET /api/mdm/../system/./info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.last().target, "/api/system/info");
}

#[tokio::test]
async fn an_absolute_form_target_goes_to_the_api_host_only() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    // The target's host must be one callers may name (a foreign one is refused: see security.rs);
    // its port, and the scheme, lead nowhere either.
    let response =
        raw(proxy.addr, "GET https://localhost:1/api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = upstream.last();
    assert_eq!(seen.target, "/api/x");
    let upstream_host = upstream.addr.lock().unwrap().unwrap().to_string();
    assert_eq!(seen.headers["host"], upstream_host.as_str());
}

#[tokio::test]
async fn connect_and_asterisk_targets_are_refused_with_json() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for request in [
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw(proxy.addr, request).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        let body = raw_json(&response);
        assert_eq!(body["error"], "bad_request_target");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn accept_is_added_only_when_the_caller_sent_none() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    raw(proxy.addr, "GET /api/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(upstream.last().headers["accept"], "application/json");
    let versioned = "application/json;version=2";
    client().get(format!("{}/api/b", proxy.url)).header("accept", versioned).send().await.unwrap();
    assert_eq!(upstream.last().headers["accept"], versioned);
    client().post(format!("{}/api/c", proxy.url)).header("content-type", versioned).body("{}").send().await.unwrap();
    assert_eq!(upstream.last().headers["content-type"], versioned);
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways_and_repeated_ones_kept() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = raw(
        proxy.addr,
        "GET /hop HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Hop-Only\r\nX-Hop-Only: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n\
         Upgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-End-To-End: 1\r\n\r\n",
    )
    .await;
    let seen = upstream.last();
    for name in ["x-hop-only", "keep-alive", "te", "proxy-authorization", "upgrade", "proxy-connection"] {
        assert!(seen.headers.get(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(seen.headers["x-end-to-end"], "1");
    assert!(seen.headers.get("connection").is_none_or(|v| v != "close, X-Hop-Only"));

    let head = response.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    for name in ["x-conn-named", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(!head.contains(&format!("\n{name}:")), "{name} reached the caller:\n{head}");
    }
    assert!(head.contains("\nset-cookie: a=1"), "{head}");
    assert!(head.contains("\nset-cookie: b=2"), "{head}");
    assert!(head.contains("\nx-kept: yes"), "{head}");
}

/// `HeaderMap::remove` fills the gap with the last header, so the order of the removals decides
/// the order of the headers that stay: the names `Connection` lists go first, in its order, then
/// the fixed hop-by-hop names. Callers and the API have always seen this order.
#[tokio::test]
async fn the_headers_that_stay_keep_their_order_when_hop_by_hop_ones_go() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = raw(
        proxy.addr,
        "GET /api/order HTTP/1.1\r\nHost: localhost\r\nA: 1\r\nConnection: close, X-B, Keep-Alive\r\nB: 2\r\n\
         X-B: 5\r\nKeep-Alive: 1\r\nC: 3\r\nTE: trailers\r\nD: 4\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = upstream.last();
    let names: Vec<&str> = seen.headers.keys().map(|name| name.as_str()).collect();
    assert_eq!(names, ["d", "a", "c", "b", "x-request-id", "accept", "authorization", "user-agent", "host"]);

    let response = raw(proxy.addr, "GET /hop HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    let head = response.split_once("\r\n\r\n").unwrap().0;
    let names: Vec<&str> = head.lines().skip(1).filter_map(|line| line.split_once(':')).map(|(name, _)| name).collect();
    assert_eq!(names, ["x-kept", "date", "content-length", "set-cookie", "set-cookie", "x-request-id", "connection"]);
}

#[tokio::test]
async fn redirects_are_passed_on_unfollowed_and_pointed_at_the_proxy() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = client().get(format!("{}/redirect", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], format!("{}/api/elsewhere?x=1", proxy.url).as_str());
    assert_eq!(upstream.seen().len(), 1, "the redirect was not followed");
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_travel_both_ways() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = client().get(format!("{}/api/a", proxy.url)).header("x-request-id", "job-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "job-42");
    assert_eq!(upstream.last().headers["x-request-id"], "job-42");

    let response = client().get(format!("{}/api/b", proxy.url)).send().await.unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(upstream.last().headers["x-request-id"], made.as_str());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_json_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tokens = TokenService::default();
    let proxy = Proxy::start(&format!("http://{closed}"), &tokens.start().await, &[]).await;
    let response = client().get(format!("{}/api/x", proxy.url)).header("x-request-id", "r1").send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["request_id"], "r1");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn an_upstream_slow_to_answer_is_a_504() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_UPSTREAM_TIMEOUT", "300ms")]).await;
    let started = std::time::Instant::now();
    let response = client().get(format!("{}/slow-headers?ms=3000", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    let fast = client().get(format!("{}/slow-headers?ms=50", proxy.url)).send().await.unwrap();
    assert_eq!(fast.status(), 200);
}

#[tokio::test]
async fn admin_paths_answer_locally_and_are_never_forwarded() {
    let tokens = TokenService { delay: Duration::from_millis(700), ..Default::default() };
    let upstream = Upstream::default();
    let proxy = Proxy::start(&upstream.start().await, &tokens.start().await, &[]).await;
    let health = client().get(format!("{}/_proxy/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "no token yet");
    assert!(ready.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let other = client().post(format!("{}/_proxy/anything", proxy.url)).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let body: serde_json::Value = other.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    // A method an endpoint does not take is answered as every refusal is: JSON, with the id, and
    // with the methods it takes.
    for (method, path) in [("POST", "/_proxy/status"), ("DELETE", "/_proxy/metrics"), ("PUT", "/_proxy/healthz")] {
        let url = format!("{}{path}", proxy.url);
        let answer = client().request(method.parse().unwrap(), url).send().await.unwrap();
        assert_eq!(answer.status(), 405, "{method} {path}");
        assert_eq!(answer.headers()["allow"], "GET,HEAD", "{method} {path}");
        let id = answer.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed", "{method} {path}");
        assert_eq!(body["request_id"], id.as_str());
        assert!(body["message"].as_str().unwrap().contains(method), "{body}");
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let (mut proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let url = format!("{}/slow-headers?ms=800", proxy.url);
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() });
    upstream.wait_seen(1).await;
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = tokio::net::TcpStream::connect(proxy.addr).await;
    assert!(refused.is_err(), "the listener is closed");
    assert_eq!(in_flight.await.unwrap(), "slow");
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.task).await.unwrap().unwrap().unwrap();
}
