//! The proxy's own endpoints under `/_proxy/`, answered locally and never forwarded.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};

use crate::access_log::RequestId;
use crate::error::ProxyError;
use crate::proxy::Forwarder;

pub fn routes() -> Router<Arc<Forwarder>> {
    Router::new()
        .route("/_proxy/healthz", get(healthz))
        .route("/_proxy/readyz", get(readyz))
        .route("/_proxy", get(not_found))
        .route("/_proxy/", get(not_found))
        .route("/_proxy/{*rest}", axum::routing::any(not_found))
}

/// Alive: the process answers. Says nothing about the token, so an orchestrator does not restart
/// a healthy proxy because the token service is down.
async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Ready: a token is held that may be injected now.
async fn readyz(State(fwd): State<Arc<Forwarder>>, Extension(id): Extension<RequestId>) -> Response {
    match fwd.tokens.usable() {
        Some(token) => {
            let valid_for = token
                .usable_until()
                .saturating_duration_since(tokio::time::Instant::now());
            Json(serde_json::json!({ "status": "ready", "token_valid_for_s": valid_for.as_secs() })).into_response()
        }
        None => ProxyError::NoToken {
            retry_after_s: fwd.token_wait.as_secs().max(1),
        }
        .into_response(id.as_str()),
    }
}

async fn not_found(Extension(id): Extension<RequestId>) -> Response {
    ProxyError::NotFound.into_response(id.as_str())
}
