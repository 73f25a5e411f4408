//! The forwarding handler: a caller's request in, the upstream's response out, both streamed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, request::Parts};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tokio::time::Instant;
use url::Url;

use crate::access_log::{RequestId, UpstreamLatency};
use crate::body::{IdleTimeout, TooLarge, Upload};
use crate::error::ProxyError;
use crate::policy::{Decision, Policy};
use crate::rewrite::{self, LocationRewrite};
use crate::token::{Token, Tokens};
use crate::uem::mapping;

/// Added to an upstream 403: the catalogue permission the request needs, so an administrator
/// knows what the OAuth client's role lacks.
pub static X_UEM_PROXY_PERMISSION: HeaderName = HeaderName::from_static("x-uem-proxy-permission");

/// Everything the handler needs, built once at start-up.
pub struct Forwarder {
    pub client: reqwest::Client,
    pub tokens: Tokens,
    /// The API base without a trailing slash; canonical request paths are appended to it.
    pub upstream_base: String,
    /// The proxy's own address, for `Location` rewrites when a caller sends no `Host`.
    pub listen: String,
    pub policy: Policy,
    pub upstream_timeout: Duration,
    pub token_wait: Duration,
    pub replay_body_limit: u64,
    pub max_body_bytes: Option<u64>,
}

/// A request body in a form that can be sent, and for small ones sent again.
enum Outgoing {
    Replayable(Bytes),
    Streamed(Body),
}

/// The axum handler for every path that is not the proxy's own.
pub async fn handle(State(fwd): State<Arc<Forwarder>>, req: Request) -> Response {
    let id = req.extensions().get::<RequestId>().cloned();
    let id = id.as_ref().map_or("", RequestId::as_str).to_owned();
    match forward(&fwd, req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(request_id = %id, %error, "answered by the proxy");
            error.into_response(&id)
        }
    }
}

async fn forward(fwd: &Forwarder, req: Request) -> Result<Response, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let (url, path) = upstream_url(&fwd.upstream_base, &parts)?;
    if let Decision::Deny { permission, reason } = fwd.policy.decide(&parts.method, &path) {
        return Err(ProxyError::PolicyDenied {
            permission: permission.map(|p| p.name),
            reason,
        });
    }
    let proxy_base = format!("http://{}", host_of(&parts.headers).unwrap_or(&fwd.listen));
    rewrite::request_headers(&mut parts.headers);
    let outgoing = prepare_body(body, fwd.replay_body_limit).await?;

    let retry_after_s = fwd.token_wait.as_secs().max(1);
    let token = fwd
        .tokens
        .wait_usable(fwd.token_wait)
        .await
        .ok_or(ProxyError::NoToken { retry_after_s })?;
    let (body, sent, replay) = match outgoing {
        Outgoing::Replayable(bytes) => (reqwest::Body::from(bytes.clone()), None, Some(bytes)),
        Outgoing::Streamed(stream) => {
            let (upload, sent) = Upload::new(stream, fwd.max_body_bytes);
            (reqwest::Body::wrap(upload), Some(sent), None)
        }
    };
    let started = Instant::now();
    let mut response = send(fwd, &parts, &url, &token, body, sent).await?;

    if response.status() == StatusCode::UNAUTHORIZED {
        match replay {
            Some(bytes) => {
                if let Some(fresh) = fwd.tokens.replace_rejected(&token, fwd.token_wait).await {
                    tracing::debug!(generation = fresh.generation(), "replaying a request rejected with 401");
                    let body = reqwest::Body::from(bytes);
                    response = send(fwd, &parts, &url, &fresh, body, None).await?;
                }
            }
            // Not replayable: the caller gets this 401, the next request a fresh token.
            None => fwd.tokens.report_rejected(&token),
        }
    }
    let upstream_latency = started.elapsed();

    let mut response = http::Response::from(response);
    let location = LocationRewrite {
        upstream_base: &fwd.upstream_base,
        proxy_base: &proxy_base,
    };
    rewrite::response_headers(response.headers_mut(), &location);
    if response.status() == StatusCode::FORBIDDEN
        && let Some(needed) = mapping::required(&parts.method, &path)
    {
        response.headers_mut().insert(
            X_UEM_PROXY_PERMISSION.clone(),
            HeaderValue::from_static(needed.permission.name),
        );
    }
    response.extensions_mut().insert(UpstreamLatency(upstream_latency));
    Ok(response.map(|b| Body::new(IdleTimeout::new(b, fwd.upstream_timeout))))
}

/// The upstream URL: the configured base with the caller's canonical path and query appended,
/// and that canonical path, which is what policy decides on. Never `Url::join`, which would let
/// `//other.host/` name another host.
fn upstream_url(base: &str, parts: &Parts) -> Result<(Url, String), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadTarget("CONNECT is not supported"));
    }
    let target = parts.uri.path_and_query().ok_or(ProxyError::BadTarget("no path"))?;
    let path = rewrite::canonical_path(target.path()).map_err(ProxyError::BadTarget)?;
    let query = target.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = Url::parse(&format!("{base}{path}{query}")).map_err(|_| ProxyError::BadTarget("not a valid URL path"))?;
    // The URL parser must not have reinterpreted the path: what is decided on is what is sent.
    if !url.path().ends_with(path.as_str()) {
        return Err(ProxyError::BadTarget("the path cannot be forwarded unchanged"));
    }
    Ok((url, path))
}

fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(HOST).and_then(|h| h.to_str().ok())
}

/// Keeps a body small enough to replay (known length up to `limit`); streams any other.
async fn prepare_body(body: Body, limit: u64) -> Result<Outgoing, ProxyError> {
    let hint = body.size_hint();
    if body.is_end_stream() || hint.exact() == Some(0) {
        return Ok(Outgoing::Replayable(Bytes::new()));
    }
    match hint.exact() {
        Some(len) if len <= limit => {
            let collected = Limited::new(body, limit as usize)
                .collect()
                .await
                .map_err(|_| ProxyError::BadTarget("the request body ended early"))?;
            Ok(Outgoing::Replayable(collected.to_bytes()))
        }
        _ => Ok(Outgoing::Streamed(body)),
    }
}

/// Sends one attempt and waits for the response headers. The upstream's time to answer counts
/// from the moment the request body has been sent in full (`sent`, for streamed bodies).
async fn send(
    fwd: &Forwarder,
    parts: &Parts,
    url: &Url,
    token: &Token,
    body: reqwest::Body,
    sent: Option<oneshot::Receiver<()>>,
) -> Result<reqwest::Response, ProxyError> {
    let mut headers = parts.headers.clone();
    headers.insert(AUTHORIZATION, token.header().clone());
    let request = fwd
        .client
        .request(parts.method.clone(), url.clone())
        .headers(headers)
        .body(body);
    let timeout = fwd.upstream_timeout;
    let deadline = async move {
        if let Some(sent) = sent {
            let _ = sent.await;
        }
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        result = request.send() => result.map_err(|e| {
            tracing::debug!(error = %e, "upstream request failed");
            match too_large(&e) {
                Some(limit) => ProxyError::BodyTooLarge(limit),
                None => ProxyError::from_upstream(&e),
            }
        }),
        () = deadline => Err(ProxyError::Timeout),
    }
}

/// The body limit, when that is why sending failed.
fn too_large(e: &reqwest::Error) -> Option<u64> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(TooLarge(limit)) = s.downcast_ref::<TooLarge>() {
            return Some(*limit);
        }
        source = s.source();
    }
    None
}
