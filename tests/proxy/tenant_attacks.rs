//! Attacks on several tenants from the outside: reloads that swap what two tenants are while a
//! request is in flight, and prefix spellings that try to reach another tenant than the one named.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binary::Running;
use crate::mistakes::Folder;
use crate::support::*;

/// A tenant table for `name` with this API and token service.
fn table(name: &str, api: &str, token_url: &str, client: &str) -> String {
    format!(
        "[tenants.{name}]\napi_url = \"{api}\"\ntoken_url = \"{token_url}\"\nclient_id = \"{client}\"\nclient_secret = \"{client}-secret\"\n"
    )
}

/// Two recording APIs, `a` (prod's in most tests) and `b`, and a token service for each, started
/// (a started service serves on when its value is dropped; `b_tokens` is kept for what it saw).
struct Two {
    a_api: Upstream,
    b_api: Upstream,
    b_tokens: TokenService,
    a_url: String,
    b_url: String,
    a_token_url: String,
    b_token_url: String,
}

impl Two {
    async fn start(a_tokens: TokenService, b_tokens: TokenService) -> Two {
        let (a_api, b_api) = (Upstream::default(), Upstream::default());
        let (a_url, b_url) = (a_api.start().await, b_api.start().await);
        let (a_token_url, b_token_url) = (a_tokens.start().await, b_tokens.start().await);
        Two { a_api, b_api, b_tokens, a_url, b_url, a_token_url, b_token_url }
    }

    /// With token services whose tokens start with `a-` and `b-`: a token names its tenant.
    async fn named() -> Two {
        Two::start(
            TokenService { prefix: "a-", ..Default::default() },
            TokenService { prefix: "b-", ..Default::default() },
        )
        .await
    }
}

/// Waits (at most 10 s) until the proxy reports a reload, and returns its status.
async fn wait_reloaded(proxy: &Proxy) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value =
            client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().json().await.unwrap();
        if !status["config"]["last_reload"].is_null() {
            return status;
        }
        assert!(Instant::now() < deadline, "no reload within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reload exchanges the two tenants' APIs and credentials (the tables renamed) while a request
/// to `prod` waits for the rest of its body: the request goes where it was routed, with the
/// token of the credentials that went with that API, never the other tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swapping_two_tenants_never_sends_the_new_token_to_the_old_api() {
    let Two { a_api, b_api, a_url, b_url, a_token_url, b_token_url, .. } = Two::named().await;
    let before = format!("{}{}", table("prod", &a_url, &a_token_url, "a"), table("uat", &b_url, &b_token_url, "b"));
    let after = format!("{}{}", table("prod", &b_url, &b_token_url, "b"), table("uat", &a_url, &a_token_url, "a"));
    let folder = Folder::new("swap");
    let file = folder.0.join("tenants.toml");
    std::fs::write(&file, &before).unwrap();
    let config = uem_proxy::Config::load(Some(&file), &|_| None).unwrap();
    let proxy = Proxy::run(config).await;
    // Both tenants hold their tokens before anything is in flight.
    let r = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = r.status() == 200;
    while !ready {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap().status() == 200;
    }

    // A request to prod (API a) whose body is not complete: it has been routed, not yet sent.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /t/prod/api/mdm/devices/search HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{{}}",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    std::fs::write(&file, &after).unwrap();
    let status = wait_reloaded(&proxy).await;
    assert_eq!(status["config"]["last_reload"]["ok"], true, "{status}");
    assert_eq!(status["tenants"]["prod"]["upstream"], b_url.as_str(), "{status}");

    stream.write_all(b"  ").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // After the reload, each name reaches its new API with that API's own token.
    client().get(format!("{}/t/prod/api/x", proxy.url)).send().await.unwrap();
    client().get(format!("{}/t/uat/api/x", proxy.url)).send().await.unwrap();
    let auths = |api: &Upstream| -> Vec<String> {
        api.seen().iter().map(|s| s.headers["authorization"].to_str().unwrap().to_owned()).collect()
    };
    let (at_a, at_b) = (auths(&a_api), auths(&b_api));
    assert!(at_a.iter().all(|a| a.starts_with("Bearer a-")), "API a saw another tenant's token: {at_a:?}");
    assert!(at_b.iter().all(|a| a.starts_with("Bearer b-")), "API b saw another tenant's token: {at_b:?}");
    assert_eq!((at_a.len(), at_b.len()), (2, 1), "{at_a:?} {at_b:?}");
}

