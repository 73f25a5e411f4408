//! Legacy and enterprise clients: on-premises Basic authentication, the tenant code, and the
//! token service's other domain.

use std::time::Duration;

use secrecy::SecretString;
use uem_proxy::token::{Credentials, FetchError, request};

use axum::response::IntoResponse;

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
    let first = TokenService::script(&[crate::support::Reply::Raw(
        401,
        "application/json",
        r#"{"error":"invalid_client"}"#.into(),
    )]);
    let first_url = first.start().await;
    let refusing = credentials(first_url, Some(other_url));
    let error = request(&http, &refusing, Duration::from_secs(5)).await.err().unwrap();
    assert!(matches!(error, FetchError::Refused { .. }), "{error}");
    assert_eq!(other.calls(), 1, "no fallback after a refusal");
}

/// A certificate for `localhost` and `127.0.0.1`, written to PEM files; returns (cert, key, cert PEM).
fn localhost_certificate(dir: &std::path::Path) -> (String, String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("localhost.crt"), dir.join("localhost.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path.display().to_string(), key_path.display().to_string(), cert.pem())
}

#[tokio::test]
async fn a_legacy_client_over_the_https_listener_is_served_as_over_http() {
    let dir = std::env::temp_dir().join(format!("uem-proxy-tls-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, pem) = localhost_certificate(&dir);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[
        ("UEM_PROXY_TLS_CERT", &cert),
        ("UEM_PROXY_TLS_KEY", &key),
        ("UEM_PROXY_TLS_LISTEN", &tls_listen),
    ])
    .await;
    let https = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let base = format!("https://localhost:{tls_port}");
    let mut ready = false;
    for _ in 0..50 {
        if https.get(format!("{base}/_proxy/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the HTTPS listener answers");

    // What an old AirWatch client library sends.
    let response = https
        .post(format!("{base}/API/mdm/devices/5/commands?command=Lock"))
        .basic_auth("olduser", Some("oldpassword"))
        .header("aw-tenant-code", "OLD-TENANT-KEY")
        .header("accept", "application/json;version=1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=lost+phone&notify=true")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.target, "/API/mdm/devices/5/commands?command=Lock");
    assert_eq!(seen.headers["authorization"], "Bearer tok-1");
    assert!(seen.headers.get("aw-tenant-code").is_none());
    assert_eq!(seen.headers["accept"], "application/json;version=1");
    assert_eq!(seen.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(seen.body.as_ref(), b"reason=lost+phone&notify=true");

    let redirect = https.get(format!("{base}/redirect")).send().await.unwrap();
    assert_eq!(redirect.headers()["location"], format!("{base}/api/elsewhere?x=1").as_str(), "https stays https");
    let plain = client().get(format!("{}/api/plain", proxy.url)).send().await.unwrap();
    assert_eq!(plain.status(), 200, "the HTTP listener runs beside the HTTPS one");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_settings_go_together_and_bad_files_are_named() {
    let err =
        crate::support::config("http://a", "http://t/token", None, &[("UEM_PROXY_TLS_CERT", "/x.crt")]).unwrap_err();
    assert!(err.to_string().contains("UEM_PROXY_TLS_CERT and UEM_PROXY_TLS_KEY go together"), "{err}");
    let err = crate::support::config(
        "http://a",
        "http://t/token",
        None,
        &[("UEM_PROXY_TLS_CERT", "/nonexistent.crt"), ("UEM_PROXY_TLS_KEY", "/nonexistent.key")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot read certificates from /nonexistent.crt"), "{err}");
}

#[tokio::test]
async fn api_urls_inside_text_bodies_point_at_the_proxy_and_binary_bodies_pass_untouched() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let own = format!("http://{}", upstream.addr.lock().unwrap().unwrap());
    for path in ["/links", "/links-stream"] {
        let response = client().get(format!("{}{path}", proxy.url)).send().await.unwrap();
        let declared = response.content_length();
        let text = response.text().await.unwrap();
        if let Some(length) = declared {
            assert_eq!(length as usize, text.len(), "{path}: Content-Length is corrected");
        }
        assert!(text.contains(&format!(r#""Self":"{}/api/mdm/devices/5""#, proxy.url)), "{path}: {text}");
        let escaped = format!("{}/api/x", proxy.url).replace('/', "\\/");
        assert!(text.contains(&escaped), "{path}: {text}");
        assert!(text.contains("https://example.com/x"), "{path}: other hosts stay");
        assert!(!text.contains(&own), "{path}: {text}");
    }
    let binary = client().get(format!("{}/links-binary", proxy.url)).send().await.unwrap().text().await.unwrap();
    assert!(binary.contains(&own), "binary bodies are not touched");

    let (off, upstream_off, _t) = Proxy::with_defaults(&[("UEM_PROXY_REWRITE_BODIES", "false")]).await;
    let own_off = format!("http://{}", upstream_off.addr.lock().unwrap().unwrap());
    let text = client().get(format!("{}/links", off.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&own_off), "rewriting can be switched off");
}

#[tokio::test]
async fn a_custom_ca_bundle_lets_the_proxy_trust_an_inspecting_or_on_premises_host() {
    let dir = std::env::temp_dir().join(format!("uem-proxy-ca-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, _) = localhost_certificate(&dir);
    let upstream = axum::Router::new().fallback(|| async { "over tls" });
    let addr = crate::support::spawn_tls(upstream, &cert, &key).await;
    let api = format!("https://localhost:{}", addr.port());
    let tokens = TokenService::default();
    let token_url = tokens.start().await;

    let untrusted = Proxy::start(&api, &token_url, &[]).await;
    let refused = client().get(format!("{}/api/x", untrusted.url)).send().await.unwrap();
    assert_eq!(refused.status(), 502, "an unknown issuer is not trusted");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");

    let trusted = Proxy::start(&api, &token_url, &[("UEM_CA_BUNDLE", &cert)]).await;
    let response = client().get(format!("{}/api/x", trusted.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "over tls");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_egress_proxy_carries_the_token_request_and_the_api_calls() {
    use axum::extract::Request;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    // A forward proxy: it receives absolute-form targets and answers for the hosts behind it.
    let egress = axum::Router::new().fallback(move |req: Request| {
        let recorded = recorded.clone();
        async move {
            recorded.lock().unwrap().push(format!("{} {}", req.method(), req.uri()));
            if req.uri().path() == "/connect/token" {
                let token = r#"{"access_token":"via-egress","token_type":"Bearer","expires_in":3600}"#;
                return ([("content-type", "application/json")], token).into_response();
            }
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            format!("relayed with {auth}").into_response()
        }
    });
    let egress_addr = crate::support::spawn(egress).await;
    let egress_url = format!("http://{egress_addr}");
    let proxy = Proxy::start(
        "http://api.uem.invalid",
        "http://token.uem.invalid/connect/token",
        &[("UEM_PROXY_EGRESS_PROXY", &egress_url)],
    )
    .await;
    let response = client().get(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "relayed with Bearer via-egress");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["POST http://token.uem.invalid/connect/token", "GET http://api.uem.invalid/api/system/info"]);
}
