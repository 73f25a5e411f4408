//! The inspector's page, served from the binary: one HTML file, its script and its style sheet,
//! no CDN, no build step. Its policy lets only these files run and style the page: no inline
//! script, no other origin, so a body or header shown on it can never act.

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};

pub const PAGE: &str = include_str!("ui/index.html");
pub const SCRIPT: &str = include_str!("ui/inspector.js");
pub const STYLE: &str = include_str!("ui/inspector.css");

/// Scripts and styles from the proxy's own files only; data only from its own endpoints.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                          img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the page's files, with the headers every one of them carries.
pub fn file(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
