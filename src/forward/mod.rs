//! Forwarding: the upstream pool, header/URL rewriting, bodies, pacing.
//!
//! The forwarding handler: a caller's request in, the upstream's response out, both streamed.

pub mod body;
pub mod body_rewrite;
pub mod pacer;
pub mod pool;
pub mod rewrite;
pub mod spelling;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri, request::Parts};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::token::{Token, Tokens};
use crate::uem::mapping::Required;
use body::{IdleTimeout, Paused, Primed, ReplayBudget, Side, TooLarge, Upload};
use body_rewrite::{Needles, Replacer, Rewritten, To, is_rewritable};
use pacer::{Pacer, Refusal};
use rewrite::{LocationRewrite, ProxyBase};
use upstream::{Outbound, ResponseBody, UpstreamClient};

/// Added to an upstream 403: the catalogue permission the request needs, so an administrator
/// knows what the OAuth client's role lacks.
pub static X_UEM_PROXY_PERMISSION: HeaderName = HeaderName::from_static("x-uem-proxy-permission");

/// The longest URI the `http` crate parses (`u16::MAX - 1` bytes).
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;

/// Error bodies up to this size are read to find UEM's `activityId`; larger ones stream on.
const ERROR_BODY_PEEK: u64 = 64 * 1024;

/// What forwarding needs from the configuration. Replaced whole on reload; a request keeps the
/// one it started with.
pub struct Route {
    /// The API base without a trailing slash; canonical request paths are appended to it.
    pub upstream_base: String,
    /// The base's path prefix without a trailing slash (`""` for none).
    pub upstream_path: String,
    /// The base's scheme and authority, parsed once; see [`Route::origin`].
    pub upstream_origin: Option<(Scheme, Authority)>,
    pub upstream_timeout: Duration,
    pub token_wait: Duration,
    pub replay_body_limit: u64,
    pub rewrite_bodies: bool,
    /// What body rewriting looks for: `upstream_base`, made searchable once.
    pub needles: Arc<Needles>,
    pub max_body_bytes: Option<u64>,
    /// The longest pause allowed while reading a caller's request body.
    pub body_idle_timeout: Duration,
    /// Sent as `aw-tenant-code`, in place of any a caller sends.
    pub tenant_code: Option<HeaderValue>,
}

impl Route {
    /// The scheme and authority of `upstream_base`, which each request's URI takes as they are
    /// instead of parsing them again; `None` if the base is no URI (then each request's target
    /// is parsed whole, and refused).
    pub fn origin(upstream_base: &str) -> Option<(Scheme, Authority)> {
        let base = Uri::try_from(upstream_base).ok()?;
        Some((base.scheme()?.clone(), base.authority()?.clone()))
    }
}

/// What forwarding shares between requests: the client, the replay budget, the token, the pacer.
pub struct Forwarder {
    pub upstream: UpstreamClient,
    /// Request bodies held for replay, all requests together (restart-only).
    pub replay_budget: ReplayBudget,
    pub tokens: Tokens,
    pub pacer: Arc<ArcSwap<Pacer>>,
}

/// How the caller reached the proxy, so that URLs in answers (`Location`, links in bodies) lead
/// back the same way.
#[derive(Clone, Copy)]
pub struct Reached<'a> {
    /// Over the HTTPS listener.
    pub https: bool,
    /// The listener's own `host:port`, for callers that send no `Host`.
    pub listen_host: &'a str,
    /// The tenant prefix the caller used (`/t/uat`), or `""`.
    pub prefix: &'a str,
}

/// The upstream's answer, and what was learnt while getting it.
pub struct Forwarded {
    pub response: Response,
    /// How long the upstream took to send response headers.
    pub upstream: Duration,
    /// UEM's id of a failed API call, from its error body.
    pub activity_id: Option<Box<str>>,
}

/// A request body in a form that can be sent, and for small ones sent again: those hold their
/// share of the replay budget (none when empty) for as long as the request is served.
enum Outgoing {
    Replayable(Bytes, Option<OwnedSemaphorePermit>),
    Streamed(Body),
}

