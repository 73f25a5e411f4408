//! The client-credentials grant: one HTTP exchange with the token service, and the strict reading
//! of its answer. Every odd answer becomes a typed error whose text never holds the response body,
//! the client secret or a token.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use futures_util::StreamExt;
use http::StatusCode;
use http::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::schedule;

/// A successful grant: the access token and how long to trust it.
pub struct Grant {
    pub access_token: SecretString,
    pub lifetime: Duration,
}

/// Why a token could not be had. Shown in logs, so it carries codes and statuses, never bodies.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("token service unreachable: {detail}")]
    Unreachable {
        /// Name resolution or the connection failed (as opposed to a broken exchange).
        connect: bool,
        detail: String,
    },
    #[error("token service timed out")]
    Timeout,
    #[error("token service refused the client: {code} (HTTP {status})")]
    Refused { status: u16, code: String },
    #[error("token service answered HTTP {status}")]
    Status { status: u16 },
    #[error("token service answered HTTP {status} with {content_type} instead of JSON")]
    NotJson { status: u16, content_type: String },
    #[error("token response unusable: {0}")]
    BadResponse(&'static str),
    /// A failed answer that repeats the client secret: none of its text is shown.
    #[error("token service answered HTTP {status}, repeating the client secret (not shown)")]
    Echoed { status: u16 },
}

/// The largest token response read; a real one is well under 4 KiB.
const MAX_RESPONSE: usize = 64 * 1024;

/// Where and as whom to ask for tokens.
#[derive(Clone)]
pub struct Credentials {
    pub url: Url,
    /// Tried when `url` cannot be reached (name resolution or connection failed).
    pub fallback_url: Option<Url>,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl Credentials {
    /// Whether both name the same client at the same token URL.
    pub fn same_as(&self, other: &Credentials) -> bool {
        self.url == other.url
            && self.fallback_url == other.fallback_url
            && self.client_id == other.client_id
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

/// The refresher's token source: the HTTP client and the current credentials, which a reload
/// may replace.
pub struct TokenClient {
    pub http: reqwest::Client,
    pub credentials: Arc<ArcSwap<Credentials>>,
    pub timeout: Duration,
    /// Shared by the tenants of one process, so that a hundred of them starting together ask
    /// the token services a few at a time.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The egress proxy requests to the token URL go through (`scheme://host:port`), named
    /// when the token service cannot be reached: it may be the proxy that cannot.
    pub via: Option<String>,
}

impl TokenClient {
    pub async fn request(&self) -> Result<Grant, FetchError> {
        let credentials = self.credentials.load_full();
        // The semaphore is never closed.
        let _permit = self.permits.acquire().await.ok();
        request(&self.http, &credentials, self.timeout).await.map_err(|e| match (e, &self.via) {
            (FetchError::Unreachable { connect, detail }, Some(via)) => {
                FetchError::Unreachable { connect, detail: format!("{detail} (through the egress proxy {via})") }
            }
            (e, _) => e,
        })
    }
}

/// One client-credentials grant; from the fallback URL when the first cannot be reached.
pub async fn request(
    http: &reqwest::Client,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<Grant, FetchError> {
    match grant(http, credentials, &credentials.url, timeout).await {
        Err(FetchError::Unreachable { connect: true, detail }) if credentials.fallback_url.is_some() => {
            let fallback = credentials.fallback_url.as_ref().expect("checked");
            tracing::warn!(token_url = %credentials.url, error = %detail, fallback = %fallback, "token service unreachable; trying the other domain");
            let result = grant(http, credentials, fallback, timeout).await;
            if result.is_ok() {
                tracing::info!(token_url = %fallback, "token obtained from the other domain");
            }
            result
        }
        other => other,
    }
}

async fn grant(
    http: &reqwest::Client,
    credentials: &Credentials,
    url: &Url,
    timeout: Duration,
) -> Result<Grant, FetchError> {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", credentials.client_id.as_str()),
        ("client_secret", credentials.client_secret.expose_secret()),
    ];
    let response = http
        .post(url.clone())
        .header(ACCEPT, "application/json")
        .form(&form)
        .timeout(timeout)
        .send()
        .await
        .map_err(classify)?;
    let status = response.status();
    let content_type =
        response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("no content type").to_owned();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(classify)?;
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(FetchError::BadResponse("response larger than 64 KiB"));
        }
        body.extend_from_slice(&chunk);
    }
    let result = parse_response(status, &content_type, &body);
    // What is shown of a failed answer (its error code, its content type) could be the secret.
    let secret = credentials.client_secret.expose_secret();
    let shown_echoes = match &result {
        Err(FetchError::Refused { .. }) => error_code(&body).is_some_and(|code| echoes(secret, code.as_bytes())),
        Err(FetchError::NotJson { .. }) => echoes(secret, content_type.as_bytes()),
        _ => false,
    };
    if shown_echoes {
        return Err(FetchError::Echoed { status: status.as_u16() });
    }
    result
}

/// The `error` member of a token service's JSON answer, whole (before it is cut for showing).
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("error")?.as_str().map(str::to_owned)
}

/// Whether `text` holds `secret`, as it is or form-encoded as it was sent.
fn echoes(secret: &str, text: &[u8]) -> bool {
    let contains = |needle: &[u8]| !needle.is_empty() && text.windows(needle.len()).any(|w| w == needle);
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    contains(secret.as_bytes()) || contains(encoded.as_bytes())
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else {
        // reqwest's text names the URL (no secret in it) and the cause chain, never a body.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        FetchError::Unreachable { connect: e.is_connect(), detail: text }
    }
}

