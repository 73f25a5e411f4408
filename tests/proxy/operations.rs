//! Operations: metrics that move with traffic, the status report, pacing against the API's limits.

use std::time::{Duration, Instant};

use crate::support::{Proxy, TokenService, Upstream, client};

/// The value of one sample line of a Prometheus text exposition, 0 when absent.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(proxy: &Proxy) -> String {
    let response = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_move_as_requests_flow() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let devices = r#"uem_proxy_requests_total{method="GET",category="Devices",status_class="2xx"}"#;
    let before = scrape(&proxy).await;
    for _ in 0..3 {
        client().get(format!("{}/api/mdm/devices/search", proxy.url)).send().await.unwrap();
    }
    client().post(format!("{}/api/x", proxy.url)).body("12345").send().await.unwrap();
    *upstream.accepted.lock().unwrap() = "nobody".into();
    client().get(format!("{}/auth-check", proxy.url)).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = scrape(&proxy).await;
    assert_eq!(sample(&after, devices) - sample(&before, devices), 3.0, "{after}");
    assert_eq!(sample(&after, r#"uem_proxy_requests_total{method="GET",category="unknown",status_class="4xx"}"#), 1.0);
    assert!(sample(&after, "uem_proxy_request_body_bytes_total") >= 5.0);
    assert!(
        sample(&after, "uem_proxy_response_body_bytes_total") > sample(&before, "uem_proxy_response_body_bytes_total")
    );
    assert!(sample(&after, "uem_proxy_upstream_duration_seconds_count") >= 5.0);
    assert_eq!(sample(&after, "uem_proxy_requests_in_flight"), 1.0, "the scrape itself is in flight");
    assert_eq!(
        sample(&after, r#"uem_proxy_token_refreshes_total{outcome="success"}"#),
        2.0,
        "one grant, one after the 401"
    );
    let usable = sample(&after, "uem_proxy_token_usable_seconds");
    assert!(usable > 3000.0 && usable <= 3570.0, "{usable}");
    assert_eq!(sample(&after, "uem_proxy_token_last_error_timestamp_seconds"), 0.0);
    assert!(after.lines().any(|l| l == "uem_proxy_pacer_waiting 0"), "the pacer's line is reported: {after}");
    assert!(after.lines().any(|l| l == "uem_proxy_upstream_throttled_total 0"), "{after}");
}

#[tokio::test]
async fn status_reports_token_pacer_and_config_but_never_the_token() {
    let (proxy, _upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_MAX_CONCURRENT", "4"), ("UEM_PROXY_RATE_LIMIT", "50")]).await;
    client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    let response = client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains("tok-1"), "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["upstream"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    assert_eq!(status["token"]["current"]["usable"], true);
    assert_eq!(status["token"]["refreshes"], 1);
    assert_eq!(status["token"]["consecutive_failures"], 0);
    assert!(status["token"]["last_refresh"].as_str().is_some());
    assert_eq!(status["pacer"]["max_concurrent"], 4);
    assert_eq!(status["pacer"]["rate_per_s"], 50);
    assert!(status["config"]["file"].is_null());
}

#[tokio::test]
async fn after_a_429_new_requests_are_held_until_retry_after() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_PACER_MAX_WAIT", "3s")]).await;
    upstream.throttle_left.store(1, std::sync::atomic::Ordering::SeqCst);
    let first = client().get(format!("{}/throttle?ms=1", proxy.url)).send().await.unwrap();
    assert_eq!(first.status(), 429, "the 429 itself goes to its caller");
    let started = Instant::now();
    let held = client().get(format!("{}/throttle", proxy.url)).send().await.unwrap();
    assert_eq!(held.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900), "held {:?}", started.elapsed());
    assert_eq!(upstream.seen().len(), 2);

    upstream.throttle_left.store(1, std::sync::atomic::Ordering::SeqCst);
    client().get(format!("{}/throttle?ms=30", proxy.url)).send().await.unwrap();
    let started = Instant::now();
    let told = client().get(format!("{}/api/other", proxy.url)).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "a pause longer than the bound is not waited out");
    assert_eq!(told.status(), 429);
    let retry: u64 = told.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((28..=30).contains(&retry), "{retry}");
    let body: serde_json::Value = told.json().await.unwrap();
    assert_eq!(body["error"], "upstream_rate_limited");
    assert_eq!(upstream.seen().len(), 3, "the held-off request was not forwarded");
    let metrics = scrape(&proxy).await;
    assert_eq!(sample(&metrics, "uem_proxy_upstream_throttled_total"), 2.0);
}

#[tokio::test]
async fn concurrency_is_bounded_and_a_long_line_gets_503() {
    let (proxy, _upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_MAX_CONCURRENT", "1"), ("UEM_PROXY_PACER_MAX_WAIT", "700ms")]).await;
    let slow = |ms: u64| {
        let url = format!("{}/slow-headers?ms={ms}", proxy.url);
        tokio::spawn(async move {
            let started = Instant::now();
            let status = client().get(url).send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        })
    };
    let (a, b) = (slow(400), slow(400));
    let ((sa, ta), (sb, tb)) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((sa, sb), (200, 200));
    assert!(ta.max(tb) >= Duration::from_millis(780), "one waited for the other: {ta:?} {tb:?}");

    let (c, d) = (slow(1500), slow(50));
    let ((sc, _), (sd, td)) = (c.await.unwrap(), d.await.unwrap());
    assert_eq!(sc, 200);
    assert_eq!(sd, 503, "the second waited its bound behind a slow one");
    assert!(td < Duration::from_millis(1400));
}

/// A change to the file made after the configuration was read and before the reloader looked at
/// the file for the first time is still reloaded: the reloader compares with what was read.
#[tokio::test]
async fn a_file_change_made_while_the_proxy_starts_is_not_missed() {
    let (api, token_url) = (Upstream::default().start().await, TokenService::default().start().await);
    let dir = std::env::temp_dir().join(format!("uem-proxy-startup-change-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("uem-proxy.toml");
    let text = |extra: &str| {
        format!("api_url = \"{api}\"\ntoken_url = \"{token_url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{extra}")
    };
    std::fs::write(&file, text("")).unwrap();
    let config = uem_proxy::Config::load(Some(&file), &|_| None).unwrap();
    let app =
        uem_proxy::app::App::new(config, uem_proxy::config::Listen::Tcp("127.0.0.1:8080".parse().unwrap())).unwrap();
    // Changed before the reloader starts.
    std::fs::write(&file, text("read_only = true\n")).unwrap();
    let watcher = tokio::spawn(uem_proxy::reload::watch(app.clone()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !app.config.load().policy.read_only {
        assert!(Instant::now() < deadline, "the change was never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}