impl Forwarder {
    /// The answer when no token may be had, saying why (the last token error, if any).
    pub fn no_token(&self, retry_after_s: u64) -> ProxyError {
        ProxyError::NoToken { retry_after_s, reason: self.tokens.failure() }
    }

    /// Forwards a request to its canonical `path`, which needs `required`, and returns the
    /// upstream's answer.
    pub async fn forward(
        &self,
        route: &Route,
        parts: &mut Parts,
        body: Body,
        path: &str,
        required: Option<Required>,
        reached: Reached<'_>,
    ) -> Result<Forwarded, ProxyError> {
        let uri = upstream_uri(route, parts, path)?;
        let proxy_base = response_base(&parts.headers, reached);
        rewrite::request_headers(&mut parts.headers);
        // Set when the caller paused too long inside its body; there is none without a body.
        let mut caller_paused = None;
        let outgoing = if body.is_end_stream() {
            Outgoing::Replayable(Bytes::new(), None)
        } else {
            let paused = Arc::new(AtomicBool::new(false));
            let body = paced(body, route.body_idle_timeout, paused.clone());
            caller_paused = Some(paused);
            prepare_body(body, route.replay_body_limit, &self.replay_budget).await?
        };

        let retry_after_s = route.token_wait.as_secs().max(1);
        let token = self.tokens.wait_usable(route.token_wait).await.ok_or_else(|| self.no_token(retry_after_s))?;
        let pacer = self.pacer.load_full();
        let pass = pacer.admit().await.map_err(|refusal| match refusal {
            Refusal::Busy => ProxyError::UpstreamBusy,
            Refusal::RateLimited { retry_after_s } => ProxyError::RateLimited { retry_after_s },
        })?;
        // The replay budget's share stays taken until the request has been answered.
        let mut _replay_share = None;
        let (body, sent, replay) = match outgoing {
            Outgoing::Replayable(bytes, share) => {
                _replay_share = share;
                (Either::Left(Full::new(bytes.clone())), None, Some(bytes))
            }
            Outgoing::Streamed(stream) => {
                let (upload, sent) = Upload::new(stream, route.max_body_bytes);
                (Either::Right(upload), Some(sent), None)
            }
        };
        let started = Instant::now();
        let attempt = Attempt {
            client: &self.upstream,
            parts,
            uri: &uri,
            timeout: route.upstream_timeout,
            tenant_code: route.tenant_code.as_ref(),
        };
        let mut response = match attempt.send(&token, body, sent).await {
            // The upload failed because the caller stopped sending: the caller's fault, not the API's.
            Err(_) if caller_paused.as_ref().is_some_and(|p| p.load(Ordering::Relaxed)) => {
                return Err(ProxyError::RequestTimeout(route.body_idle_timeout));
            }
            // A pooled connection the API closed as it was reused: a read is sent once more, on a
            // new connection (as HTTP clients do for idempotent requests); anything else is not.
            Err(ProxyError::ClosedBeforeAnswer)
                if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
                    && let Some(bytes) = &replay =>
            {
                tracing::debug!("the API closed a connection before answering; sending the read again");
                attempt.send(&token, Either::Left(Full::new(bytes.clone())), None).await?
            }
            other => other?,
        };

        let mut sent_with = token.header().clone();
        if response.status() == StatusCode::UNAUTHORIZED {
            match replay {
                Some(bytes) => {
                    if let Some(fresh) = self.tokens.replace_rejected(&token, route.token_wait).await {
                        tracing::debug!(generation = fresh.generation(), "replaying a request rejected with 401");
                        sent_with = fresh.header().clone();
                        response = attempt.send(&fresh, Either::Left(Full::new(bytes)), None).await?;
                    }
                }
                // Not replayable: the caller gets this 401, the next request a fresh token.
                None => self.tokens.report_rejected(&token),
            }
        }
        let upstream_latency = started.elapsed();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            pacer.saw_429(response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()));
        }

        if let Some(why) = unforwardable(response.status(), response.headers()) {
            return Err(ProxyError::BadUpstreamAnswer(why));
        }
        let rewrite_body = route.rewrite_bodies && parts.method != Method::HEAD && is_rewritable(response.headers());
        let location_base = if response.headers().contains_key(LOCATION) { proxy_base.text() } else { String::new() };
        let location = LocationRewrite {
            upstream_base: &route.upstream_base,
            proxy_base: &location_base,
            prefix: reached.prefix,
            upstream_path: &route.upstream_path,
        };
        rewrite::response_headers(response.headers_mut(), &location);
        let credential = sent_with.as_bytes();
        // `Bearer <token>`, `Basic <user:password>`: the part after the scheme is the secret.
        let credential = credential.iter().position(|b| *b == b' ').map_or(credential, |i| &credential[i + 1..]);
        rewrite::drop_echoed_token(response.headers_mut(), credential);
        if let Some(code) = route.tenant_code.as_ref() {
            rewrite::drop_echoed_token(response.headers_mut(), code.as_bytes());
        }
        let echoed = |text: &[u8]| {
            rewrite::holds_secret(text, credential)
                || route.tenant_code.as_ref().is_some_and(|code| rewrite::holds_secret(text, code.as_bytes()))
        };
        // hyper writes the API's own reason phrase (`HTTP/1.1 200 <anything>`) to the caller.
        if response.extensions().get::<hyper::ext::ReasonPhrase>().is_some_and(|r| echoed(r.as_bytes())) {
            response.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
        }
        if response.status() == StatusCode::FORBIDDEN
            && let Some(needed) = required
        {
            response
                .headers_mut()
                .insert(X_UEM_PROXY_PERMISSION.clone(), HeaderValue::from_static(needed.permission.name));
        }
        let response = response.map(|b| Body::new(IdleTimeout::new(b, route.upstream_timeout, pass)));
        let (response, read) = if rewrite_body {
            let replacer = Replacer::with(route.needles.clone(), To::Base(proxy_base));
            rewrite_urls(response, replacer).await?
        } else {
            (response, false)
        };
        let (response, activity_id, peeked) = with_activity_id(response, &echoed).await?;
        // A body read whole has arrived: there is no first piece left to wait for.
        let response = if read || peeked { response } else { first_piece(response).await? };
        Ok(Forwarded { response, upstream: upstream_latency, activity_id })
    }
}