/// prod (the default, API a) and uat (API b, read-only), each with its own token service.
async fn two_tenants(uat_extra: &str) -> (Proxy, Upstream, Upstream) {
    let Two { a_api, b_api, a_url, b_url, a_token_url, b_token_url, .. } = Two::named().await;
    let file = format!(
        "default_tenant = \"prod\"\n{}{}{uat_extra}",
        table("prod", &a_url, &a_token_url, "a"),
        table("uat", &b_url, &b_token_url, "b")
    );
    let config = uem_proxy::Config::load_toml(&file, &|_| None).expect("valid config");
    (Proxy::run(config).await, a_api, b_api)
}

/// The status line of a raw request for `target`.
async fn status_of(proxy: &Proxy, method: &str, target: &str, headers: &str) -> u16 {
    let addr = proxy.addr;
    let request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    let answer = raw(addr, &request).await;
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{target}: {answer}"))
}

/// Spellings that name uat only once the path is made canonical (`//t/uat/`, `/%74/uat/`,
/// `/x/../t/uat/`) are refused: they never reach the default tenant's API with its token, nor
/// uat's.
#[tokio::test]
async fn a_tenant_prefix_that_appears_only_once_the_path_is_canonical_reaches_no_api() {
    let (proxy, a_api, b_api) = two_tenants("").await;
    for target in [
        "//t/uat/api/mdm/devices/1",
        "/./t/uat/api/mdm/devices/1",
        "/%74/uat/api/mdm/devices/1",
        "/%2e/t/uat/api/mdm/devices/1",
        "/api/../t/uat/api/mdm/devices/1",
        "/%2E%2E/T/uat/api/mdm/devices/1",
        "///T//uat/api/mdm/devices/1",
    ] {
        let status = status_of(&proxy, "GET", target, "").await;
        assert!([400, 404].contains(&status), "{target}: {status}");
    }
    assert!(a_api.seen().is_empty(), "the default tenant's API saw {:?}", a_api.seen());
    assert!(b_api.seen().is_empty(), "uat's API saw {:?}", b_api.seen());
}

/// Within a prefix, dot segments and encodings never climb out of the tenant: they resolve
/// inside its API. The prefix in any case, doubled slashes after it, an absolute-form target:
/// all reach uat, and uat's read-only switch holds for every spelling and method override.
#[tokio::test]
async fn every_spelling_of_a_tenants_prefix_reaches_that_tenant_under_its_policy() {
    let (proxy, a_api, b_api) = two_tenants("read_only = true\n").await;
    let addr = proxy.addr;
    for (target, seen) in [
        ("/t/uat/../../t/prod/api/x", "/t/prod/api/x"),
        ("/t/uat/api/%2e%2e/%2e%2e/%2e%2e/t/prod/api/x", "/t/prod/api/x"),
        ("/T/uat/api/x", "/api/x"),
        ("/t/UAT/api/x", "/api/x"),
        ("/t/uat//api///x", "/api/x"),
        ("/t/uat", "/"),
        (&format!("http://{addr}/t/uat/api/y"), "/api/y"),
    ] {
        assert_eq!(status_of(&proxy, "GET", target, "").await, 200, "{target}");
        assert_eq!(b_api.last().target, seen, "{target}");
    }
    let writes = [
        ("DELETE", "/t/uat/api/mdm/devices/1", ""),
        ("delete", "/T/UAT/api/mdm/devices/1", ""),
        ("DELETE", "/t/uat//api/mdm/devices/1", ""),
        ("DELETE", "/t/uat/x/../api/mdm/devices/1", ""),
        ("POST", "/t/uat/api/mdm/devices/1", "X-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n"),
        ("GET", "/t/uat/api/mdm/devices/1", "X-Method-Override: delete\r\n"),
    ];
    let before = b_api.seen().len();
    for (method, target, headers) in writes {
        assert_eq!(status_of(&proxy, method, target, headers).await, 403, "{method} {target} {headers}");
    }
    let target = format!("http://{addr}/t/uat/api/mdm/devices/1");
    assert_eq!(status_of(&proxy, "DELETE", &target, "").await, 403, "absolute form");
    assert_eq!(b_api.seen().len(), before, "no write reached read-only uat");
    // Unknown or malformed names never fall back to the default tenant.
    for target in ["/t/uat;x/api/x", "/t/u%61t/api/x", "/t/uat%2F/api/x", "/t/uat\\..\\prod/api/x"] {
        let status = status_of(&proxy, "GET", target, "").await;
        assert!([400, 404].contains(&status), "{target}: {status}");
    }
    assert!(a_api.seen().is_empty(), "the default tenant's API saw {:?}", a_api.seen());
}

