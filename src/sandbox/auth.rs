//! The sandbox's token service (`POST /connect/token`, the client-credentials grant with RFC 6749
//! errors) and the checks every API call passes: a live bearer token and the request-rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::reply::{self, code};

/// Issued tokens and the client they were issued to.
pub struct Auth {
    pub client_id: String,
    pub client_secret: SecretString,
    pub lifetime: Duration,
    issued: Mutex<HashMap<String, Instant>>,
    /// Tokens issued since start, for tests and the curious.
    pub grants: AtomicU64,
}

impl Auth {
    pub fn new(client_id: String, client_secret: SecretString, lifetime: Duration) -> Auth {
        Auth { client_id, client_secret, lifetime, issued: Mutex::new(HashMap::new()), grants: AtomicU64::new(0) }
    }

    /// The grant: checks the client's credentials (form fields or HTTP Basic) and issues a token.
    pub fn token_endpoint(&self, headers: &HeaderMap, body: &Bytes) -> Response {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let basic =
            headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic ")).map(|b| {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).unwrap_or_default();
                let text = String::from_utf8_lossy(&decoded).into_owned();
                let (id, secret) = text.split_once(':').unwrap_or((&text, ""));
                (id.to_owned(), secret.to_owned())
            });
        let from_form =
            form.get("client_id").map(|id| (id.clone(), form.get("client_secret").cloned().unwrap_or_default()));
        let credentials = match (basic.is_some(), from_form.is_some()) {
            (true, true) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "use one client authentication method",
                    false,
                );
            }
            _ => basic.clone().or(from_form),
        };
        match form.get("grant_type").map(String::as_str) {
            None => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing", false);
            }
            Some("client_credentials") => {}
            Some(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only client_credentials is supported",
                    false,
                );
            }
        }
        let accepted = credentials.is_some_and(|(id, secret)| {
            constant_time_eq(id.as_bytes(), self.client_id.as_bytes())
                & constant_time_eq(secret.as_bytes(), self.client_secret.expose_secret().as_bytes())
        });
        if !accepted {
            tracing::info!(target: "uem_proxy::sandbox", "token request refused: invalid_client");
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
                basic.is_some(),
            );
        }
        let token: String = (0..48).map(|_| fastrand::alphanumeric()).collect();
        let now = Instant::now();
        let mut issued = self.issued.lock().expect("not poisoned");
        issued.retain(|_, expiry| *expiry > now);
        issued.insert(token.clone(), now + self.lifetime);
        drop(issued);
        self.grants.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "uem_proxy::sandbox", lifetime_s = self.lifetime.as_secs(), "token issued");
        let body = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime.as_secs().max(1),
        });
        (StatusCode::OK, [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body.to_string())
            .into_response()
    }

    /// The 401 for a request without a live token this sandbox issued; `None` lets it pass.
    pub fn refuse_bearer(&self, headers: &HeaderMap) -> Option<Response> {
        let token = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            return Some(unauthorized("no bearer token was sent"));
        };
        let issued = self.issued.lock().expect("not poisoned");
        match issued.get(token.trim()) {
            Some(expiry) if *expiry > Instant::now() => None,
            Some(_) => Some(unauthorized("the access token has expired")),
            None => Some(unauthorized("the access token is not valid")),
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = reply::error(StatusCode::UNAUTHORIZED, code::INVALID_CREDENTIALS, message);
    response.headers_mut().insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}

fn oauth_error(status: StatusCode, error: &str, description: &str, basic: bool) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut response =
        (status, [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body.to_string()).into_response();
    if basic {
        response.headers_mut().insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"token\""));
    }
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token bucket over all API calls: `rate` a second, bursts up to `rate`.
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: u32) -> RateLimit {
        RateLimit { rate: rate as f64, state: Mutex::new((rate as f64, Instant::now())) }
    }

    /// The 429 (with `Retry-After` in whole seconds) for a call over the limit; `None` admits it.
    pub fn refuse(&self) -> Option<Response> {
        let mut state = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            return None;
        }
        *state = (tokens, now);
        let wait = ((1.0 - tokens) / self.rate).ceil().max(1.0) as u64;
        let mut response = reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            code::RATE_LIMITED,
            format!("the API rate limit of {} requests a second is exceeded", self.rate),
        );
        response.headers_mut().insert(RETRY_AFTER, wait.into());
        Some(response)
    }
}