/// Waits for a streamed body's first piece before the status goes out, so that a body that
/// breaks (a malformed first chunk) or pauses too long before its first byte is answered
/// 502/504 instead of by a connection closed without any answer.
async fn first_piece(response: Response) -> Result<Response, ProxyError> {
    if response.body().is_end_stream() {
        return Ok(response);
    }
    let (parts, mut body) = response.into_parts();
    match body.frame().await {
        None => Ok(Response::from_parts(parts, Body::empty())),
        Some(Ok(first)) => Ok(Response::from_parts(parts, Body::new(Primed::new(first, body)))),
        Some(Err(error)) => {
            tracing::debug!(%error, "the upstream's body failed before its first byte");
            Err(from_body(&error))
        }
    }
}

/// Why an upstream answer cannot be passed on as it is, if it cannot. An answer framed both by
/// `Content-Length` and `Transfer-Encoding` may be an attempt at response splitting (RFC 9112
/// §6.3), and its `Content-Length` would cut the decoded body short; a `101` would need a tunnel.
/// A transfer coding other than `chunked` (`gzip, chunked`) stays in the bytes the client hands
/// on, while `Transfer-Encoding`, hop-by-hop, is dropped: the caller would take gzip for JSON.
fn unforwardable(status: StatusCode, headers: &HeaderMap) -> Option<&'static str> {
    if status.is_informational() {
        return Some("it switches protocols, and the proxy does not tunnel");
    }
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Some("it is framed both by Content-Length and by Transfer-Encoding");
    }
    let codings = headers.get_all(TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if codings.map(<[u8]>::trim_ascii).any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked")) {
        return Some("it has a transfer coding other than chunked");
    }
    None
}

