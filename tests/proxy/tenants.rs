//! Several tenants in one proxy: routing by `/t/NAME/`, the default tenant, tenant listeners,
//! and isolation: one tenant's token never reaches another's API, and one tenant's trouble
//! never delays another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::binary::Running;
use crate::mistakes::Folder;
use crate::support::*;

/// Two tenants, each with its own mock API and token service whose tokens carry its name.
struct Two {
    prod: (Upstream, TokenService, String, String),
    uat: (Upstream, TokenService, String, String),
}

impl Two {
    async fn start(uat_tokens: TokenService) -> Two {
        let prod_tokens = TokenService { prefix: "prod-", ..Default::default() };
        let uat_tokens = TokenService { prefix: "uat-", ..uat_tokens };
        let (prod_api, uat_api) = (Upstream::default(), Upstream::default());
        let prod = (prod_api.start().await, prod_tokens.start().await);
        let uat = (uat_api.start().await, uat_tokens.start().await);
        Two { prod: (prod_api, prod_tokens, prod.0, prod.1), uat: (uat_api, uat_tokens, uat.0, uat.1) }
    }

    /// The `[tenants]` tables for both, `uat` with `extra` lines; `default_tenant` first if given.
    fn file(&self, default: Option<&str>, uat_extra: &str) -> String {
        let mut text = String::new();
        if let Some(default) = default {
            text.push_str(&format!("default_tenant = \"{default}\"\n"));
        }
        let (_, _, api, token) = &self.prod;
        text.push_str(&format!(
            "[tenants.prod]\napi_url = \"{api}\"\ntoken_url = \"{token}\"\nclient_id = \"prod-client\"\nclient_secret = \"prod-secret\"\n"
        ));
        let (_, _, api, token) = &self.uat;
        text.push_str(&format!(
            "[tenants.uat]\napi_url = \"{api}\"\ntoken_url = \"{token}\"\nclient_id = \"uat-client\"\nclient_secret = \"uat-secret\"\n{uat_extra}"
        ));
        text
    }
}

/// A proxy in this process for `file`, with no top-level upstream or credentials at all.
async fn proxy(file: &str) -> Proxy {
    let config = tenants_config(file).expect("valid config");
    Proxy::run(config).await
}

fn tenants_config(file: &str) -> Result<uem_proxy::Config, uem_proxy::config::ConfigError> {
    uem_proxy::Config::load_toml(file, &|_| None)
}