#[derive(serde::Deserialize)]
struct Wire {
    access_token: Option<serde_json::Value>,
    token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
}

/// Reads a token response strictly. Pure, so each odd answer a token service gives is tested.
pub fn parse_response(status: StatusCode, content_type: &str, body: &[u8]) -> Result<Grant, FetchError> {
    let Ok(wire) = serde_json::from_slice::<Wire>(body) else {
        if !status.is_success() {
            return Err(FetchError::Status { status: status.as_u16() });
        }
        return Err(FetchError::NotJson { status: status.as_u16(), content_type: printable(content_type) });
    };
    if let Some(error) = wire.error.filter(|e| !e.is_null()) {
        let code = error.as_str().map(printable).unwrap_or_else(|| "(not a string)".to_owned());
        return Err(FetchError::Refused { status: status.as_u16(), code });
    }
    if !status.is_success() {
        return Err(FetchError::Status { status: status.as_u16() });
    }
    let token = match wire.access_token {
        Some(serde_json::Value::String(t)) if !t.is_empty() => t,
        Some(serde_json::Value::String(_)) => {
            return Err(FetchError::BadResponse("access_token is empty"));
        }
        Some(_) => return Err(FetchError::BadResponse("access_token is not a string")),
        None => return Err(FetchError::BadResponse("no access_token")),
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::BadResponse("access_token has characters a header cannot carry"));
    }
    match wire.token_type {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(FetchError::BadResponse("token_type is not Bearer")),
    }
    Ok(Grant { access_token: SecretString::from(token), lifetime: schedule::lifetime(expires_in(wire.expires_in)) })
}

/// `expires_in` as a whole number of seconds, from a number or a numeric string; anything else
/// (negative, fractional garbage, text) counts as absent.
fn expires_in(value: Option<serde_json::Value>) -> Option<u64> {
    let secs = match value? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| s.parse::<f64>().ok().filter(|f| *f >= 0.0).map(|f| f as u64))?
        }
        _ => return None,
    };
    Some(secs)
}

/// Keeps a short, printable excerpt of a value the token service chose, so a hostile or broken
/// service cannot flood or forge log lines.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Grant, FetchError> {
        parse_response(StatusCode::OK, "application/json", body.as_bytes())
    }

    #[test]
    fn a_normal_response_gives_token_and_lifetime() {
        let g = ok(r#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3600}"#).unwrap();
        assert_eq!(g.access_token.expose_secret(), "abc.def");
        assert_eq!(g.lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn expires_in_as_string_float_missing_zero_negative_or_huge() {
        let life = |v: &str| ok(&format!(r#"{{"access_token":"t"{v}}}"#)).unwrap().lifetime;
        assert_eq!(life(r#","expires_in":"3600""#), Duration::from_secs(3600));
        assert_eq!(life(r#","expires_in":3599.9"#), Duration::from_secs(3599));
        assert_eq!(life(""), schedule::DEFAULT_LIFETIME);
        assert_eq!(life(r#","expires_in":0"#), schedule::DEFAULT_LIFETIME);
        assert_eq!(life(r#","expires_in":-5"#), schedule::DEFAULT_LIFETIME);
        assert_eq!(life(r#","expires_in":"soon""#), schedule::DEFAULT_LIFETIME);
        assert_eq!(life(r#","expires_in":1e300"#), schedule::MAX_LIFETIME);
        assert_eq!(life(r#","expires_in":18446744073709551615"#), schedule::MAX_LIFETIME);
    }

    #[test]
    fn error_fields_are_reported_by_code_without_the_body() {
        let secretish = r#"{"error":"invalid_client","error_description":"client s3cr3t unknown"}"#;
        for status in [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::OK] {
            let e = parse_response(status, "application/json", secretish.as_bytes()).err().unwrap();
            let text = e.to_string();
            assert!(text.contains("invalid_client"), "{text}");
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    #[test]
    fn html_and_non_json_are_errors_naming_the_content_type() {
        let e = parse_response(StatusCode::OK, "text/html", b"<html>maintenance</html>").err().unwrap();
        assert!(matches!(e, FetchError::NotJson { status: 200, .. }));
        assert!(e.to_string().contains("text/html"));
        let e = parse_response(StatusCode::BAD_GATEWAY, "text/html", b"<html>").err().unwrap();
        assert!(matches!(e, FetchError::Status { status: 502 }));
        assert!(!e.to_string().contains("<html>"));
    }

    #[test]
    fn unusable_tokens_are_refused() {
        assert!(ok(r#"{"token_type":"Bearer"}"#).is_err());
        assert!(ok(r#"{"access_token":""}"#).is_err());
        assert!(ok(r#"{"access_token":42}"#).is_err());
        assert!(ok(r#"{"access_token":"a\nb"}"#).is_err());
        assert!(ok(r#"{"access_token":"t","token_type":"mac"}"#).is_err());
        assert!(ok(r#"{"access_token":"t","token_type":"bearer"}"#).is_ok());
        assert!(
            parse_response(StatusCode::INTERNAL_SERVER_ERROR, "application/json", br#"{"access_token":"t"}"#).is_err()
        );
    }
}
