//! `uem-proxy check`: says in plain words whether this setup works, step by step, and which step
//! fails: the configuration, the token service, the credentials, the API host, a first API call,
//! and per permission category whether the client's role allows a harmless read.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use url::Url;

use crate::Config;
use crate::token::{self, Credentials, FetchError};
use crate::uem::mapping;
use crate::uem::permissions;

/// A harmless read for each category that has one: a one-item search.
const READS: &[&str] = &[
    "/api/mdm/devices/search?pagesize=1",
    "/api/system/users/search?pagesize=1",
    "/api/system/groups/search?pagesize=1",
    "/api/mdm/smartgroups/search?pagesize=1",
    "/api/system/admins/search?pagesize=1",
    "/api/mam/apps/search?pagesize=1",
    "/api/mdm/profiles/search?pagesize=1",
    "/api/mdm/products/search?pagesize=1",
];

/// Runs every step, writing a line each to `out`. Returns the failing step's name, if any.
pub async fn run(config: &Config, out: &mut String) -> Option<&'static str> {
    let _ = writeln!(out, "uem-proxy check");
    let token_source = if config.token_url_source == "explicit" { "set directly" } else { &config.token_url_source };
    line(
        out,
        true,
        "configuration",
        &format!("API {}, token service {} ({token_source})", base(&config.api_url), config.token_url),
    );
    let client = match crate::http_client(config) {
        Ok(client) => client,
        Err(e) => return fail(out, "configuration", &format!("the HTTP client cannot be built: {e}")),
    };

    match reach(&config.token_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "token service", &detail),
        Err(detail) => return fail(out, "token service", &detail),
    }
    let credentials = Credentials {
        url: config.token_url.clone(),
        client_id: config.client_id.clone(),
        client_secret: config.client_secret.clone(),
    };
    let started = Instant::now();
    let grant = match token::request(&client, &credentials, config.upstream_timeout).await {
        Ok(grant) => grant,
        Err(FetchError::Unreachable(e)) => return fail(out, "token service", &format!("connection failed: {e}")),
        Err(e) => return fail(out, "credentials", &format!("{e}")),
    };
    let lifetime = humantime::format_duration(grant.lifetime);
    line(
        out,
        true,
        "credentials",
        &format!("accepted; the token lives {lifetime} (grant took {})", ms(started.elapsed())),
    );
    let bearer = format!("Bearer {}", grant.access_token.expose_secret());

    match reach(&config.api_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "API host", &detail),
        Err(detail) => return fail(out, "API host", &detail),
    }
    let started = Instant::now();
    let info = client
        .get(format!("{}/api/system/info", base(&config.api_url)))
        .header("authorization", &bearer)
        .header("accept", "application/json")
        .timeout(config.upstream_timeout)
        .send()
        .await;
    match info {
        Ok(response) if response.status().is_success() => {
            let took = ms(started.elapsed());
            let bytes = response.bytes().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let product = [&body["ProductName"], &body["ProductVersion"]]
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            line(out, true, "system info", &format!("/api/system/info answered: {product} ({took})"));
        }
        Ok(response) => {
            let status = response.status();
            let hint = match status.as_u16() {
                401 => ": the API rejects the token (is the token service the tenant's region?)",
                403 => ": the role allows no system information",
                _ => "",
            };
            return fail(out, "system info", &format!("/api/system/info answered HTTP {status}{hint}"));
        }
        Err(e) => return fail(out, "system info", &format!("/api/system/info failed: {e}")),
    }

    let _ = writeln!(out, "role permissions (a harmless read of each):");
    let mut checked = Vec::new();
    for path in READS {
        let needed = mapping::required(&http::Method::GET, path).expect("every read maps to a permission");
        checked.push(needed.permission.category);
        let response = client
            .get(format!("{}{path}", base(&config.api_url)))
            .header("authorization", &bearer)
            .header("accept", "application/json")
            .timeout(config.upstream_timeout)
            .send()
            .await;
        let verdict = match response.map(|r| r.status().as_u16()) {
            Ok(200..=299) => "allowed".to_owned(),
            Ok(403) => "denied".to_owned(),
            Ok(status) => format!("HTTP {status}"),
            Err(e) => format!("failed ({})", if e.is_timeout() { "timeout" } else { "connection" }),
        };
        let _ = writeln!(out, "  {verdict:<9} {:<32} GET {path}", needed.permission.name);
    }
    let unchecked: Vec<&str> = permissions::categories().into_iter().filter(|c| !checked.contains(c)).collect();
    if !unchecked.is_empty() {
        let _ = writeln!(out, "  not checked: {} (no harmless read is known)", unchecked.join(", "));
    }
    let _ = writeln!(out, "all checks passed");
    None
}

fn base(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn line(out: &mut String, ok: bool, step: &str, detail: &str) {
    let _ = writeln!(out, "  {:<5} {step:<14} {detail}", if ok { "ok" } else { "FAIL" });
}

fn fail(out: &mut String, step: &'static str, detail: &str) -> Option<&'static str> {
    line(out, false, step, detail);
    let _ = writeln!(out, "FAILED at step \"{step}\": {detail}");
    Some(step)
}

/// Resolves the URL's host and opens a TCP connection, timing both.
async fn reach(url: &Url, timeout: Duration) -> Result<String, String> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let started = Instant::now();
    let addresses: Vec<_> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| format!("{host} does not resolve: {e}"))?.collect();
    let dns = started.elapsed();
    let first = *addresses.first().ok_or_else(|| format!("{host} resolves to no address"))?;
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => Ok(format!(
            "{host} resolves ({} address{}, {}), TCP connect to {first} {}",
            addresses.len(),
            if addresses.len() == 1 { "" } else { "es" },
            ms(dns),
            ms(started.elapsed())
        )),
        Ok(Err(e)) => Err(format!("{host} resolves, but {first} refuses or drops the connection: {e}")),
        Err(_) => {
            Err(format!("{host} resolves, but {first} does not answer within {}", humantime::format_duration(timeout)))
        }
    }
}