/// A tenant's own listener on another loopback address than the shared one: callers that name
/// it in `Host`, as every HTTP client does, are served; every path on it is that tenant's, even
/// one that spells another tenant's prefix.
#[test]
fn a_tenant_listener_on_its_own_address_serves_callers_that_name_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Two { a_api, b_api, a_url, b_url, a_token_url, b_token_url, .. } = rt.block_on(Two::named());
    let folder = Folder::new("tenant-listener");
    let file = folder.0.join("tenants.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndefault_tenant = \"prod\"\n{}{}listen = \"127.0.0.2:0\"\n",
        table("prod", &a_url, &a_token_url, "a"),
        table("uat", &b_url, &b_token_url, "b")
    );
    std::fs::write(&file, text).unwrap();
    let mut proxy = Running::with_file(&file);
    let own = proxy.wait_event("listening for one tenant");
    let uat_listener = own["listen"].as_str().unwrap().to_owned();
    assert!(uat_listener.starts_with("127.0.0.2:"), "{own}");
    rt.block_on(async {
        let r = client().get(format!("http://{uat_listener}/api/mdm/devices/7")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(b_api.last().target, "/api/mdm/devices/7");
        let r = client().get(format!("http://{uat_listener}/t/prod/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(b_api.last().target, "/t/prod/api/x", "on uat's listener every path is uat's");
        let r = client().get(format!("http://{uat_listener}/_proxy/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
    assert!(a_api.seen().is_empty(), "prod's API saw {:?}", a_api.seen());
    let auths: Vec<_> = b_api.seen().iter().map(|s| s.headers["authorization"].clone()).collect();
    assert!(auths.iter().all(|a| a.to_str().unwrap().starts_with("Bearer b-")), "{auths:?}");
    proxy.terminate();
}

/// A tenant that names only part of a credential would send the top level's other part (set in
/// the file or the environment, usually another tenant's) elsewhere: with its own client ID, or
/// to its own token service or API. Refused, naming the keys and never a value.
#[test]
fn a_tenant_never_takes_half_a_credential_from_the_top_level() {
    let env = |k: &str| match k {
        "UEM_CLIENT_ID" => Some("top-client".to_owned()),
        "UEM_CLIENT_SECRET" => Some("top-secret-VALUE".to_owned()),
        "UEM_PASSWORD" => Some("top-password-VALUE".to_owned()),
        _ => None,
    };
    let load = |text: &str| uem_proxy::Config::load_toml(text, &env).map(|_| ()).map_err(|e| e.to_string());
    let top = "api_url = \"https://as1.awmdm.com\"\nregion = \"na\"\n[tenants.prod]\n";
    for (uat, needle) in [
        ("client_id = \"uat-client\"\n", "tenants.uat: client_id is set here, but not client_secret"),
        ("client_secret = \"uat-secret-VALUE\"\n", "tenants.uat: client_secret is set here, but not client_id"),
        ("region = \"uat\"\n", "tenants.uat: region is set here, but not client_id and client_secret"),
        (
            "auth_mode = \"basic\"\nusername = \"u\"\ntenant_code = \"code\"\napi_url = \"https://as2.awmdm.com\"\n",
            "tenants.uat: username is set here, but not password",
        ),
    ] {
        let error = load(&format!("{top}[tenants.uat]\n{uat}")).expect_err(uat);
        assert!(error.contains(needle), "{needle:?} not in:\n{error}");
        assert!(!error.contains("VALUE"), "a secret in: {error}");
    }
    // Whole credentials from either place load: the top level's for a tenant that changes only
    // what callers may do, or the tenant's own.
    load(&format!("{top}[tenants.ro]\nread_only = true\n")).unwrap();
    let own = "console_url = \"cn2.awmdm.com\"\nregion = \"uat\"\nclient_id = \"u\"\nclient_secret = \"s\"\n";
    load(&format!("{top}[tenants.uat]\n{own}")).unwrap();
}

/// A tenant may be named `default` like any other: its own listener is kept, not taken for the
/// shared one's.
#[test]
fn a_tenant_named_default_keeps_its_own_listener() {
    let text = "api_url = \"https://as1.awmdm.com\"\nregion = \"na\"\n\
                [tenants.default]\nclient_id = \"a\"\nclient_secret = \"s\"\nlisten = \"127.0.0.1:8091\"\n\
                [tenants.uat]\nclient_id = \"b\"\nclient_secret = \"s\"\n";
    let config = uem_proxy::Config::load_toml(text, &|_| None).unwrap();
    let default = config.tenants.iter().find(|t| t.name == "default").unwrap();
    assert_eq!(default.listen, Some("127.0.0.1:8091".parse().unwrap()));
}

/// A reload removes uat (and adds `uat2` with the same API and client) while a request to uat
/// waits for the rest of its body: that request is answered by uat's API with uat's token; later
/// ones get 404, and nothing more reaches uat through the old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tenants_request_in_flight_finishes_with_its_own_token() {
    let Two { a_api, b_api, a_url, b_url, a_token_url, b_token_url, .. } = Two::named().await;
    let prod = table("prod", &a_url, &a_token_url, "a");
    let before = format!("default_tenant = \"prod\"\n{prod}{}", table("uat", &b_url, &b_token_url, "b"));
    let after = format!("default_tenant = \"prod\"\n{prod}{}", table("uat2", &b_url, &b_token_url, "b"));
    let folder = Folder::new("remove");
    let file = folder.0.join("tenants.toml");
    std::fs::write(&file, &before).unwrap();
    let config = uem_proxy::Config::load(Some(&file), &|_| None).unwrap();
    let proxy = Proxy::run(config).await;
    assert_eq!(client().get(format!("{}/t/uat/api/x", proxy.url)).send().await.unwrap().status(), 200);

    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /t/uat/api/mdm/devices/search HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{{}}",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&file, &after).unwrap();
    let status = wait_reloaded(&proxy).await;
    assert_eq!(status["config"]["last_reload"]["ok"], true, "{status}");
    assert_eq!(client().get(format!("{}/t/uat/api/x", proxy.url)).send().await.unwrap().status(), 404);

    stream.write_all(b"  ").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(client().get(format!("{}/t/uat2/api/y", proxy.url)).send().await.unwrap().status(), 200);
    let seen: Vec<_> = b_api.seen().iter().map(|s| (s.target.clone(), s.headers["authorization"].clone())).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|(_, auth)| auth.to_str().unwrap().starts_with("Bearer b-")), "{seen:?}");
    assert_eq!(seen[1].0, "/api/mdm/devices/search");
    assert!(a_api.seen().is_empty(), "{:?}", a_api.seen());
}

/// A reload gives uat a secret its token service refuses: uat keeps its old client and token,
/// the reload is reported as failed, and neither the status, the metrics nor the log shows a
/// secret or a token.
#[test]
fn new_credentials_that_win_no_token_change_nothing_and_show_no_secret() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a_tokens = TokenService { prefix: "a-", ..Default::default() };
    let refused = Reply::Raw(401, "application/json", r#"{"error":"invalid_client"}"#.to_owned());
    let b_tokens = TokenService { prefix: "b-", ..TokenService::script(&[Reply::Grant("3600"), refused]) };
    let Two { b_api, b_tokens, a_url, b_url, a_token_url, b_token_url, .. } =
        rt.block_on(Two::start(a_tokens, b_tokens));
    let folder = Folder::new("refused");
    let file = folder.0.join("tenants.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndefault_tenant = \"prod\"\n{}{}",
        table("prod", &a_url, &a_token_url, "a"),
        table("uat", &b_url, &b_token_url, "b")
    );
    std::fs::write(&file, &text).unwrap();
    let mut proxy = Running::with_file(&file);
    let url = format!("http://{}", proxy.addr());
    let (status, metrics) = rt.block_on(async {
        let get = |path: &str| client().get(format!("{url}{path}")).send();
        assert_eq!(get("/t/uat/api/x").await.unwrap().status(), 200);
        std::fs::write(&file, text.replace("b-secret", "b-NEW-secret")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status: serde_json::Value = get("/_proxy/status").await.unwrap().json().await.unwrap();
            if !status["config"]["last_reload"].is_null() {
                break status;
            }
            assert!(Instant::now() < deadline, "no reload");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(get("/t/uat/api/y").await.unwrap().status(), 200);
        let metrics = get("/_proxy/metrics").await.unwrap().text().await.unwrap();
        (status, metrics)
    });
    let reload = &status["config"]["last_reload"];
    assert_eq!(reload["ok"], false, "{status}");
    let message = reload["message"].as_str().unwrap();
    assert!(message.contains("uat: the new credentials did not obtain a token"), "{message}");
    assert!(message.contains("invalid_client"), "{message}");
    let forms = b_tokens.forms.lock().unwrap().clone();
    assert_eq!(forms.len(), 2, "one grant at start, one refused try of the new secret");
    assert_eq!(forms[1]["client_secret"], "b-NEW-secret");
    let auths: Vec<_> = b_api.seen().iter().map(|s| s.headers["authorization"].clone()).collect();
    assert_eq!(auths, ["Bearer b-tok-1", "Bearer b-tok-1"], "uat kept its token");
    proxy.terminate();
    let log = proxy.log();
    let status = status.to_string();
    for secret in ["a-secret", "b-secret", "b-NEW-secret", "a-tok-", "b-tok-"] {
        for (name, text) in [("log", &log), ("status", &status), ("metrics", &metrics)] {
            assert!(!text.contains(secret), "{secret} in the {name}");
        }
    }
}

/// Two tenants on one host, one API under the other's path (`https://uem.corp` and
/// `https://uem.corp/uat`): any caller could send the first's token to the second's API by asking
/// the first for `/uat/…`. Refused; the same API for two tenants (two policies) is not.
#[tokio::test]
async fn a_tenants_api_inside_another_tenants_api_is_refused() {
    let outer = Upstream::default();
    let base = outer.start().await;
    let tokens = TokenService::default().start().await;
    let text = |prod_api: &str, uat_api: &str| {
        format!(
            "[tenants.prod]\napi_url = \"{prod_api}\"\ntoken_url = \"{tokens}\"\nclient_id = \"a\"\nclient_secret = \"s\"\n\
             [tenants.uat]\napi_url = \"{uat_api}\"\ntoken_url = \"{tokens}\"\nclient_id = \"b\"\nclient_secret = \"s\"\n"
        )
    };
    let load = |prod: &str, uat: &str| uem_proxy::Config::load_toml(&text(prod, uat), &|_| None).map(|_| ());
    let upper = base.to_uppercase();
    for (prod, uat) in [
        (base.clone(), format!("{base}/uat")),
        (base.clone(), format!("{base}/uat/")),
        (format!("{base}/"), format!("{upper}/UAT")),
        (format!("{base}/uem"), format!("{base}/UEM/uat")),
    ] {
        let error = load(&prod, &uat).expect_err(&uat).to_string();
        assert!(error.contains("tenants.uat: api_url") && error.contains("inside tenants.prod's"), "{error}");
    }
    for (prod, uat) in [
        (base.clone(), base.clone()),
        (format!("{base}/prod"), format!("{base}/prod-uat")),
        (base.clone(), "https://as2.awmdm.com/uat".to_owned()),
    ] {
        load(&prod, &uat).unwrap_or_else(|e| panic!("{prod} {uat}: {e}"));
    }
}

/// On uat's own listener (the only one its callers may reach, say), `/_proxy/*` is about uat
/// alone: readiness is uat's, and neither the status, the metrics nor the inspector show another
/// tenant or the shared listener.
#[test]
fn a_tenant_listeners_own_endpoints_show_that_tenant_alone() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failing = Reply::Raw(500, "application/json", r#"{"error":"server_error"}"#.to_owned());
    let a_tokens = TokenService { prefix: "a-", after_script: Some(failing), ..Default::default() };
    let b_tokens = TokenService { prefix: "b-", ..Default::default() };
    let Two { a_url, b_url, a_token_url, b_token_url, .. } = rt.block_on(Two::start(a_tokens, b_tokens));
    let folder = Folder::new("tenant-admin");
    let file = folder.0.join("tenants.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndefault_tenant = \"prod\"\ntoken_wait = \"1s\"\n{}{}listen = \"127.0.0.1:0\"\n",
        table("prod", &a_url, &a_token_url, "prod-client"),
        table("uat", &b_url, &b_token_url, "uat-client")
    );
    std::fs::write(&file, text).unwrap();
    let mut proxy = Running::with_file(&file);
    let own = proxy.wait_event("listening for one tenant");
    let uat = own["listen"].as_str().unwrap().to_owned();
    let shared = proxy.addr();
    rt.block_on(async {
        let get = |url: String| async move { client().get(url).send().await.unwrap() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(format!("http://{uat}/_proxy/readyz")).await.status() != 200 {
            assert!(Instant::now() < deadline, "uat's listener never ready while uat holds a token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(format!("http://{shared}/_proxy/readyz")).await.status(), 503, "prod has no token");
        let r = get(format!("http://{uat}/_proxy/readyz?tenant=prod")).await;
        assert_eq!(r.status(), 404);
        let body = r.text().await.unwrap();
        assert!(!body.contains("prod"), "{body}");
        let status = get(format!("http://{uat}/_proxy/status")).await.text().await.unwrap();
        assert!(status.contains(&b_url) && status.contains("uat-client"), "{status}");
        for other in [a_url.as_str(), "prod-client", "\"prod\""] {
            assert!(!status.contains(other), "{other} in uat's status: {status}");
        }
        let metrics = get(format!("http://{uat}/_proxy/metrics")).await.text().await.unwrap();
        assert!(metrics.contains("tenant=\"uat\""), "{metrics}");
        assert!(!metrics.contains("tenant=\"prod\""), "{metrics}");
        // The shared listener still shows every tenant.
        let status = get(format!("http://{shared}/_proxy/status")).await.text().await.unwrap();
        assert!(status.contains("prod-client") && status.contains("uat-client"), "{status}");

        // The inspector: prod's exchanges (on the shared listener) are not uat's to see.
        let shown = |listener: String| async move {
            get(format!("http://{listener}/_proxy/requests")).await.text().await.unwrap()
        };
        let listed = |listener: String, marks: &'static [&'static str]| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let listing = shown(listener.clone()).await;
                if marks.iter().all(|m| listing.contains(m)) {
                    return listing;
                }
                assert!(Instant::now() < deadline, "{marks:?} never listed: {listing}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        get(format!("http://{shared}/api/prod-first?who=prod-caller")).await;
        get(format!("http://{uat}/api/uat-first")).await;
        listed(shared.to_string(), &["prod-first", "uat-first"]).await;
        let on_uat = listed(uat.clone(), &["uat-first"]).await;
        assert!(!on_uat.contains("prod-first") && !on_uat.contains("prod-caller"), "{on_uat}");
        let status: serde_json::Value = get(format!("http://{uat}/_proxy/status")).await.json().await.unwrap();
        assert_eq!(status["listen"], uat.as_str(), "{status}");
        assert_eq!(status["inspector"]["kept"], 1, "{status}");
        assert!(status["inspector"].get("per_minute").is_none(), "all tenants' counts: {status}");
        assert!(status.get("replay_buffers").is_none(), "all tenants' bodies: {status}");
        // The events: prod's next exchange is never sent on uat's stream, uat's is.
        let mut events = get(format!("http://{uat}/_proxy/events")).await;
        let mut seen = String::from_utf8(events.chunk().await.unwrap().unwrap().to_vec()).unwrap();
        assert!(seen.starts_with("retry:"), "{seen}");
        get(format!("http://{shared}/api/prod-second")).await;
        listed(shared.to_string(), &["prod-second"]).await;
        get(format!("http://{uat}/api/uat-second")).await;
        while !seen.contains("uat-second") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk()).await;
            let chunk = chunk.expect("uat's exchange sent on its stream").unwrap().expect("the stream goes on");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(!seen.contains("prod-second"), "{seen}");
    });
    proxy.terminate();
}

/// A reload removes uat, whose own listener stays bound until a restart: callers there get
/// `404 unknown_tenant`, and the answer names no other tenant.
#[test]
fn a_removed_tenants_listener_names_no_other_tenant() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Two { a_url, b_url, a_token_url, b_token_url, .. } =
        rt.block_on(Two::start(TokenService::default(), TokenService::default()));
    let folder = Folder::new("removed-listener");
    let file = folder.0.join("tenants.toml");
    let prod =
        format!("listen = \"127.0.0.1:0\"\ndefault_tenant = \"prod\"\n{}", table("prod", &a_url, &a_token_url, "a"));
    let both = format!("{prod}{}listen = \"127.0.0.1:0\"\n", table("uat", &b_url, &b_token_url, "b"));
    std::fs::write(&file, &both).unwrap();
    let mut proxy = Running::with_file(&file);
    let uat = proxy.wait_event("listening for one tenant")["listen"].as_str().unwrap().to_owned();
    rt.block_on(async {
        let get = || async { client().get(format!("http://{uat}/api/x")).send().await.unwrap() };
        assert_eq!(get().await.status(), 200);
        std::fs::write(&file, &prod).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let gone = loop {
            let r = get().await;
            if r.status() == 404 {
                break r;
            }
            assert!(Instant::now() < deadline, "uat was never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let body: serde_json::Value = gone.json().await.unwrap();
        assert_eq!(body["error"], "unknown_tenant");
        assert!(!body["message"].as_str().unwrap().contains("prod"), "{body}");
    });
    proxy.terminate();
}

/// A reload adds uat with a listener of its own: the tenant is served under `/t/uat/` at once,
/// and the log says its listener waits for a restart rather than leaving callers to find out.
#[test]
fn a_tenant_added_by_a_reload_says_its_listener_waits_for_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Two { a_url, b_url, a_token_url, b_token_url, .. } =
        rt.block_on(Two::start(TokenService::default(), TokenService::default()));
    let folder = Folder::new("added-listener");
    let file = folder.0.join("tenants.toml");
    let prod =
        format!("listen = \"127.0.0.1:0\"\ndefault_tenant = \"prod\"\n{}", table("prod", &a_url, &a_token_url, "a"));
    std::fs::write(&file, &prod).unwrap();
    let mut proxy = Running::with_file(&file);
    let url = format!("http://{}", proxy.addr());
    rt.block_on(async {
        // Ready: the file watcher has started too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while client().get(format!("{url}/_proxy/readyz")).send().await.unwrap().status() != 200 {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    std::fs::write(&file, format!("{prod}{}listen = \"127.0.0.1:0\"\n", table("uat", &b_url, &b_token_url, "b")))
        .unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while client().get(format!("{url}/t/uat/api/x")).send().await.unwrap().status() != 200 {
            assert!(Instant::now() < deadline, "uat was never added");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A tenant that was running gains a listener of its own: the same word.
    let uat = format!("{}listen = \"127.0.0.1:0\"\n", table("uat", &b_url, &b_token_url, "b"));
    std::fs::write(&file, format!("{prod}listen = \"127.0.0.1:0\"\n{uat}")).unwrap();
    let warned = |tenant: &str| {
        proxy
            .events("changed, but takes effect only after a restart")
            .into_iter()
            .any(|e| e["tenant"] == tenant && e["setting"] == "listen")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned("prod") {
        assert!(Instant::now() < deadline, "no word of prod's new listener:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(warned("uat"), "{}", proxy.log());
    proxy.terminate();
}

/// Eight tenants whose token services hang (one region down, say) do not hold up a ninth on
/// another token service: the limit on token requests at once is per token service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_a_hanging_token_service_never_delay_a_tenant_on_another() {
    let api = Upstream::default();
    let api_url = api.start().await;
    let mut file = String::from("default_tenant = \"z\"\n");
    let mut hanging = Vec::new();
    for i in 0..8 {
        let tokens = TokenService { delay: Duration::from_secs(4), ..Default::default() };
        file.push_str(&table(&format!("h{i}"), &api_url, &tokens.start().await, &format!("h{i}")));
        hanging.push(tokens);
    }
    let healthy = TokenService { prefix: "z-", ..Default::default() };
    file.push_str(&table("z", &api_url, &healthy.start().await, "z"));
    let config = uem_proxy::Config::load_toml(&file, &|_| None).expect("valid config");
    let started = Instant::now();
    let proxy = Proxy::run(config).await;
    let r = client().get(format!("{}/api/x", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2), "z waited {:?} for a token", started.elapsed());
    assert_eq!(api.last().headers["authorization"], "Bearer z-tok-1");
}
