//! The sandbox tenant: its token service, its API's behaviour, and the proxy in front of it
//! where a real tenant's behaviour matters (expiry, 403, 429, paging, big blobs).

use std::collections::HashSet;
use std::time::Duration;

use uem_proxy::sandbox::Role;

use crate::support::{SANDBOX_ID, SANDBOX_SECRET, client, proxy_for_sandbox, raw, sandbox_options, start_sandbox};

async fn token(base: &str) -> String {
    let form = [("grant_type", "client_credentials"), ("client_id", SANDBOX_ID), ("client_secret", SANDBOX_SECRET)];
    let response = client().post(format!("{base}/connect/token")).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn get(base: &str, token: &str, path: &str) -> reqwest::Response {
    client().get(format!("{base}{path}")).bearer_auth(token).header("accept", "application/json").send().await.unwrap()
}

#[tokio::test]
async fn the_token_service_speaks_rfc_6749() {
    let (base, sandbox) = start_sandbox(sandbox_options()).await;
    let url = format!("{base}/connect/token");
    let good = [("grant_type", "client_credentials"), ("client_id", SANDBOX_ID), ("client_secret", SANDBOX_SECRET)];
    let response = client().post(&url).form(&good).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);

    let basic = client()
        .post(&url)
        .basic_auth(SANDBOX_ID, Some(SANDBOX_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "HTTP Basic client authentication");

    let wrong = [("grant_type", "client_credentials"), ("client_id", SANDBOX_ID), ("client_secret", "nope")];
    let response = client().post(&url).form(&wrong).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    let response = client()
        .post(&url)
        .basic_auth(SANDBOX_ID, Some("nope"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));

    let password = [("grant_type", "password"), ("client_id", SANDBOX_ID), ("client_secret", SANDBOX_SECRET)];
    let response = client().post(&url).form(&password).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");

    let response = client().post(&url).form(&[("client_id", SANDBOX_ID)]).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(sandbox.tokens_issued(), 2);
}

#[tokio::test]
async fn the_api_wants_a_live_token_and_answers_in_uem_error_shape() {
    let mut options = sandbox_options();
    options.token_lifetime = Duration::from_secs(1);
    let (base, _sandbox) = start_sandbox(options).await;
    let response = client().get(format!("{base}/api/system/info")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 1005);
    assert!(body["activityId"].as_str().is_some_and(|a| a.len() == 36));
    assert_eq!(get(&base, "made-up", "/api/system/info").await.status(), 401);

    let token = token(&base).await;
    assert_eq!(get(&base, &token, "/api/system/info").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = get(&base, &token, "/api/system/info").await;
    assert_eq!(expired.status(), 401);
    let body: serde_json::Value = expired.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn paging_covers_every_device_once_with_case_insensitive_parameters() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let token = token(&base).await;
    let mut ids = HashSet::new();
    for page in 0..8 {
        let response = get(&base, &token, &format!("/API/mdm/devices/search?Page={page}&PageSize=40")).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["Total"], 300);
        assert_eq!(body["Page"], page);
        assert_eq!(body["PageSize"], 40);
        for device in body["Devices"].as_array().unwrap() {
            assert!(ids.insert(device["Id"]["Value"].as_u64().unwrap()), "a device on two pages");
        }
    }
    assert_eq!(ids.len(), 300);
    let past_the_end = get(&base, &token, "/api/mdm/devices/search?page=8&pagesize=40").await;
    assert_eq!(past_the_end.status(), 204, "UEM answers an empty search with 204");

    let android = get(&base, &token, "/api/v1/mdm/devices/search?platform=android&pagesize=500").await;
    let body: serde_json::Value = android.json().await.unwrap();
    let devices = body["Devices"].as_array().unwrap();
    assert!(!devices.is_empty() && devices.iter().all(|d| d["Platform"] == "Android"));
    assert_eq!(body["Total"], devices.len());
}

#[tokio::test]
async fn devices_by_id_alternate_id_and_versioned_media_type() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let token = token(&base).await;
    let v1: serde_json::Value = get(&base, &token, "/api/mdm/devices/7").await.json().await.unwrap();
    assert_eq!(v1["Id"]["Value"], 7);
    assert!(v1.get("Uuid").is_none(), "version 1 has no Uuid");
    let serial = v1["SerialNumber"].as_str().unwrap();
    let by_serial: serde_json::Value =
        get(&base, &token, &format!("/api/mdm/devices?searchby=Serialnumber&id={serial}")).await.json().await.unwrap();
    assert_eq!(by_serial["Id"]["Value"], 7);

    let v2 = client()
        .get(format!("{base}/api/mdm/devices/7"))
        .bearer_auth(&token)
        .header("accept", "application/json;version=2")
        .send()
        .await
        .unwrap();
    assert_eq!(v2.headers()["content-type"], "application/json; version=2");
    let v2: serde_json::Value = v2.json().await.unwrap();
    let uuid = v2["Uuid"].as_str().unwrap().to_owned();
    let by_uuid: serde_json::Value =
        get(&base, &token, &format!("/api/mdm/devices/{uuid}")).await.json().await.unwrap();
    assert_eq!(by_uuid["Id"]["Value"], 7);

    let v9 = client()
        .get(format!("{base}/api/mdm/devices/7"))
        .bearer_auth(&token)
        .header("accept", "application/json;version=9")
        .send()
        .await
        .unwrap();
    assert_eq!(v9.status(), 406);

    let missing = get(&base, &token, "/api/mdm/devices/999999").await;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["errorCode"], 5061);

    // No Accept header at all (reqwest would send */*): UEM answers XML.
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let request = format!(
        "GET /api/system/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let xml = raw(addr, &request).await;
    assert!(xml.contains("content-type: application/xml; charset=utf-8"), "{xml}");
    assert!(xml.contains("<ProductName>Workspace ONE UEM</ProductName>"), "{xml}");
}