/// Bodies up to this size are rewritten whole, so their `Content-Length` stays exact; larger ones
/// stream through the rewriter and lose it (the caller sees the end of the body instead).
const REWRITE_WHOLE: u64 = 1024 * 1024;

/// Points the API's own URLs in a textual body at the proxy, and says whether it read the body
/// whole. A body read whole that breaks or pauses too long fails the request (nothing has been
/// sent yet); `body` bounds the pauses.
async fn rewrite_urls(response: Response, mut replacer: Replacer) -> Result<(Response, bool), ProxyError> {
    let (mut parts, body) = response.into_parts();
    if body.size_hint().exact().is_some_and(|n| n <= REWRITE_WHOLE) {
        let collected = read_whole(body).await?;
        let before = collected.len();
        let out = replacer.rewrite_whole(collected);
        // Most bodies hold no URL of the API and keep their length, and the header with it when
        // it is one plain number.
        let mut lengths = parts.headers.get_all(CONTENT_LENGTH).iter();
        let kept = out.len() == before
            && lengths.next().is_some_and(|v| states_exactly(v.as_bytes(), before))
            && lengths.next().is_none();
        if !kept {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
        }
        return Ok((Response::from_parts(parts, Body::from(out)), true));
    }
    parts.headers.remove(CONTENT_LENGTH);
    Ok((Response::from_parts(parts, Body::new(Rewritten::new(body, replacer))), false))
}

/// Whether `text` is `n` written as a plain decimal number: no sign, space or leading zero.
fn states_exactly(text: &[u8], n: usize) -> bool {
    let plain = !text.is_empty() && text.len() <= 19 && text.iter().all(u8::is_ascii_digit);
    plain
        && (text[0] != b'0' || text.len() == 1)
        && text.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')) == n as u64
}

/// Reads an upstream body to its end; never mistakes a broken one for a short one. A body that
/// comes in one piece (most small ones) is that piece, with no list to gather pieces in.
async fn read_whole(mut body: Body) -> Result<Bytes, ProxyError> {
    let failed = |error: axum::Error| {
        tracing::debug!(%error, "the upstream's body failed while read whole");
        from_body(&error)
    };
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(frame) => frame.map_err(failed)?.into_data().unwrap_or_default(),
    };
    if body.is_end_stream() {
        return Ok(first);
    }
    let rest = body.collect().await.map_err(failed)?.to_bytes();
    if first.is_empty() {
        return Ok(rest);
    }
    let mut whole = bytes::BytesMut::with_capacity(first.len() + rest.len());
    whole.extend_from_slice(&first);
    whole.extend_from_slice(&rest);
    Ok(whole.freeze())
}

