//! The proxy's own endpoints under `/_proxy/`, answered locally and never forwarded.

use std::sync::Arc;

use axum::extract::{Extension, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

use crate::app::App;
use crate::error::ProxyError;
use crate::record::RequestId;
use crate::record::inspect::ui;

/// On a tenant's own listener, the tenant every path goes to: `/_proxy/*` there is about it alone,
/// so that callers who may reach only that listener learn nothing of the other tenants.
#[derive(Clone)]
pub struct Pinned {
    pub name: Arc<str>,
    /// The listener's own address, which its status gives as `listen`.
    pub local: std::net::SocketAddr,
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/_proxy/healthz", get(healthz))
        .route("/_proxy/readyz", get(readyz))
        .route("/_proxy/status", get(status))
        .route("/_proxy/metrics", get(metrics))
        .route("/_proxy/ui", get(|| async { ui::file("text/html; charset=utf-8", ui::PAGE) }))
        .route("/_proxy/ui/inspector.js", get(|| async { ui::file("text/javascript; charset=utf-8", ui::SCRIPT) }))
        .route("/_proxy/ui/inspector.css", get(|| async { ui::file("text/css; charset=utf-8", ui::STYLE) }))
        .route("/_proxy/requests", get(requests))
        .route("/_proxy/events", get(events))
        .route("/_proxy", get(not_found))
        .route("/_proxy/", get(not_found))
        .route("/_proxy/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
}

/// Alive: the process answers. Says nothing about the token, so an orchestrator does not restart
/// a healthy proxy because the token service is down.
async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Ready: every tenant (or the one `?tenant=NAME` names) holds a token that may be injected now.
async fn readyz(
    State(app): State<Arc<App>>,
    Extension(id): Extension<RequestId>,
    Query(query): Query<ReadyQuery>,
    pinned: Option<Extension<Pinned>>,
) -> Response {
    let tenants = app.tenants.load();
    let pinned = pinned.map(|Extension(pinned)| pinned.name);
    let asked: Vec<&Arc<crate::tenants::Tenant>> = match (&pinned, &query.tenant) {
        (Some(own), asked) if asked.as_deref().is_none_or(|a| a.eq_ignore_ascii_case(own)) => match tenants.get(own) {
            Some(tenant) => vec![tenant],
            None => return ProxyError::TenantGone(own.to_string()).into_response(id.as_str()),
        },
        (Some(own), _) => return ProxyError::UnknownTenant(own.to_string()).into_response(id.as_str()),
        (None, Some(name)) => match tenants.get(name) {
            Some(tenant) => vec![tenant],
            None => return ProxyError::UnknownTenant(tenants.names()).into_response(id.as_str()),
        },
        (None, None) => tenants.list.iter().collect(),
    };
    let now = tokio::time::Instant::now();
    let mut valid_for = u64::MAX;
    let mut each = serde_json::Map::new();
    let mut first_unready = None;
    for tenant in asked {
        let usable =
            tenant.forwarder.tokens.usable().map(|t| t.usable_until().saturating_duration_since(now).as_secs());
        each.insert(
            tenant.name.to_string(),
            serde_json::json!({ "ready": usable.is_some(), "token_valid_for_s": usable }),
        );
        match usable {
            Some(s) => valid_for = valid_for.min(s),
            None => first_unready = first_unready.or(Some(tenant)),
        }
    }
    match first_unready {
        None if tenants.prefixed => {
            Json(serde_json::json!({ "status": "ready", "token_valid_for_s": valid_for, "tenants": each }))
                .into_response()
        }
        None => Json(serde_json::json!({ "status": "ready", "token_valid_for_s": valid_for })).into_response(),
        Some(tenant) => {
            let retry_after_s = app.config.load().token_wait.as_secs().max(1);
            let mut response = tenant.forwarder.no_token(retry_after_s).into_response(id.as_str());
            if tenants.prefixed
                && let Ok(value) = http::HeaderValue::try_from(&*tenant.name)
            {
                response.headers_mut().insert("x-uem-proxy-tenant", value);
            }
            response
        }
    }
}

#[derive(serde::Deserialize)]
struct ReadyQuery {
    tenant: Option<String>,
}

async fn status(State(app): State<Arc<App>>, pinned: Option<Extension<Pinned>>) -> Response {
    let Some(Extension(pinned)) = pinned else {
        return Json(app.status(None)).into_response();
    };
    let mut status = app.status(Some(&pinned.name));
    status["listen"] = serde_json::json!(pinned.local.to_string());
    Json(status).into_response()
}

async fn metrics(State(app): State<Arc<App>>, pinned: Option<Extension<Pinned>>) -> Response {
    let mut text = app.metrics.encode();
    if let Some(Extension(Pinned { name, .. })) = pinned {
        // Series of the other tenants go; those of the process as a whole stay.
        let own = format!("tenant=\"{name}\"");
        text =
            text.lines().filter(|l| !l.contains("tenant=\"") || l.contains(&own)).map(|l| format!("{l}\n")).collect();
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The inspector's exchanges, newest first; `?limit=N` for the newest N. On a tenant's own
/// listener, that tenant's alone (as are the events).
async fn requests(
    State(app): State<Arc<App>>,
    Extension(id): Extension<RequestId>,
    RawQuery(query): RawQuery,
    pinned: Option<Extension<Pinned>>,
) -> Response {
    let mut limit = usize::MAX;
    for (key, value) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key == "limit" {
            match value.parse() {
                Ok(n) => limit = n,
                Err(_) => return ProxyError::BadTarget("limit must be a whole number").into_response(id.as_str()),
            }
        }
    }
    let only = pinned.as_ref().map(|p| &*p.0.name);
    let mut response = app.inspector.listing(limit, only).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

/// The inspector's exchanges as they finish, as Server-Sent Events.
async fn events(State(app): State<Arc<App>>, pinned: Option<Extension<Pinned>>) -> Response {
    let mut response = app.inspector.events(pinned.map(|Extension(pinned)| pinned.name)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

async fn not_found(Extension(id): Extension<RequestId>) -> Response {
    ProxyError::NotFound.into_response(id.as_str())
}

/// A method the path does not take (`POST /_proxy/status`): JSON, as every answer the proxy makes
/// itself, where axum's own is empty. axum adds the `Allow` header.
async fn method_not_allowed(method: http::Method, Extension(id): Extension<RequestId>) -> Response {
    ProxyError::MethodNotAllowed(method).into_response(id.as_str())
}
