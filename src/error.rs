//! The errors the proxy itself answers with, and the one place that maps them to HTTP.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONNECTION, HeaderValue, RETRY_AFTER};

/// The message for a path that names no tenant; `names` lists the tenants there are.
fn unknown_tenant(names: &str) -> String {
    format!("the path names no tenant of this proxy: start it with /t/NAME/, where NAME is one of {names}")
}

/// An answer made by the proxy rather than the upstream. Each has a stable machine-readable
/// `code` that scripts may match on; the message is for people.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request target cannot be forwarded: {0}")]
    BadTarget(&'static str),
    #[error("no such proxy endpoint")]
    NotFound,
    /// The path names no tenant (`/t/NAME/…` with an unknown NAME, or no prefix and no default).
    #[error("{}", unknown_tenant(.0))]
    UnknownTenant(String),
    /// On a tenant's own listener: that tenant was removed by a reload (the listener stays until
    /// a restart). Names no other tenant.
    #[error("tenant {0}, which this listener serves, is no longer configured; the listener stays until a restart")]
    TenantGone(String),
    #[error("no valid API token is available yet ({}); retry shortly", no_token_reason(reason.as_deref()))]
    NoToken {
        retry_after_s: u64,
        /// Why: the last token error (a code, a status or a connection failure; never a body,
        /// the secret or a token), or `None` while the first answer is awaited.
        reason: Option<String>,
    },
    #[error("the upstream API could not be reached")]
    Unreachable,
    #[error("the upstream API did not answer in time")]
    Timeout,
    #[error("the upstream API connection failed")]
    Broken,
    /// The API closed the connection after the request was written and before any answer: on a
    /// pooled connection, the API's idle timeout meeting its reuse.
    #[error("the upstream API closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the upstream API's answer cannot be forwarded: {0}")]
    BadUpstreamAnswer(&'static str),
    #[error("the request body paused longer than {0:?}; see UEM_PROXY_BODY_IDLE_TIMEOUT")]
    RequestTimeout(std::time::Duration),
    #[error("callers from this address are not allowed; see UEM_PROXY_ALLOW_CIDRS")]
    CallerNotAllowed,
    #[error("the Host '{0}' is not one this proxy answers to; see UEM_PROXY_ALLOWED_HOSTS")]
    HostNotAllowed(String),
    #[error("an HTTP/1.1 request must name the host it is for in a Host header")]
    MissingHost,
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
    /// Refused by the framing guard before the request was parsed; the connection closes.
    #[error("the request cannot be read safely: {reason}")]
    Framing { status: StatusCode, code: &'static str, reason: String },
    #[error("the Host '{0}' is malformed (user information, or characters a host name cannot hold)")]
    BadHost(String),
}

fn no_token_reason(reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("the last attempt failed: {reason}"),
        None => "the token service has not answered yet".to_owned(),
    }
}

impl ProxyError {
    /// The single mapping from cause to status and code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadTarget(_) => (StatusCode::BAD_REQUEST, "bad_request_target"),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::UnknownTenant(_) | ProxyError::TenantGone(_) => (StatusCode::NOT_FOUND, "unknown_tenant"),
            ProxyError::NoToken { .. } => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
            ProxyError::Unreachable => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Broken | ProxyError::ClosedBeforeAnswer | ProxyError::BadUpstreamAnswer(_) => {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            }
            ProxyError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ProxyError::CallerNotAllowed => (StatusCode::FORBIDDEN, "caller_not_allowed"),
            ProxyError::HostNotAllowed(_) => (StatusCode::FORBIDDEN, "host_not_allowed"),
            ProxyError::MissingHost => (StatusCode::BAD_REQUEST, "missing_host"),
            ProxyError::OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ProxyError::CrossSite => (StatusCode::FORBIDDEN, "cross_site_request"),
            ProxyError::PolicyDenied { .. } => (StatusCode::FORBIDDEN, "policy_denied"),
            ProxyError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ProxyError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ProxyError::UpstreamBusy => (StatusCode::SERVICE_UNAVAILABLE, "upstream_busy"),
            ProxyError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited"),
            ProxyError::Framing { status, code, .. } => (*status, code),
            ProxyError::BadHost(_) => (StatusCode::BAD_REQUEST, "bad_host"),
        }
    }

    /// The JSON body `{"error", "message", "request_id"}`; a policy denial also names the
    /// `permission` the request needs (`null` when it needs none the catalogue knows).
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let code = self.status_and_code().1;
        let mut body = serde_json::json!({ "error": code, "message": self.to_string(), "request_id": request_id });
        if let ProxyError::PolicyDenied { permission, .. } = self {
            body["permission"] = serde_json::json!(permission);
        }
        body
    }

    /// The JSON answer, with `Retry-After` where the error has one, and `Connection: close` where
    /// the connection cannot carry another request.
    pub fn into_response(self, request_id: &str) -> Response {
        let status = self.status_and_code().0;
        let mut response = (status, Json(self.body(request_id))).into_response();
        let close = matches!(self, ProxyError::RequestTimeout(_));
        let retry_after = match self {
            ProxyError::NoToken { retry_after_s, .. } | ProxyError::RateLimited { retry_after_s } => {
                Some(retry_after_s)
            }
            ProxyError::UpstreamBusy => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if close {
            // The rest of the request body is never read: the connection cannot carry another.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