/// For a small JSON error answer, reads the body to note UEM's `activityId` for the access log
/// and passes the same bytes on (the last value: whether it read them). Success bodies and large
/// bodies are not touched. An id that holds a credential (`echoed`) is not noted.
async fn with_activity_id(
    response: Response,
    echoed: &(dyn Fn(&[u8]) -> bool + Sync),
) -> Result<(Response, Option<Box<str>>, bool), ProxyError> {
    if response.status().as_u16() < 400 {
        return Ok((response, None, false));
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let small = response.body().size_hint().exact().is_some_and(|n| n <= ERROR_BODY_PEEK);
    if !(is_json && small) {
        return Ok((response, None, false));
    }
    let (parts, body) = response.into_parts();
    let bytes = read_whole(body).await?;
    let mut activity_id = None;
    if let Ok(error) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(activity) = error.get("activityId").and_then(|a| a.as_str())
    {
        // Checked as noted too: the characters left out could split a credential.
        let printable: String = activity.chars().filter(|c| c.is_ascii_graphic()).collect();
        if !echoed(activity.as_bytes()) && !echoed(printable.as_bytes()) {
            activity_id = Some(printable.chars().take(64).collect::<String>().into_boxed_str());
        }
    }
    Ok((Response::from_parts(parts, Body::from(bytes)), activity_id, true))
}

/// The upstream URI: the configured base (scheme, authority, path prefix), the caller's canonical
/// `path`, and the caller's query byte for byte. Built by appending, never `Url::join`, which
/// would let `//other.host/` name another host, and never through a URL type that re-encodes the
/// query. The base's scheme and authority are parsed once, per route; a request parses only its
/// path and query.
fn upstream_uri(route: &Route, parts: &Parts, path: &str) -> Result<Uri, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadTarget("CONNECT is not supported"));
    }
    let query = parts.uri.query();
    let unchanged = || ProxyError::BadTarget("the request target cannot be forwarded unchanged");
    // Only a path joins the base: `*` (asterisk form) would join its host name.
    if !path.starts_with('/') {
        return Err(unchanged());
    }
    let joined = |start: &str| {
        let mut target = String::with_capacity(start.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(start);
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        target
    };
    // The whole URL within `http`'s limit, as when it was parsed whole: the same targets refused.
    if route.upstream_base.len() + path.len() + query.map_or(0, |q| q.len() + 1) > MAX_URI_BYTES {
        return Err(unchanged());
    }
    let uri = match &route.upstream_origin {
        Some((scheme, authority)) => {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(scheme.clone());
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(PathAndQuery::try_from(joined(&route.upstream_path)).map_err(|_| unchanged())?);
            Uri::from_parts(uri).map_err(|_| unchanged())?
        }
        None => Uri::try_from(joined(&route.upstream_base)).map_err(|_| unchanged())?,
    };
    // What is decided on is what is sent.
    if uri.path().strip_prefix(route.upstream_path.as_str()) != Some(path) || uri.query() != query {
        return Err(unchanged());
    }
    Ok(uri)
}

/// The proxy's own base URL as the caller addressed it, for `Location` and body rewrites.
fn response_base(headers: &HeaderMap, reached: Reached<'_>) -> ProxyBase {
    let host = match headers.get(HOST).filter(|h| h.to_str().is_ok()) {
        Some(host) => host.clone(),
        None => HeaderValue::from_str(reached.listen_host).unwrap_or(HeaderValue::from_static("localhost")),
    };
    ProxyBase { https: reached.https, host, prefix: reached.prefix.to_owned() }
}

/// The caller's request body with its pauses bounded by `idle`, so a caller that stops sending
/// cannot hold a buffer, an upstream slot or an upstream connection for longer. `paused` is set
/// when a pause was too long, so that a failed upload is answered as the caller's fault (408).
fn paced(body: Body, idle: Duration, paused: Arc<AtomicBool>) -> Body {
    Body::new(IdleTimeout::watching(Side::Caller, body, idle, ()).map_err(move |e| {
        if Paused::find(&*e).is_some() {
            paused.store(true, Ordering::Relaxed);
        }
        e
    }))
}

/// Keeps a body small enough to replay (known length up to `limit`) while the replay budget has
/// room for it; streams any other. The share is taken before the body is read, so that callers
/// sending slowly cannot make the proxy hold more than the budget.
async fn prepare_body(body: Body, limit: u64, budget: &ReplayBudget) -> Result<Outgoing, ProxyError> {
    let hint = body.size_hint();
    if body.is_end_stream() || hint.exact() == Some(0) {
        return Ok(Outgoing::Replayable(Bytes::new(), None));
    }
    let Some(len) = hint.exact().filter(|len| *len <= limit) else {
        return Ok(Outgoing::Streamed(body));
    };
    let Some(share) = budget.take(len) else {
        tracing::debug!(held = budget.held(), "the replay budget is spent: the body streams and cannot be replayed");
        return Ok(Outgoing::Streamed(body));
    };
    let collected = Limited::new(body, limit as usize).collect().await.map_err(|e| match Paused::find(&*e) {
        Some(paused) => ProxyError::RequestTimeout(paused.idle),
        None => ProxyError::BadTarget("the request body ended early"),
    })?;
    Ok(Outgoing::Replayable(collected.to_bytes(), Some(share)))
}

