//! The errors the proxy itself answers with, and the one place that maps them to HTTP.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER};
use std::io::ErrorKind::TimedOut;

use crate::upstream::ConnectTimeout;

/// An answer made by the proxy rather than the upstream. Each has a stable machine-readable
/// `code` that scripts may match on; the message is for people.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request target cannot be forwarded: {0}")]
    BadTarget(&'static str),
    #[error("no such proxy endpoint")]
    NotFound,
    #[error("no valid API token is available yet; retry shortly")]
    NoToken { retry_after_s: u64 },
    #[error("the upstream API could not be reached")]
    Unreachable,
    #[error("the upstream API did not answer in time")]
    Timeout,
    #[error("the upstream API connection failed")]
    Broken,
    #[error("callers from this address are not allowed; see UEM_PROXY_ALLOW_CIDRS")]
    CallerNotAllowed,
    #[error("the Host '{0}' is not one this proxy answers to; see UEM_PROXY_ALLOWED_HOSTS")]
    HostNotAllowed(String),
    #[error("requests from the web origin '{0}' are not allowed; see UEM_PROXY_ALLOWED_ORIGINS")]
    OriginNotAllowed(String),
    #[error("cross-site requests from web pages are not allowed")]
    CrossSite,
    #[error("the proxy's policy does not allow this request: {reason}")]
    PolicyDenied { permission: Option<&'static str>, reason: String },
    #[error("the method {0} is not allowed")]
    MethodNotAllowed(http::Method),
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("too many requests are waiting for the API; retry shortly")]
    UpstreamBusy,
    #[error("the API asked for a pause; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
}

impl ProxyError {
    /// The single mapping from cause to status and code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadTarget(_) => (StatusCode::BAD_REQUEST, "bad_request_target"),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::NoToken { .. } => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
            ProxyError::Unreachable => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Broken => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ProxyError::CallerNotAllowed => (StatusCode::FORBIDDEN, "caller_not_allowed"),
            ProxyError::HostNotAllowed(_) => (StatusCode::FORBIDDEN, "host_not_allowed"),
            ProxyError::OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ProxyError::CrossSite => (StatusCode::FORBIDDEN, "cross_site_request"),
            ProxyError::PolicyDenied { .. } => (StatusCode::FORBIDDEN, "policy_denied"),
            ProxyError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ProxyError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ProxyError::UpstreamBusy => (StatusCode::SERVICE_UNAVAILABLE, "upstream_busy"),
            ProxyError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited"),
        }
    }

    /// Classifies a failure to get response headers from the upstream. Timeouts first: a connect
    /// timeout is a timeout (504), as in nginx; other connect failures are unreachable (502).
    pub fn from_upstream(e: &hyper_util::client::legacy::Error) -> ProxyError {
        let timed_out = std::iter::successors(std::error::Error::source(e), |s| s.source()).any(|s| {
            s.is::<ConnectTimeout>() || s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == TimedOut)
        });
        if timed_out {
            ProxyError::Timeout
        } else if e.is_connect() {
            ProxyError::Unreachable
        } else {
            ProxyError::Broken
        }
    }

    /// The JSON answer `{"error", "message", "request_id"}`; a policy denial also names the
    /// `permission` the request needs (`null` when it needs none the catalogue knows).
    pub fn into_response(self, request_id: &str) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = serde_json::json!({ "error": code, "message": self.to_string(), "request_id": request_id });
        if let ProxyError::PolicyDenied { permission, .. } = &self {
            body["permission"] = serde_json::json!(permission);
        }
        let mut response = (status, Json(body)).into_response();
        let retry_after = match self {
            ProxyError::NoToken { retry_after_s } | ProxyError::RateLimited { retry_after_s } => Some(retry_after_s),
            ProxyError::UpstreamBusy => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