fn authorizations(api: &Upstream) -> Vec<String> {
    api.seen().iter().filter_map(|s| s.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn the_prefix_picks_the_tenant_and_is_removed_and_the_default_takes_the_rest() {
    let two = Two::start(TokenService::default()).await;
    let proxy = proxy(&two.file(Some("prod"), "")).await;
    let get = |path: &str| client().get(format!("{}{path}", proxy.url)).send();

    let r = get("/t/uat/api/mdm/devices/1?x=%7e&y=%5B1%5D").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(two.uat.0.last().target, "/api/mdm/devices/1?x=%7e&y=%5B1%5D");
    assert_eq!(two.uat.0.last().headers["authorization"], "Bearer uat-tok-1");

    let r = get("/api/mdm/devices/2").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(two.prod.0.last().target, "/api/mdm/devices/2");
    assert_eq!(two.prod.0.last().headers["authorization"], "Bearer prod-tok-1");

    // Named explicitly, the default tenant is reached with its prefix too; the `t` in any case.
    assert_eq!(get("/t/prod/api/mdm/devices/3").await.unwrap().status(), 200);
    assert_eq!(two.prod.0.last().target, "/api/mdm/devices/3");
    assert_eq!(get("/T/uat/api/x").await.unwrap().status(), 200);
    assert_eq!(two.uat.0.last().target, "/api/x");

    // An unknown name is never sent to the default tenant.
    let seen = (two.prod.0.seen().len(), two.uat.0.seen().len());
    for path in ["/t/nope/api/mdm/devices/1", "/t/", "/t", "/t//uat/api/x", "/t/PROD%2F/api"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_tenant", "{path}");
        assert!(body["message"].as_str().unwrap().contains("prod, uat"), "{body}");
        assert!(body["request_id"].is_string());
    }
    assert_eq!((two.prod.0.seen().len(), two.uat.0.seen().len()), seen, "nothing forwarded");
}

#[tokio::test]
async fn without_a_default_an_unprefixed_path_names_the_tenants_and_reaches_no_api() {
    let two = Two::start(TokenService::default()).await;
    let proxy = proxy(&two.file(None, "")).await;
    let r = client().get(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_tenant");
    assert!(body["message"].as_str().unwrap().contains("prod, uat"), "{body}");
    assert!(two.prod.0.seen().is_empty() && two.uat.0.seen().is_empty());
    // The proxy's own endpoints need no tenant.
    let status: serde_json::Value =
        client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["default_tenant"], serde_json::Value::Null);
    assert!(status["tenants"]["prod"]["token"].is_object() && status["tenants"]["uat"]["pacer"].is_object());
}

#[tokio::test]
async fn redirects_and_links_lead_back_through_the_tenants_prefix() {
    let two = Two::start(TokenService::default()).await;
    let proxy = proxy(&two.file(Some("prod"), "")).await;
    let r = client().get(format!("{}/t/uat/redirect", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], format!("{}/t/uat/api/elsewhere?x=1", proxy.url).as_str());
    let body = client().get(format!("{}/t/uat/links", proxy.url)).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(&format!("\"Self\":\"{}/t/uat/api/mdm/devices/5\"", proxy.url)), "{body}");
    // The default tenant's links stay unprefixed, as before tenants.
    let body = client().get(format!("{}/links", proxy.url)).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(&format!("\"Self\":\"{}/api/mdm/devices/5\"", proxy.url)), "{body}");
}

#[tokio::test]
async fn each_tenant_has_its_own_policy_read_only_switch_and_pacer() {
    let two = Two::start(TokenService::default()).await;
    let uat = "read_only = true\nmax_concurrent = 1\n[tenants.uat.policy]\ndeny = [\"REST API Devices Read\"]\n";
    let proxy = proxy(&format!("{}[policy]\ndeny = [\"REST API Users Read\"]\n", two.file(Some("prod"), uat))).await;
    let status = |method: reqwest::Method, path: &str| {
        let request = client().request(method, format!("{}{path}", proxy.url));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(reqwest::Method::DELETE, "/api/mdm/devices/1").await, 200, "prod is not read-only");
    assert_eq!(status(reqwest::Method::DELETE, "/t/uat/api/mdm/devices/1").await, 403, "uat is");
    assert_eq!(status(reqwest::Method::GET, "/api/mdm/devices/1").await, 200);
    assert_eq!(status(reqwest::Method::GET, "/t/uat/api/mdm/devices/1").await, 403, "uat's own policy");
    // The top-level [policy] is the default of a tenant without one of its own.
    assert_eq!(status(reqwest::Method::GET, "/api/system/users/search").await, 403);
    let status: serde_json::Value =
        client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["tenants"]["uat"]["read_only"], true);
    assert_eq!(status["tenants"]["uat"]["pacer"]["max_concurrent"], 1);
    assert_eq!(status["tenants"]["prod"]["pacer"]["max_concurrent"], serde_json::Value::Null);
}