/// What stays the same between a request's first attempt and its replay.
struct Attempt<'a> {
    client: &'a UpstreamClient,
    parts: &'a Parts,
    uri: &'a Uri,
    timeout: Duration,
    tenant_code: Option<&'a HeaderValue>,
}

impl Attempt<'_> {
    /// The request to the API: the caller's head with the token and the tenant code.
    fn request(&self, token: &Token, body: Outbound) -> http::Request<Outbound> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.clone_from(&self.parts.headers);
        headers.insert(AUTHORIZATION, token.header().clone());
        if let Some(code) = self.tenant_code {
            headers.insert(rewrite::AW_TENANT_CODE, code.clone());
        }
        request
    }

    /// Sends one attempt and waits for the response headers. The upstream's time to answer
    /// counts from the moment the request body has been sent in full (`sent`, for streamed
    /// bodies).
    async fn send(
        &self,
        token: &Token,
        body: Outbound,
        sent: Option<oneshot::Receiver<()>>,
    ) -> Result<http::Response<ResponseBody>, ProxyError> {
        let timeout = self.timeout;
        let deadline = async move {
            if let Some(sent) = sent {
                let _ = sent.await;
            }
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            // Made where it is moved: a local would keep room for it beside the send's state.
            result = self.client.send(self.request(token, body)) => result.map_err(|e| {
                tracing::debug!(error = %ErrorChain(&e), "upstream request failed");
                match too_large(&e) {
                    Some(limit) => ProxyError::BodyTooLarge(limit),
                    None => from_upstream(&e),
                }
            }),
            () = deadline => Err(ProxyError::Timeout),
        }
    }
}

/// Whether `cause` is the API closing the connection: cleanly in the middle of the exchange, or
/// with a reset (an idle close that meets the request with an RST, a load balancer dropping the
/// connection).
fn closed_by_peer(cause: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message)
        || cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe))
}

/// Classifies a failure to get response headers from the upstream. Timeouts first: a connect
/// timeout is a timeout (504), as in nginx; other connect failures are unreachable (502).
fn from_upstream(e: &upstream::Error) -> ProxyError {
    let chain = || std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |s| s.source());
    let timed_out = chain().any(|s| {
        s.is::<upstream::ConnectTimeout>()
            || s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    if timed_out {
        ProxyError::Timeout
    } else if e.is_connect() {
        ProxyError::Unreachable
    } else if chain().any(closed_by_peer) {
        ProxyError::ClosedBeforeAnswer
    } else {
        ProxyError::Broken
    }
}

/// Classifies a body that failed while the proxy read it: a pause of the upstream is a timeout
/// (504), a pause of the caller a request timeout (408), anything else a broken upstream (502).
pub fn from_body(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    match Paused::find(e) {
        Some(Paused { side: Side::Upstream, .. }) => ProxyError::Timeout,
        Some(Paused { side: Side::Caller, idle }) => ProxyError::RequestTimeout(*idle),
        None => ProxyError::Broken,
    }
}

/// The body limit, when that is why sending failed.
fn too_large(e: &upstream::Error) -> Option<u64> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(TooLarge(limit)) = s.downcast_ref::<TooLarge>() {
            return Some(*limit);
        }
        source = s.source();
    }
    None
}

