//! Legacy and enterprise clients: on-premises Basic authentication, the tenant code, and the
//! token service's other domain.

use std::time::Duration;

use secrecy::SecretString;
use uem_proxy::token::{Credentials, FetchError, request};

use crate::support::{Proxy, TokenService, Upstream, client};

#[tokio::test]
async fn basic_mode_sends_the_account_and_tenant_code_and_needs_no_token_service() {
    let upstream = Upstream::default();
    let api = upstream.start().await;
    let env = [
        ("UEM_AUTH_MODE", "basic"),
        ("UEM_USERNAME", "apiadmin"),
        ("UEM_PASSWORD", "pa55word"),
        ("UEM_TENANT_CODE", "TENANT-KEY-1"),
    ];
    // No token URL at all: the support helper's is overridden by nothing, and basic mode ignores it.
    let proxy = Proxy::start(&api, "http://127.0.0.1:9/never", &env).await;
    let response = client()
        .get(format!("{}/API/mdm/devices/search", proxy.url))
        .header("authorization", "Basic c2NyaXB0OnN0YWxl")
        .header("aw-tenant-code", "STALE-KEY")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    // base64("apiadmin:pa55word")
    assert_eq!(seen.headers["authorization"], "Basic YXBpYWRtaW46cGE1NXdvcmQ=");
    assert_eq!(seen.headers["aw-tenant-code"], "TENANT-KEY-1");
    assert_eq!(seen.headers.get_all("aw-tenant-code").iter().count(), 1);
    let ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "basic mode is ready at once");
}

#[tokio::test]
async fn basic_mode_passes_a_401_on_without_retrying() {
    let upstream = Upstream::default();
    let api = upstream.start().await;
    let env = [("UEM_AUTH_MODE", "basic"), ("UEM_USERNAME", "u"), ("UEM_PASSWORD", "p"), ("UEM_TENANT_CODE", "t")];
    let proxy = Proxy::start(&api, "http://127.0.0.1:9/never", &env).await;
    *upstream.accepted.lock().unwrap() = "nobody".into();
    let started = std::time::Instant::now();
    let response = client().post(format!("{}/auth-check", proxy.url)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(started.elapsed() < Duration::from_secs(2), "no wait for a refresh that cannot come");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn the_tenant_code_is_added_in_oauth_mode_too() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_TENANT_CODE", "OAUTH-TENANT")]).await;
    client().get(format!("{}/api/x", proxy.url)).header("aw-tenant-code", "OLD").send().await.unwrap();
    let seen = upstream.last();
    assert_eq!(seen.headers["aw-tenant-code"], "OAUTH-TENANT");
    assert_eq!(seen.headers["authorization"], "Bearer tok-1");
}

fn credentials(url: String, fallback: Option<String>) -> Credentials {
    Credentials {
        url: url.parse().unwrap(),
        fallback_url: fallback.map(|f| f.parse().unwrap()),
        client_id: "test-client".into(),
        client_secret: SecretString::from("s".to_owned()),
    }
}

#[tokio::test]
async fn the_other_token_domain_is_tried_when_the_first_cannot_be_reached() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let other = TokenService::default();
    let other_url = other.start().await;
    let unreachable_first = credentials(format!("http://{closed}/connect/token"), Some(other_url.clone()));
    let grant = request(&http, &unreachable_first, Duration::from_secs(5)).await.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&grant.access_token), "tok-1");
    assert_eq!(other.calls(), 1);

    // A first domain that answers, even with a refusal, is not second-guessed.
    let first = TokenService::script(&[crate::support::Reply::Raw(401, "application/json", r#"{"error":"invalid_client"}"#.into())]);
    let first_url = first.start().await;
    let refusing = credentials(first_url, Some(other_url));
    let error = request(&http, &refusing, Duration::from_secs(5)).await.err().unwrap();
    assert!(matches!(error, FetchError::Refused { .. }), "{error}");
    assert_eq!(other.calls(), 1, "no fallback after a refusal");
}