/// Tokens never cross: under load on both tenants, with 401 replays forcing refreshes on one
/// and a reload in the middle that changes its credentials, each API sees only its own tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_ever_reaches_another_tenants_api_under_refreshes_replays_and_a_reload() {
    let two = Two::start(TokenService::default()).await;
    // uat's API accepts no token at first: every call is rejected, refreshed and replayed.
    *two.uat.0.accepted.lock().unwrap() = "nothing".to_owned();
    *two.prod.0.accepted.lock().unwrap() = "Bearer prod-tok-1".to_owned();
    let folder = Folder::new("tenants");
    let file = folder.0.join("tenants.toml");
    std::fs::write(&file, two.file(Some("prod"), "")).unwrap();
    let config = uem_proxy::Config::load(Some(&file), &|_| None).unwrap();
    let proxy = Proxy::run(config).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (url, stop) = (proxy.url.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client();
                let path = if i % 2 == 0 { "/auth-check" } else { "/t/uat/auth-check" };
                let mut answered = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let r = client.get(format!("{url}{path}")).send().await.unwrap();
                    if i % 2 == 0 {
                        assert_eq!(r.status(), 200, "prod's requests are never disturbed");
                    } else {
                        assert!([200, 401, 503].contains(&r.status().as_u16()), "{}", r.status());
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A reload in the middle: uat's secret changes (a new token is obtained with it).
    std::fs::write(&file, two.file(Some("prod"), "").replace("uat-secret", "uat-secret-2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !two.uat.1.forms.lock().unwrap().iter().any(|f| f["client_secret"] == "uat-secret-2") {
        assert!(Instant::now() < deadline, "the reload asked for a token with the new secret");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for task in load {
        answered += task.await.unwrap();
    }
    assert!(answered > 20, "{answered} requests");

    let (prod_seen, uat_seen) = (authorizations(&two.prod.0), authorizations(&two.uat.0));
    assert!(!prod_seen.is_empty() && !uat_seen.is_empty());
    let strays = |seen: &[String], own: &str| seen.iter().filter(|a| !a.starts_with(own)).cloned().collect::<Vec<_>>();
    let (prod_strays, uat_strays) = (strays(&prod_seen, "Bearer prod-tok-"), strays(&uat_seen, "Bearer uat-tok-"));
    assert!(prod_strays.is_empty(), "{} foreign tokens at prod: {:?}", prod_strays.len(), &prod_strays[..1]);
    assert!(uat_strays.is_empty(), "{} foreign tokens at uat: {:?}", uat_strays.len(), &uat_strays[..1]);
    assert!(two.uat.1.calls() > 1, "uat's rejections forced refreshes");
    assert_eq!(two.prod.1.calls(), 1, "prod kept its one token through uat's refreshes and the reload");
}

/// Twenty calls to prod, the default tenant, answered one after another well within 1.5 s.
async fn prod_is_not_held_up(proxy: &Proxy) {
    let one = client();
    let started = Instant::now();
    for _ in 0..20 {
        let r = one.get(format!("{}/api/mdm/devices/1", proxy.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_millis(1500), "prod was held up: {:?}", started.elapsed());
}

/// uat's token service answers 500, slowly: prod's callers never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_failing_token_service_and_throttling_never_delay_another() {
    let failing = TokenService {
        after_script: Some(Reply::Raw(500, "application/json", r#"{"error":"server_error"}"#.to_owned())),
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let two = Two::start(failing).await;
    let file = format!("token_wait = \"2s\"\n{}", two.file(Some("prod"), ""));
    let proxy = proxy(&file).await;
    // uat's callers wait for a token and then get 503.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url.clone();
            tokio::spawn(async move { client().get(format!("{url}/t/uat/api/x")).send().await.unwrap().status() })
        })
        .collect();
    prod_is_not_held_up(&proxy).await;
    for waiting in waiting {
        assert_eq!(waiting.await.unwrap(), 503);
    }
    let r = client().get(format!("{}/t/uat/api/x", proxy.url)).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "token_unavailable");
    assert!(body["message"].as_str().unwrap().contains("500"), "{body}");
    let ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not every tenant holds a token");
    assert_eq!(ready.headers()["x-uem-proxy-tenant"], "uat");
    let ready = client().get(format!("{}/_proxy/readyz?tenant=prod", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready = client().get(format!("{}/_proxy/readyz?tenant=nope", proxy.url)).send().await.unwrap();
    assert_eq!(ready.status(), 404);
}

/// uat's API answers 429 with a long `Retry-After`: uat's pacer holds, prod's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_throttling_never_delays_another() {
    let two = Two::start(TokenService::default()).await;
    two.uat.0.throttle_left.store(1000, Ordering::SeqCst);
    let proxy = proxy(&two.file(Some("prod"), "")).await;
    let r = client().get(format!("{}/t/uat/throttle?ms=30", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let status: serde_json::Value =
        client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().json().await.unwrap();
    assert!(status["tenants"]["uat"]["pacer"]["held_after_429_s"].as_f64().unwrap() > 10.0, "{status}");
    assert_eq!(status["tenants"]["prod"]["pacer"]["held_after_429_s"], 0.0);
    prod_is_not_held_up(&proxy).await;
}

#[tokio::test]
async fn metrics_carry_the_tenant() {
    let two = Two::start(TokenService::default()).await;
    let proxy = proxy(&two.file(Some("prod"), "")).await;
    client().get(format!("{}/t/uat/api/mdm/devices/1", proxy.url)).send().await.unwrap();
    client().get(format!("{}/api/mdm/devices/1", proxy.url)).send().await.unwrap();
    let metrics = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"uem_proxy_requests_total{tenant="uat",method="GET",category="Devices",status_class="2xx"} 1"#,
        r#"uem_proxy_requests_total{tenant="prod",method="GET",category="Devices",status_class="2xx"} 1"#,
        r#"uem_proxy_token_refreshes_total{tenant="uat",outcome="success"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains(r#"uem_proxy_token_usable_seconds{tenant="prod"} "#), "{metrics}");
    assert!(metrics.contains(r#"uem_proxy_pacer_waiting{tenant="uat"} 0"#), "{metrics}");
    // The inspector's exchanges name their tenant too.
    let listed: serde_json::Value =
        client().get(format!("{}/_proxy/requests", proxy.url)).send().await.unwrap().json().await.unwrap();
    let tenant_of =
        |path: &str| listed.as_array().unwrap().iter().find(|e| e["path"] == path).map(|e| e["tenant"].clone());
    assert_eq!(tenant_of("/t/uat/api/mdm/devices/1"), Some("uat".into()), "{listed}");
    assert_eq!(tenant_of("/api/mdm/devices/1"), Some("prod".into()), "{listed}");
}

#[test]
fn the_access_log_names_the_tenant() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let two = rt.block_on(Two::start(TokenService::default()));
    let folder = Folder::new("tenant-log");
    let file = folder.0.join("tenants.toml");
    std::fs::write(&file, two.file(Some("prod"), "listen = \"127.0.0.1:0\"\n")).unwrap();
    let mut proxy = Running::with_file(&file);
    let own = proxy.wait_event("listening for one tenant");
    assert_eq!(own["tenant"], "uat");
    let uat_listener = own["listen"].as_str().unwrap().to_owned();
    rt.block_on(async {
        // On uat's own listener every path is uat's, without a prefix.
        let r = client().get(format!("http://{uat_listener}/api/mdm/devices/7")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(two.uat.0.last().target, "/api/mdm/devices/7");
        assert_eq!(two.uat.0.last().headers["authorization"], "Bearer uat-tok-1");
        let r = client().get(format!("http://{uat_listener}/redirect")).send().await.unwrap();
        assert_eq!(r.headers()["location"], format!("http://{uat_listener}/api/elsewhere?x=1").as_str());
        let r = client().get(format!("http://{}/api/mdm/devices/8", proxy.addr())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(two.prod.0.last().target, "/api/mdm/devices/8");
    });
    proxy.terminate();
    let access: Vec<serde_json::Value> = proxy
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "uem_proxy::access")
        .collect();
    let tenant_of = |path: &str| access.iter().find(|e| e["path"] == path).map(|e| e["tenant"].clone());
    assert_eq!(tenant_of("/api/mdm/devices/7"), Some("uat".into()));
    assert_eq!(tenant_of("/api/mdm/devices/8"), Some("prod".into()));
    let log = proxy.log();
    for secret in ["prod-secret", "uat-secret", "prod-tok-", "uat-tok-"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// A reload adds uat, keeps prod's token, then removes uat: its later requests get 404.
#[test]
fn a_reload_adds_and_removes_tenants_and_keeps_the_others_tokens() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let two = rt.block_on(Two::start(TokenService::default()));
    let folder = Folder::new("tenant-reload");
    let file = folder.0.join("tenants.toml");
    let both = two.file(Some("prod"), "");
    let prod_only = both[..both.find("[tenants.uat]").unwrap()].to_owned();
    std::fs::write(&file, &prod_only).unwrap();
    let mut proxy = Running::with_file(&file);
    let url = format!("http://{}", proxy.addr());
    let pid = proxy.child.id().to_string();
    let hup = || assert!(kill_hup(&pid));
    rt.block_on(async {
        let get = |path: &str| client().get(format!("{url}{path}")).send();
        assert_eq!(get("/t/uat/api/x").await.unwrap().status(), 404);
        assert_eq!(get("/api/x").await.unwrap().status(), 200);
        std::fs::write(&file, &both).unwrap();
        hup();
        wait_until(|| async { get("/t/uat/api/x").await.unwrap().status() == 200 }).await;
        assert_eq!(two.uat.0.last().headers["authorization"], "Bearer uat-tok-1");
        std::fs::write(&file, &prod_only).unwrap();
        hup();
        wait_until(|| async { get("/t/uat/api/x").await.unwrap().status() == 404 }).await;
        assert_eq!(get("/api/x").await.unwrap().status(), 200);
    });
    assert_eq!(two.prod.1.calls(), 1, "prod's token survived both reloads");
    let uat_seen = two.uat.0.seen().len();
    let uat_calls = two.uat.1.calls();
    // The removed tenant's refresher has stopped: nothing more reaches its token service.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(two.uat.1.calls(), uat_calls);
    assert_eq!(two.uat.0.seen().len(), uat_seen);
    proxy.terminate();
    let reloads = proxy.events("configuration reloaded");
    assert!(reloads.iter().any(|e| e["changes"].as_str().unwrap().contains("uat: added")), "{reloads:?}");
    assert!(reloads.iter().any(|e| e["changes"].as_str().unwrap().contains("uat: removed")), "{reloads:?}");
}

fn kill_hup(pid: &str) -> bool {
    std::process::Command::new("kill").args(["-HUP", pid]).status().unwrap().success()
}

async fn wait_until<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_configuration_with_tenants_names_every_problem_at_once() {
    let text = r#"
default_tenant = "staging"
[tenants.prod]
api_url = "https://as1.awmdm.com"
region = "na"
client_id = "a"
[tenants.Bad_Name]
api_url = "https://as2.awmdm.com"
[tenants.uat]
console_url = "cn3.awmdm.com"
region = "mars"
client_id = "b"
client_secret = "s"
header_timeout = "5s"
[tenants.qa]
api_url = "https://as4.awmdm.com"
token_url = "https://na.uemauth.workspaceone.com/connect/token"
client_id = "c"
client_secret = "s"
listen = "127.0.0.1:8080"
"#;
    let error = tenants_config(text).expect_err("refused").to_string();
    for needle in [
        "tenants.Bad_Name: a tenant's name is 1 to 32 lower-case letters",
        "tenants.prod: neither UEM_CLIENT_SECRET nor UEM_CLIENT_SECRET_FILE is set",
        "tenants.uat: region: 'mars' is not a region",
        "tenants.uat: 'header_timeout' is not a tenant setting",
        "default_tenant: no tenant is named 'staging' (tenants: prod, qa, uat)",
        "tenants.qa: listen: 127.0.0.1:8080 is also UEM_PROXY_LISTEN",
    ] {
        assert!(error.contains(needle), "{needle:?} not in:\n{error}");
    }
    // The secret given is never quoted.
    assert!(!error.contains("\"s\""));
}

/// `uem-proxy sandbox --tenant prod --tenant uat` as printed, then `check` and `config` over a
/// two-tenant file: a verdict per tenant, and no secret printed.
#[test]
fn check_gives_a_verdict_per_tenant_and_config_masks_every_tenants_secrets() {
    use std::io::BufRead;
    let mut sandbox = crate::binary::command(&[])
        .args(["sandbox", "--listen", "127.0.0.1:0", "--tenant", "prod", "--tenant", "uat"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sandbox.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let field = |tenant: &str, name: &str| -> String {
        let start = printed.iter().position(|l| l == &format!("tenant {tenant}:")).expect("the tenant is printed");
        let line = printed[start..].iter().find(|l| l.trim_start().starts_with(name)).unwrap();
        line.trim_start()[name.len()..].trim().to_owned()
    };
    let mut file = String::new();
    for tenant in ["prod", "uat"] {
        let api = field(tenant, "API").trim_end_matches("/api/").to_owned();
        let client = field(tenant, "client");
        let (id, secret) = client.split_once(" / ").unwrap();
        let secret = if tenant == "uat" { "wrong-secret" } else { secret };
        file.push_str(&format!(
            "[tenants.{tenant}]\napi_url = \"{api}\"\ntoken_url = \"{}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n",
            field(tenant, "token URL")
        ));
    }
    assert!(file.contains("prod-secret") && file.contains("uat-client"), "{printed:#?}");
    let path = std::env::temp_dir().join(format!("uem-proxy-tenant-check-{}.toml", fastrand::u64(..)));
    std::fs::write(&path, &file).unwrap();
    let path_arg = path.display().to_string();

    let check = crate::binary::command(&[]).args(["--config", &path_arg, "check"]).output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(!check.status.success(), "uat's secret is wrong:\n{out}");
    assert!(out.contains("== tenant prod ==") && out.contains("== tenant uat =="), "{out}");
    let verdicts = &out[out.find("verdict per tenant:").expect("a verdict section")..];
    assert!(
        verdicts.lines().any(|l| l.contains("ok") && l.contains("prod") && l.contains("all checks passed")),
        "{out}"
    );
    assert!(verdicts.lines().any(|l| l.contains("FAIL") && l.contains("uat") && l.contains("failed at")), "{out}");

    let config = crate::binary::command(&[]).args(["--config", &path_arg, "config"]).output().unwrap();
    assert!(config.status.success(), "{}", String::from_utf8_lossy(&config.stderr));
    let shown = String::from_utf8(config.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["tenants"]["prod"]["client_secret"], "***");
    assert_eq!(json["tenants"]["uat"]["client_id"], "uat-client");
    assert!(json.get("client_secret").is_none(), "no top-level credentials with [tenants]: {json}");
    for secret in ["prod-secret", "wrong-secret"] {
        assert!(!shown.contains(secret) && !out.contains(secret), "{secret} printed");
    }
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    std::fs::remove_file(&path).unwrap();
}

/// Forty tenants starting together ask the token service a few at a time, and all get a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tenants_start_with_a_bounded_number_of_token_requests_at_once() {
    let tokens = TokenService { delay: Duration::from_millis(100), ..Default::default() };
    let (api, token_url) = (Upstream::default().start().await, tokens.start().await);
    let mut file = String::from("default_tenant = \"t0\"\n");
    for i in 0..40 {
        file.push_str(&format!(
            "[tenants.t{i}]\napi_url = \"{api}\"\ntoken_url = \"{token_url}\"\nclient_id = \"c{i}\"\nclient_secret = \"s{i}\"\n"
        ));
    }
    let proxy = proxy(&file).await;
    wait_until(|| async { client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap().status() == 200 })
        .await;
    assert_eq!(tokens.calls(), 40);
    let most = tokens.most_at_once.load(Ordering::SeqCst);
    assert!((2..=8).contains(&most), "{most} token requests at once");
}

/// `/_proxy/all/t/uat/…` pages through uat's list with uat's token, and the cache keeps each
/// tenant's answers apart: a write to one tenant purges only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_the_cache_follow_the_tenant() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = listener.local_addr().unwrap();
    let base = sandbox_options();
    let tenants = vec![
        uem_proxy::sandbox::Options { devices: 30, ..base.tenant("prod", 0) },
        uem_proxy::sandbox::Options { devices: 70, ..base.tenant("uat", 1) },
    ];
    tokio::spawn(uem_proxy::sandbox::serve_tenants(listener, tenants, std::future::pending()));
    let mut file = String::from("default_tenant = \"prod\"\n[cache]\nmax_bytes = \"8MiB\"\n");
    file.push_str("[[cache.rules]]\npath = \"/api/system/info\"\nttl = \"10m\"\n");
    file.push_str("[[cache.rules]]\npath = \"/api/mdm/devices/*\"\nttl = \"10m\"\n");
    for name in ["prod", "uat"] {
        file.push_str(&format!(
            "[tenants.{name}]\napi_url = \"http://{sandbox}/{name}\"\ntoken_url = \"http://{sandbox}/{name}/connect/token\"\n\
             client_id = \"{name}-client\"\nclient_secret = \"{name}-secret\"\n"
        ));
    }
    let proxy = proxy(&file).await;
    let client = client();
    let lines = |path: String| {
        let request = client.get(path);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let total = r.headers()["x-uem-proxy-total"].to_str().unwrap().to_owned();
            (total, r.text().await.unwrap().lines().count())
        }
    };
    let search = "api/mdm/devices/search?pagesize=8";
    assert_eq!(lines(format!("{}/_proxy/all/t/uat/{search}", proxy.url)).await, ("70".to_owned(), 70));
    assert_eq!(lines(format!("{}/_proxy/all/{search}", proxy.url)).await, ("30".to_owned(), 30));
    assert_eq!(lines(format!("{}/_proxy/all/t/prod/{search}", proxy.url)).await, ("30".to_owned(), 30));
    let r = client.get(format!("{}/_proxy/all/t/nope/{search}", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let info = |path: &str| {
        let request = client.get(format!("{}{path}", proxy.url));
        async move {
            let r = request.send().await.unwrap();
            let cache = r.headers()["x-uem-proxy-cache"].to_str().unwrap().to_owned();
            let body: serde_json::Value = r.json().await.unwrap();
            (cache, body["EnvironmentName"].as_str().unwrap().to_owned())
        }
    };
    assert_eq!(info("/api/system/info").await, ("miss".to_owned(), "prod".to_owned()));
    assert_eq!(info("/t/uat/api/system/info").await, ("miss".to_owned(), "uat".to_owned()));
    assert_eq!(info("/api/system/info").await, ("hit".to_owned(), "prod".to_owned()));
    assert_eq!(info("/t/uat/api/system/info").await, ("hit".to_owned(), "uat".to_owned()));
    // A write to uat's /api/mdm/… area purges uat's entries there only.
    let device = |path: &str| {
        let request = client.get(format!("{}{path}", proxy.url));
        async move { request.send().await.unwrap().headers()["x-uem-proxy-cache"].to_str().unwrap().to_owned() }
    };
    for path in ["/api/mdm/devices/1", "/t/uat/api/mdm/devices/1"] {
        assert_eq!(device(path).await, "miss");
        assert_eq!(device(path).await, "hit");
    }
    let r = client.post(format!("{}/t/uat/api/mdm/devices/1/commands?command=Lock", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(device("/t/uat/api/mdm/devices/1").await, "miss", "uat's write purged uat's entry");
    assert_eq!(device("/api/mdm/devices/1").await, "hit", "prod's entry stays");
    assert_eq!(info("/t/uat/api/system/info").await.0, "hit", "another area stays");
}