/// An error with its causes, for the debug log: hyper's errors say little without them.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(base: &str, origin: bool) -> Route {
        let api = url::Url::parse(base).unwrap();
        let upstream_base = api.as_str().trim_end_matches('/').to_owned();
        Route {
            needles: Arc::new(Needles::new(&upstream_base)),
            upstream_origin: if origin { Route::origin(&upstream_base) } else { None },
            upstream_base,
            upstream_path: api.path().trim_end_matches('/').to_owned(),
            upstream_timeout: Duration::from_secs(1),
            token_wait: Duration::from_secs(1),
            replay_body_limit: 0,
            rewrite_bodies: true,
            max_body_bytes: None,
            body_idle_timeout: Duration::from_secs(1),
            tenant_code: None,
        }
    }

    proptest! {
        /// The target built from the base's parsed scheme and authority is the one parsed from
        /// the whole URL, and is refused when that is.
        #[test]
        fn the_upstream_uri_is_the_whole_urls(
            base in prop_oneof![
                Just("https://as1.awmdm.com/"),
                Just("http://127.0.0.1:8080/uem/"),
                Just("https://[::1]:8443/a%20b/c"),
                Just("https://user@host.example"),
            ],
            path in prop_oneof!["/[a-zA-Z0-9/%._~!$&'()*+,;=:@ -]{0,20}", any::<String>()],
            query in proptest::option::of("[a-zA-Z0-9/%._~!$&'()*+,;=:@?#\\^`{}|\"<> -]{0,20}"),
        ) {
            let target = match &query { Some(q) => format!("/x?{q}"), None => "/x".to_owned() };
            let Ok(uri) = Uri::try_from(target) else { return Ok(()) };
            let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
            let fast = upstream_uri(&route(base, true), &parts, &path).map(|u| u.to_string());
            let whole = upstream_uri(&route(base, false), &parts, &path).map(|u| u.to_string());
            prop_assert_eq!(fast.as_ref().ok(), whole.as_ref().ok(), "path {:?}", path);
        }
    }

    #[test]
    fn only_a_plain_number_states_a_length_exactly() {
        assert!(states_exactly(b"320", 320));
        assert!(states_exactly(b"0", 0));
        assert!(!states_exactly(b"0320", 320));
        assert!(!states_exactly(b"321", 320));
        assert!(!states_exactly(b" 320", 320));
        assert!(!states_exactly(b"+320", 320));
        assert!(!states_exactly(b"", 0));
        assert!(!states_exactly(b"99999999999999999999", 0));
    }

    #[test]
    fn a_target_too_long_for_a_whole_url_is_refused_both_ways() {
        // `http://127.0.0.1:47102` is 22 bytes: a whole URL of 65 534 bytes parses, one more not.
        for n in 65_505..65_520 {
            let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
            let path = format!("/{}", "a".repeat(n));
            let fast = upstream_uri(&route("http://127.0.0.1:47102", true), &parts, &path).is_ok();
            let whole = upstream_uri(&route("http://127.0.0.1:47102", false), &parts, &path).is_ok();
            assert_eq!(fast, whole, "path of {} bytes", n + 1);
            assert_eq!(fast, 22 + 1 + n <= 65_534, "path of {} bytes", n + 1);
        }
    }

    /// A body of these pieces, failing after them when `fails`.
    fn pieces(pieces: Vec<Vec<u8>>, fails: bool) -> Body {
        let mut frames: Vec<Result<Bytes, std::io::Error>> = pieces.into_iter().map(|p| Ok(Bytes::from(p))).collect();
        if fails {
            frames.push(Err(std::io::Error::other("the connection broke")));
        }
        Body::from_stream(futures_util::stream::iter(frames))
    }

    proptest! {
        /// A body read whole is its pieces end to end, whatever their number and sizes, and a body
        /// that breaks after them is an error, never a short body.
        #[test]
        fn a_body_read_whole_is_all_of_it_or_an_error(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
            fails in any::<bool>(),
            known in any::<bool>(),
        ) {
            let whole: Vec<u8> = parts.concat();
            let body = if known && !fails && parts.len() <= 1 { Body::from(whole.clone()) } else { pieces(parts, fails) };
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let read = runtime.block_on(read_whole(body));
            match read {
                Ok(bytes) => prop_assert!(!fails && bytes == whole),
                Err(_) => prop_assert!(fails),
            }
        }
    }
}
