//! The token lifecycle seen from outside: the grant, single flight, odd answers, 401 replay.

use std::time::Duration;

use crate::support::{Proxy, Reply, SECRET, TokenService, Upstream, client};

#[tokio::test]
async fn the_grant_is_a_client_credentials_form_post() {
    let (proxy, _upstream, tokens) = Proxy::with_defaults(&[]).await;
    client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    let form = tokens.forms.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], "test-client");
    assert_eq!(form["client_secret"], SECRET);
}

#[tokio::test]
async fn a_hundred_concurrent_requests_at_start_up_cause_one_token_request() {
    let tokens = TokenService { delay: Duration::from_millis(300), ..Default::default() };
    let upstream = Upstream::default();
    let proxy = Proxy::start(&upstream.start().await, &tokens.start().await, &[]).await;
    let client = client();
    let requests = (0..100).map(|i| {
        let (client, url) = (client.clone(), format!("{}/api/n/{i}", proxy.url));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(tokens.calls(), 1);
    assert_eq!(upstream.seen().len(), 100);
    assert!(upstream.seen().iter().all(|s| s.headers["authorization"] == "Bearer tok-1"));
}

#[tokio::test]
async fn without_a_token_requests_wait_their_bound_then_get_503_with_retry_after() {
    let tokens = TokenService {
        after_script: Some(Reply::Raw(503, "text/html", "<html>down</html>".into())),
        ..Default::default()
    };
    let upstream = Upstream::default();
    let proxy =
        Proxy::start(&upstream.start().await, &tokens.start().await, &[("UEM_PROXY_TOKEN_WAIT", "400ms")]).await;
    let started = std::time::Instant::now();
    let response = client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "token_unavailable");
    assert_eq!(body["request_id"], id.as_str());
    assert!(upstream.seen().is_empty(), "nothing is forwarded without a token");
}

#[tokio::test]
async fn odd_token_answers_are_survived_until_a_good_one_comes() {
    let tokens = TokenService::script(&[
        Reply::Raw(200, "text/html", "<html>maintenance</html>".into()),
        Reply::Raw(401, "application/json", r#"{"error":"invalid_client"}"#.into()),
        Reply::Raw(200, "application/json", r#"{"error":"temporarily_unavailable"}"#.into()),
        Reply::Grant(r#""3600""#),
    ]);
    let upstream = Upstream::default();
    let proxy = Proxy::start(&upstream.start().await, &tokens.start().await, &[("UEM_PROXY_TOKEN_WAIT", "15s")]).await;
    let response = client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(tokens.calls(), 4);
    assert_eq!(upstream.last().headers["authorization"], "Bearer tok-1");
}

#[tokio::test]
async fn a_401_refreshes_once_and_replays_a_small_request() {
    let (proxy, upstream, tokens) = Proxy::with_defaults(&[]).await;
    *upstream.accepted.lock().unwrap() = "Bearer tok-2".into();
    let response = client()
        .post(format!("{}/auth-check", proxy.url))
        .header("content-type", "application/json")
        .body(r#"{"command":"lock"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"command":"lock"}"#);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["authorization"], "Bearer tok-1");
    assert_eq!(seen[1].headers["authorization"], "Bearer tok-2");
    assert_eq!(seen[1].body, seen[0].body, "the replay carries the same body");
    assert_eq!(tokens.calls(), 2);
}

#[tokio::test]
async fn a_second_401_goes_to_the_caller_and_forced_refreshes_are_rate_bounded() {
    let (proxy, upstream, tokens) = Proxy::with_defaults(&[]).await;
    *upstream.accepted.lock().unwrap() = "nothing is accepted".into();
    let response = client().get(format!("{}/auth-check", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 1005, "the upstream's own 401 body is passed on");
    assert_eq!(upstream.seen().len(), 2, "one replay, no more");
    assert_eq!(tokens.calls(), 2);
    for _ in 0..20 {
        let response = client().get(format!("{}/auth-check", proxy.url)).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    assert_eq!(tokens.calls(), 2, "a misconfigured role does not hammer the token service");
}

#[tokio::test]
async fn concurrent_401s_for_one_token_cause_one_refresh() {
    let (proxy, upstream, tokens) = Proxy::with_defaults(&[]).await;
    client().get(format!("{}/api/warm", proxy.url)).send().await.unwrap();
    *upstream.accepted.lock().unwrap() = "Bearer tok-2".into();
    let requests = (0..30).map(|_| {
        let url = format!("{}/auth-check", proxy.url);
        tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(tokens.calls(), 2);
}

#[tokio::test]
async fn a_streamed_request_is_not_replayed_but_the_next_one_gets_a_fresh_token() {
    let (proxy, upstream, tokens) = Proxy::with_defaults(&[("UEM_PROXY_REPLAY_BODY_LIMIT", "16")]).await;
    client().get(format!("{}/api/warm", proxy.url)).send().await.unwrap();
    *upstream.accepted.lock().unwrap() = "Bearer tok-2".into();
    let big = "x".repeat(1000);
    let response = client().put(format!("{}/auth-check", proxy.url)).body(big.clone()).send().await.unwrap();
    assert_eq!(response.status(), 401, "a body over the replay limit is not kept, so not replayed");
    assert_eq!(upstream.seen().len(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client().put(format!("{}/auth-check", proxy.url)).body(big).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(tokens.calls(), 2);
}
