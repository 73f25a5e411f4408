//! `uem-proxy check`: says in plain words whether this setup works, step by step, and which step
//! fails: the configuration, the egress proxy, the token service, the credentials, the API host, a
//! first API call, and per permission category whether the client's role allows a harmless read.
//! Every call takes the route the proxy takes: the same HTTP client, egress proxy and CA bundle.

mod route;

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

/// Checks every tenant in turn, ending with a verdict per tenant. Returns the first failing
/// step's name, if any.
pub async fn run_all(config: &Config, out: &mut String) -> Option<&'static str> {
    if !config.prefixed {
        return run(config, out).await;
    }
    let mut verdicts = Vec::new();
    let mut first_failure = None;
    for tenant in &config.tenants {
        let _ = writeln!(out, "== tenant {} ==", tenant.name);
        let failed = run(&config.for_tenant(tenant), out).await;
        verdicts.push((tenant.name.as_str(), failed));
        first_failure = first_failure.or(failed);
    }
    let _ = writeln!(out, "verdict per tenant:");
    for (name, failed) in verdicts {
        match failed {
            None => line(out, true, name, "all checks passed"),
            Some(step) => line(out, false, name, &format!("failed at: {step}")),
        }
    }
    first_failure
}

/// Runs every step for the primary tenant, writing a line each to `out`. Returns the failing
/// step's name, if any.
pub async fn run(config: &Config, out: &mut String) -> Option<&'static str> {
    let _ = writeln!(out, "uem-proxy check");
    let client = match crate::http_client(config) {
        Ok(client) => client,
        Err(e) => return fail(out, "configuration", &format!("the HTTP client cannot be built: {e}")),
    };
    // The process environment, as the HTTP client reads it for proxies.
    let routes = route::matcher(&config.egress, &|name| std::env::var(name).ok());
    let authorization = match &config.auth {
        Auth::OAuth(oauth) => {
            let source = if oauth.token_url_source == "explicit" { "set directly" } else { &oauth.token_url_source };
            let summary = format!("API {}, token service {} ({source})", base(&config.api_url), oauth.token_url);
            line(out, true, "configuration", &summary);
            warnings(config, out);
            match oauth_steps(config, oauth, &client, &routes, out).await {
                Ok(bearer) => bearer,
                Err(step) => return Some(step),
            }
        }
        Auth::Basic { username, password } => {
            let summary =
                format!("API {}, basic authentication as {username} (no token service)", base(&config.api_url));
            line(out, true, "configuration", &summary);
            warnings(config, out);
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

    match route::open(&routes, &config.api_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "API host", &detail),
        Err(route::Failure::Proxy(detail)) => return fail(out, "egress proxy", &detail),
        Err(route::Failure::Target(detail)) => return fail(out, "API host", &detail),
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
        Err(e) => return fail(out, "system info", &format!("/api/system/info failed: {}", chain(&e))),
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
    routes: &route::Matcher,
    out: &mut String,
) -> Result<String, &'static str> {
    let fail = |out: &mut String, step, detail: &str| Err(fail(out, step, detail).expect("a step"));
    match route::open(routes, &oauth.token_url, config.connect_timeout).await {
        Ok(detail) => line(out, true, "token service", &detail),
        Err(route::Failure::Proxy(detail)) => return fail(out, "egress proxy", &detail),
        Err(route::Failure::Target(detail)) => {
            let Some(fallback) = &oauth.fallback_token_url else { return fail(out, "token service", &detail) };
            warn(out, "token service", &format!("{detail}; the other domain will be tried"));
            match route::open(routes, fallback, config.connect_timeout).await {
                Ok(detail) => line(out, true, "token service", &format!("the other domain: {detail}")),
                Err(route::Failure::Proxy(detail)) => return fail(out, "egress proxy", &detail),
                Err(route::Failure::Target(detail)) => return fail(out, "token service", &detail),
            }
        }
    }
    let credentials = oauth.credentials();
    let started = Instant::now();
    let grant = match token::request(client, &credentials, config.upstream_timeout).await {
        Ok(grant) => grant,
        Err(FetchError::Unreachable { detail, .. }) if detail.contains("tunnel error") => {
            return fail(out, "egress proxy", &format!("the egress proxy refused the connection: {detail}"));
        }
        Err(FetchError::Unreachable { detail, .. }) => {
            return fail(out, "token service", &format!("connection failed: {detail}"));
        }
        Err(e) => return fail(out, "credentials", &format!("{e}")),
    };
    let lifetime = humantime::format_duration(grant.lifetime);
    let detail = format!("accepted; the token lives {lifetime} (grant took {})", ms(started.elapsed()));
    line(out, true, "credentials", &detail);
    Ok(format!("Bearer {}", grant.access_token.expose_secret()))
}

/// The configuration's warnings, one line each.
fn warnings(config: &Config, out: &mut String) {
    for warning in &config.warnings {
        warn(out, "configuration", warning);
    }
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

/// Not a failure, not fine either: said, and the checks go on.
fn warn(out: &mut String, step: &str, detail: &str) {
    let _ = writeln!(out, "  {:<5} {step:<14} {detail}", "warn");
}

fn fail(out: &mut String, step: &'static str, detail: &str) -> Option<&'static str> {
    line(out, false, step, detail);
    let _ = writeln!(out, "FAILED at step \"{step}\": {detail}");
    Some(step)
}
