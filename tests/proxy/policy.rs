//! Policy that cannot be spelt around, through real sockets: the method's letter case, methods
//! that are not standard, and encoded slashes in the path.

use crate::support::{Proxy, TokenService, Upstream, raw, raw_json};

fn request(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

fn status(response: &str) -> u16 {
    response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn with_policy(file: &str, extra: &[(&str, &str)]) -> (Proxy, Upstream) {
    let (tokens, upstream) = (TokenService::default(), Upstream::default());
    let proxy = Proxy::start_with_file(&upstream.start().await, &tokens.start().await, Some(file), extra).await;
    (proxy, upstream)
}

/// Sends each request and expects `403 policy_denied`; nothing reaches the upstream.
async fn all_denied(proxy: &Proxy, upstream: &Upstream, attempts: &[(&str, &str)]) {
    for (method, path) in attempts {
        let response = raw(proxy.addr, &request(method, path, "")).await;
        assert_eq!(status(&response), 403, "{method} {path}: {response}");
        assert_eq!(raw_json(&response)["error"], "policy_denied", "{method} {path}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

const SPELLINGS: [&str; 4] = ["DELETE", "delete", "Delete", "dElEtE"];

#[tokio::test]
async fn a_deny_list_and_a_rule_by_method_hold_in_every_letter_case() {
    let file = r#"
[policy]
deny = ["REST API Devices Delete"]

[[policy.rules]]
action = "deny"
methods = ["DELETE"]
path = "/api/system/**"
"#;
    let (proxy, upstream) = with_policy(file, &[]).await;
    for method in SPELLINGS {
        all_denied(&proxy, &upstream, &[(method, "/api/mdm/devices/5"), (method, "/api/system/users/5")]).await;
    }
    let by_permission = raw(proxy.addr, &request("dElEtE", "/api/mdm/devices/5", "")).await;
    assert_eq!(raw_json(&by_permission)["permission"], "REST API Devices Delete");
    let by_rule = raw(proxy.addr, &request("delete", "/api/system/users/5", "")).await;
    assert!(raw_json(&by_rule)["message"].as_str().unwrap().contains("/api/system/**"), "{by_rule}");
    // What passes reaches the API with the method in upper case.
    let fine = raw(proxy.addr, &request("get", "/api/system/users/5", "")).await;
    assert_eq!(status(&fine), 200, "{fine}");
    assert_eq!(upstream.last().method, "GET");
}

#[tokio::test]
async fn read_only_mode_and_an_allow_list_hold_in_every_letter_case() {
    let (read_only, upstream) = with_policy("", &[("UEM_PROXY_READ_ONLY", "true")]).await;
    for method in SPELLINGS.iter().chain(&["post", "Put", "pAtCh"]) {
        all_denied(&read_only, &upstream, &[(method, "/api/mdm/devices/5")]).await;
    }
    let search = raw(read_only.addr, &request("post", "/api/mdm/devices/search", "")).await;
    assert_eq!(status(&search), 200, "a POST search is a read in any case: {search}");
    assert_eq!(upstream.last().method, "POST");

    let (allow_list, upstream) = with_policy("[policy]\nallow = [\"REST API Devices Read\"]\n", &[]).await;
    for method in SPELLINGS {
        all_denied(&allow_list, &upstream, &[(method, "/api/mdm/devices/5")]).await;
    }
    let read = raw(allow_list.addr, &request("Get", "/api/mdm/devices/5", "")).await;
    assert_eq!(status(&read), 200, "{read}");
    assert_eq!(upstream.last().method, "GET");
}

#[tokio::test]
async fn methods_that_are_not_standard_pass_no_restricted_policy_as_reads() {
    let (read_only, upstream) = with_policy("", &[("UEM_PROXY_READ_ONLY", "true")]).await;
    let attempts =
        [("PROPFIND", "/api/mdm/devices/search"), ("FOO", "/api/mdm/devices/5"), ("foo", "/api/system/info")];
    all_denied(&read_only, &upstream, &attempts).await;
    let (allow_list, upstream) = with_policy("[policy]\nallow = [\"REST API Devices Read\"]\n", &[]).await;
    all_denied(&allow_list, &upstream, &attempts).await;
    let (deny_write, upstream) = with_policy("[policy]\ndeny = [\"REST API Devices Write\"]\n", &[]).await;
    all_denied(&deny_write, &upstream, &[("PROPFIND", "/api/mdm/devices/search"), ("foo", "/api/mdm/devices/5")]).await;
    // With an open policy they are forwarded exactly as sent.
    let (open, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = raw(open.addr, &request("PropFind", "/api/x", "")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.last().method, "PropFind");
}

#[tokio::test]
async fn the_upstream_and_every_check_see_the_method_in_upper_case() {
    let (proxy, upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_ALLOWED_ORIGINS", "http://localhost:3000")]).await;
    for (sent, expected) in [("delete", "DELETE"), ("Delete", "DELETE"), ("pAtCh", "PATCH"), ("put", "PUT")] {
        let response = raw(proxy.addr, &request(sent, "/api/mdm/devices/5", "")).await;
        assert_eq!(status(&response), 200, "{sent}: {response}");
        assert_eq!(upstream.last().method, expected);
    }
    // A second request on the same connection is made canonical too.
    let two = format!(
        "{}{}",
        request("delete", "/api/one", "").replace("Connection: close\r\n", ""),
        request("post", "/api/two", "")
    );
    let both = raw(proxy.addr, &two).await;
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    let seen: Vec<_> = upstream.seen().into_iter().rev().take(2).map(|s| (s.method, s.target)).collect();
    assert_eq!(seen, [("POST".to_owned(), "/api/two".to_owned()), ("DELETE".to_owned(), "/api/one".to_owned())]);
    let before = upstream.seen().len();

    // TRACE would echo the token: refused in any case, and so is CONNECT.
    for trace in ["trace", "Trace", "TRACE"] {
        let response = raw(proxy.addr, &request(trace, "/api/x", "")).await;
        assert_eq!(status(&response), 405, "{trace}: {response}");
        assert_eq!(raw_json(&response)["error"], "method_not_allowed");
    }
    let connect = raw(proxy.addr, &request("connect", "/api/x", "")).await;
    assert_eq!(status(&connect), 400, "{connect}");
    // A preflight is answered here in any case, and never forwarded.
    let preflight = "options /api/mdm/devices/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n\
                     Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n";
    let answered = raw(proxy.addr, preflight).await.to_ascii_lowercase();
    assert!(answered.starts_with("http/1.1 204"), "{answered}");
    assert!(answered.contains("access-control-allow-methods"), "{answered}");
    assert_eq!(upstream.seen().len(), before, "{:?}", upstream.seen());
    // The proxy's own routes too.
    let status_page = raw(proxy.addr, &request("get", "/_proxy/status", "")).await;
    assert_eq!(status(&status_page), 200, "{status_page}");
}

#[tokio::test]
async fn encoded_slashes_reach_the_upstream_exactly_as_sent() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for target in [
        "/api/mdm/devices/serialnumber/AB%2FCD",
        "/api/mdm/devices/serialnumber/ab%2fcd?x=%2F",
        "/api/system/users/search?username=DOMAIN%5Cjdoe",
        "/api/system/users/DOMAIN%5Cjdoe",
        "/api/system/users/domain%5cjdoe/",
        "/api/mdm/devices/..%2F..%2Fsystem",
        "/api/mdm/tags/a%2F%2Fb",
    ] {
        let response = raw(proxy.addr, &request("GET", target, "")).await;
        assert_eq!(status(&response), 200, "{target}: {response}");
        assert_eq!(upstream.last().target, target);
    }
    // The other rules of the canonical path still apply around them.
    let response = raw(proxy.addr, &request("GET", "/api/./mdm//x/../devices/%41B%2FCD/", "")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.last().target, "/api/mdm/devices/AB%2FCD/");
}

#[tokio::test]
async fn an_encoded_slash_steps_around_no_rule() {
    let file = r#"
[policy]
deny = ["REST API Users Read"]

[[policy.rules]]
action = "deny"
methods = ["DELETE"]
path = "/api/mdm/devices/*"
"#;
    let (proxy, upstream) = with_policy(file, &[]).await;
    let attempts = [
        // A server that decodes %2F would see DELETE /api/mdm/devices/5.
        ("DELETE", "/api/mdm/devices%2F5"),
        ("delete", "/api/mdm/devices%2f5"),
        ("DELETE", "/api/mdm%5Cdevices%5c5"),
        // ..%2F climbs in no reading unnoticed.
        ("GET", "/api/mdm/devices/..%2F..%2Fsystem/users/5"),
        ("GET", "/api/mdm/devices/..%5C..%5Csystem/users"),
        ("GET", "/api/system/users/5"),
    ];
    all_denied(&proxy, &upstream, &attempts).await;
    let serial = "/api/mdm/devices/serialnumber/AB%2FCD";
    let response = raw(proxy.addr, &request("GET", serial, "")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.last().target, serial);
}

#[tokio::test]
async fn a_head_in_lower_case_keeps_the_connection_in_step() {
    // The HTTP parser frames the answer by the method as sent: whatever it writes for `head`, the
    // next answer on the connection must start where the caller expects it.
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let two = "head /api/x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/y HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let response = raw(proxy.addr, two).await;
    let (first, second) = response.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{response}");
    assert!(second.starts_with("HTTP/1.1 200"), "{response}");
    assert!(second.contains(r#""body_len":0"#), "{response}");
    let seen: Vec<_> = upstream.seen().into_iter().map(|s| (s.method, s.target)).collect();
    assert_eq!(seen, [("HEAD".to_owned(), "/api/x".to_owned()), ("GET".to_owned(), "/api/y".to_owned())]);
}

#[tokio::test]
async fn a_method_override_header_cannot_carry_a_denied_method() {
    let file = "[policy]\ndeny = [\"REST API Devices Delete\"]\n";
    let (proxy, upstream) = with_policy(file, &[]).await;
    for header in ["X-HTTP-Method-Override: DELETE", "x-http-method: delete", "X-Method-Override: GET, Delete"] {
        let response = raw(proxy.addr, &request("POST", "/api/mdm/devices/5", &format!("{header}\r\n"))).await;
        assert_eq!(status(&response), 403, "{header}: {response}");
        assert_eq!(raw_json(&response)["permission"], "REST API Devices Delete", "{header}");
    }
    // The override check skips the proxy's own paths; one that climbs out of them is still
    // the proxy's (404), never forwarded.
    for path in ["/_proxy/../api/mdm/devices/5", "/_proxy/%2e%2e/api/mdm/devices/5"] {
        let response = raw(proxy.addr, &request("POST", path, "X-HTTP-Method-Override: DELETE\r\n")).await;
        assert_eq!(status(&response), 404, "{path}: {response}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    let fine = raw(proxy.addr, &request("POST", "/api/mdm/devices/5", "X-HTTP-Method-Override: PATCH\r\n")).await;
    assert_eq!(status(&fine), 200, "{fine}");
    assert_eq!(upstream.last().headers["x-http-method-override"], "PATCH", "forwarded as sent");
}