#[tokio::test]
async fn users_groups_smart_groups_and_apps_are_searchable() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let token = token(&base).await;
    let searches = [
        ("/api/system/users/search?lastname=tanaka", "Users"),
        ("/api/system/groups/search", "LocationGroups"),
        ("/api/mdm/smartgroups/search?name=kiosk", "SmartGroups"),
        ("/api/mam/apps/search?platform=Apple", "Application"),
    ];
    for (path, key) in searches {
        let response = get(&base, &token, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body[key].as_array().is_some_and(|a| !a.is_empty()), "{path}: {body}");
    }
    let children: serde_json::Value = get(&base, &token, "/api/system/groups/572/children").await.json().await.unwrap();
    assert_eq!(children[0]["Name"], "Store Kiosks");
    let user: serde_json::Value = get(&base, &token, "/api/system/users/10003").await.json().await.unwrap();
    assert_eq!(user["Id"]["Value"], 10003);
}

#[tokio::test]
async fn commands_are_accepted_and_the_role_decides_what_is_allowed() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let token = token(&base).await;
    let post = |path: String| {
        let token = token.clone();
        async move { client().post(path).bearer_auth(token).header("accept", "application/json").send().await.unwrap() }
    };
    assert_eq!(post(format!("{base}/api/mdm/devices/3/commands?command=Lock")).await.status(), 202);
    assert_eq!(post(format!("{base}/api/mdm/devices/3/enterprisewipe")).await.status(), 202);
    let device: serde_json::Value = get(&base, &token, "/api/mdm/devices/3").await.json().await.unwrap();
    assert_eq!(device["EnrollmentStatus"], "EnterpriseWipePending");
    assert_eq!(post(format!("{base}/api/mdm/devices/3/commands?command=Teleport")).await.status(), 400);

    // The default role (operator) may not delete.
    let denied = client().delete(format!("{base}/api/mdm/devices/3")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["errorCode"], 1001);
    assert!(body["message"].as_str().unwrap().contains("REST API Devices Delete"), "{body}");

    let mut read_only = sandbox_options();
    read_only.role = Role::ReadOnly;
    let (ro_base, _ro) = start_sandbox(read_only).await;
    let ro_token = self::token(&ro_base).await;
    let response = client()
        .post(format!("{ro_base}/api/mdm/devices/3/commands?command=Lock"))
        .bearer_auth(&ro_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("REST API Devices Execute"));
    assert_eq!(get(&ro_base, &ro_token, "/api/mdm/devices/3").await.status(), 200);

    let mut full = sandbox_options();
    full.role = Role::Full;
    let (full_base, _full) = start_sandbox(full).await;
    let full_token = self::token(&full_base).await;
    let deleted =
        client().delete(format!("{full_base}/api/mdm/devices/3")).bearer_auth(&full_token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(get(&full_base, &full_token, "/api/mdm/devices/3").await.status(), 404);
}

