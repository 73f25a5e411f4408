//! `uem-proxy check`: says in plain words whether this setup works, step by step, and which step
//! fails: the configuration, the token service, the credentials, the API host, a first API call,
//! and per permission category whether the client's role allows a harmless read.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use url::Url;

use crate::Config;
use crate::config::{Auth, OAuth};
use crate::token::{self, FetchError};
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
    let client = match crate::http_client(config) {
        Ok(client) => client,
        Err(e) => return fail(out, "configuration", &format!("the HTTP client cannot be built: {e}")),
    };
    let authorization = match &config.auth {
        Auth::OAuth(oauth) => {
            let source = if oauth.token_url_source == "explicit" { "set directly" } else { &oauth.token_url_source };
            let summary = format!("API {}, token service {} ({source})", base(&config.api_url), oauth.token_url);
            line(out, true, "configuration", &summary);
            match oauth_steps(config, oauth, &client, out).await {
                Ok(bearer) => bearer,
                Err(step) => return Some(step),
            }
        }
        Auth::Basic { username, password } => {
            let summary =
                format!("API {}, basic authentication as {username} (no token service)", base(&config.api_url));
            line(out, true, "configuration", &summary);
            crate::app::basic_header(username, password).to_str().unwrap_or_default().to_owned()
        }
    };
    let tenant_code = config.tenant_code.as_ref().map(|c| c.expose_secret().to_owned()).unwrap_or_default();
    let get = |path: &str| {
        let mut request = client
            .get(format!("{}{path}", base(&config.api_url)))
            .header("authorization", &authorization)
            .header("accept", "application/json")
            .timeout(config.upstream_timeout);
        if !tenant_code.is_empty() {
            request = request.header("aw-tenant-code", &tenant_code);
        }
        request.send()
    };

    match reach(&config.api_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "API host", &detail),
        Err(detail) => return fail(out, "API host", &detail),
    }
    let started = Instant::now();
    let info = get("/api/system/info").await;
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
                401 if matches!(config.auth, Auth::Basic { .. }) => {
                    ": the API rejects the user name, password or tenant code"
                }
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
        let response = get(path).await;
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

/// The token service steps: reachable, and the credentials accepted. The bearer value, or the
/// failing step.
async fn oauth_steps(
    config: &Config,
    oauth: &OAuth,
    client: &reqwest::Client,
    out: &mut String,
) -> Result<String, &'static str> {
    match reach(&oauth.token_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "token service", &detail),
        Err(detail) if oauth.fallback_token_url.is_some() => {
            line(out, true, "token service", &format!("{detail}; the other domain will be tried"))
        }
        Err(detail) => return Err(fail(out, "token service", &detail).expect("a step")),
    }
    let credentials = oauth.credentials();
    let started = Instant::now();
    let grant = match token::request(client, &credentials, config.upstream_timeout).await {
        Ok(grant) => grant,
        Err(FetchError::Unreachable { detail, .. }) => {
            return Err(fail(out, "token service", &format!("connection failed: {detail}")).expect("a step"));
        }
        Err(e) => return Err(fail(out, "credentials", &format!("{e}")).expect("a step")),
    };
    let lifetime = humantime::format_duration(grant.lifetime);
    let detail = format!("accepted; the token lives {lifetime} (grant took {})", ms(started.elapsed()));
    line(out, true, "credentials", &detail);
    Ok(format!("Bearer {}", grant.access_token.expose_secret()))
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