#[tokio::test]
async fn through_the_proxy_tokens_that_expire_are_replaced_without_a_caller_noticing() {
    let mut options = sandbox_options();
    options.token_lifetime = Duration::from_secs(2);
    let (base, sandbox) = start_sandbox(options).await;
    let proxy = proxy_for_sandbox(&base, &[]).await;
    let started = std::time::Instant::now();
    let mut calls = 0;
    let client = client();
    while started.elapsed() < Duration::from_secs(5) {
        let response = client.get(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "after {:?}", started.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A call at least every 250 ms on average: every token's end falls between two calls.
    assert!(calls > 20, "{calls} calls");
    let issued = sandbox.tokens_issued();
    assert!((3..=5).contains(&issued), "a 2 s token is replaced every 1.5 s: {issued} tokens in 5 s");
}

#[tokio::test]
async fn through_the_proxy_403_and_429_arrive_as_the_tenant_sent_them() {
    let mut options = sandbox_options();
    options.rate_limit = Some(5);
    let (base, _sandbox) = start_sandbox(options).await;
    let proxy = proxy_for_sandbox(&base, &[]).await;
    let denied = client().delete(format!("{}/api/mdm/devices/1", proxy.url)).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["errorCode"], 1001);

    let mut limited = None;
    let client = client();
    for _ in 0..20 {
        let response = client.get(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a burst over 5 a second meets 429");
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["errorCode"], 429);
}

#[tokio::test]
async fn through_the_proxy_paging_works_as_against_the_tenant() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let proxy = proxy_for_sandbox(&base, &[]).await;
    let mut seen = 0;
    for page in 0.. {
        let url = format!("{}/api/mdm/devices/search?page={page}&pagesize=128&orderby=Id", proxy.url);
        let response = client().get(url).send().await.unwrap();
        if response.status() == 204 {
            break;
        }
        let body: serde_json::Value = response.json().await.unwrap();
        let devices = body["Devices"].as_array().unwrap();
        assert_eq!(devices[0]["Id"]["Value"], seen + 1);
        seen += devices.len() as u64;
    }
    assert_eq!(seen, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_a_100_mib_blob_goes_up_and_comes_back_intact() {
    let (base, _sandbox) = start_sandbox(sandbox_options()).await;
    let proxy = proxy_for_sandbox(&base, &[]).await;
    let total = 100u64 * 1024 * 1024;
    let response = client()
        .post(format!("{}/api/mam/blobs/uploadblob?filename=app.ipa&organizationgroupid=570", proxy.url))
        .header("accept", "application/json")
        .header("content-type", "application/octet-stream")
        .body(crate::support::pattern_body(total))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["Size"], total);
    let id = body["Value"].as_u64().unwrap();

    let download = client().get(format!("{}/api/mam/blobs/downloadblob/{id}", proxy.url)).send().await.unwrap();
    assert_eq!(download.status(), 200);
    crate::support::expect_pattern(download, total).await;

    let deleted = client().delete(format!("{}/api/mam/blobs/blob/{id}", proxy.url)).send().await.unwrap();
    assert_eq!(deleted.status(), 403, "the default role may not delete");
}
