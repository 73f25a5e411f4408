//! The one service every request goes through, as plain function calls: the method made
//! canonical, an id and a [`Record`] given, then the gate (who may call), then either the proxy's
//! own endpoints (`/_proxy/…`, by a prefix test) or the policy and the forwarder; the record is
//! written when the answer's body is done. `/_proxy/all/…` pages through a list, each page a
//! call of its own through the same policy, cache and forwarder ([`pages`]).

mod pages;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, COOKIE, HeaderName, HeaderValue, ORIGIN, PROXY_AUTHORIZATION, SET_COOKIE,
};
use http::request::Parts;
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use crate::app::{App, Settings};
use crate::error::ProxyError;
use crate::forward::Reached;
use crate::gate::target::{Target, canonical_method, is_own, names_own};
use crate::gate::{self};
use crate::listen::intake::CallerBody;
use crate::listen::{Handler, Peer};
use crate::record::{Record, RequestId};
use crate::request_id::{self, X_REQUEST_ID};
use crate::tenants::{Picked, Tenant, TenantSettings, split_prefix};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application: what answers each request. Cloning is cheap.
#[derive(Clone)]
pub struct Service {
    app: Arc<App>,
    /// The proxy's own endpoints.
    admin: Router,
    listener: Arc<Listener>,
}

/// Which listener a service answers on. One pointer in the service: hyper keeps a request's
/// future, service included, beside every connection.
struct Listener {
    /// On a tenant's own listener, the tenant every path goes to.
    pinned: Option<Arc<str>>,
    /// The listener's `host:port`, for URLs in answers to callers that send no `Host`.
    host: String,
}

impl Service {
    /// The service of the shared listener.
    pub fn new(app: Arc<App>) -> Service {
        let host = match &app.local {
            crate::config::Listen::Tcp(addr) => addr.to_string(),
            crate::config::Listen::Unix(_) => "localhost".to_owned(),
        };
        let listener = Arc::new(Listener { pinned: None, host });
        Service { admin: crate::admin::routes().with_state(app.clone()), app, listener }
    }

    /// The service of tenant `name`'s own listener, bound at `local`.
    pub fn for_tenant(app: Arc<App>, name: &str, local: std::net::SocketAddr) -> Service {
        let pinned: Arc<str> = Arc::from(name);
        // Its own endpoints speak of this tenant alone.
        let admin = crate::admin::routes().layer(axum::Extension(crate::admin::Pinned { name: pinned.clone(), local }));
        let listener = Arc::new(Listener { pinned: Some(pinned), host: local.to_string() });
        Service { admin: admin.with_state(app.clone()), listener, ..Service::new(app) }
    }

    /// Serves one request from `peer`; `https`: it came over the HTTPS listener. Boxed: serving
    /// takes over 4 KiB of state, and hyper keeps room for the future a connection's service
    /// returns beside every connection, busy or idle.
    pub fn serve<B>(self, req: Request<B>, peer: Peer, https: bool) -> Pin<Box<impl Future<Output = Response> + Send>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        Box::pin(self.serving(req, peer, https))
    }

    async fn serving<B>(self, req: Request<B>, peer: Peer, https: bool) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        // Before anything looks at it: IIS, which serves the API, ignores the method's case.
        let method = canonical_method(&parts.method);
        if method != parts.method {
            parts.method = method;
        }
        let id = request_id::of(&parts.headers);
        parts.headers.insert(X_REQUEST_ID.clone(), id.clone());
        mark_sensitive(&mut parts.headers, &[AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]);
        let settings = self.app.settings.load_full();
        let mut record =
            Record::start(self.app.metrics.clone(), id.clone(), peer, parts.method.clone(), parts.uri.clone(), started);
        record.caller = settings.checks.caller(&record.peer);
        // The inspector shows what callers exchanged with the API: not its own page's requests,
        // and nothing from a peer that may not call at all (it could flood the list).
        if record.caller.is_some() && !is_own(parts.uri.path()) {
            record.capture = self.app.inspector.capture(&parts.headers);
        }
        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            let (body, intake) = CallerBody::new(body, &parts);
            record.bytes_in = Some(intake);
            let body = Body::new(body);
            match &mut record.capture {
                Some(capture) => capture.tee_request(body),
                None => body,
            }
        };
        // Debug lines written while serving the request carry its id through this span.
        let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or(""));
        // Whether the caller's address may call: `answer` clears `caller` on any refusal.
        let let_in = record.caller.is_some();
        let answering = async {
            let mut response = self.answer(&settings, &mut parts, body, &mut record, https).await;
            if let Some(intake) = &record.bytes_in {
                let headers = response.headers_mut();
                if intake.answered(crate::listen::lists_token(headers, CONNECTION, b"close"), let_in) {
                    // hyper closes a connection whose request body was not read to its end: say so.
                    headers.insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            response
        };
        let mut response = answering.instrument(span).await;
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), id);
        mark_sensitive(headers, &[SET_COOKIE]);
        record.finish(response)
    }

    async fn answer(
        &self,
        settings: &Arc<Settings>,
        parts: &mut Parts,
        body: Body,
        record: &mut Record,
        https: bool,
    ) -> Response {
        let id = record.id.clone();
        let id = id.to_str().unwrap_or("");
        if let Some(refusal) = settings.checks.refusal(parts, record.caller.as_ref()) {
            // A refused caller's line names the networks let in, so a bridge network's range that is
            // missing from UEM_PROXY_ALLOW_CIDRS shows beside the address.
            let allowed = matches!(refusal, ProxyError::CallerNotAllowed).then(|| settings.checks.allowed_networks());
            tracing::warn!(request_id = %id, peer = %record.peer, reason = %refusal, allow_cidrs = allowed, "request refused");
            // `caller` says why a caller was let in; this one was not.
            record.caller = None;
            return refusal.into_response(id);
        }
        if let Some(answer) = gate::preflight(parts) {
            return answer;
        }
        let origin = parts.headers.get(ORIGIN).cloned();
        let mut response = if let Some(inner) = pages::inner(parts.uri.path()) {
            let inner = inner.to_owned();
            let mut learnt = Learnt::default();
            // Boxed, as the admin paths are: paging's state is several KiB, and a normal call's
            // state (in which an unboxed branch would take room) is made and moved per request.
            let answer =
                Box::pin(pages::all(self.clone(), settings.clone(), taken(parts), inner, https, &mut learnt)).await;
            learnt.into_record(record);
            answer.unwrap_or_else(|error| error.into_response(id))
        } else if is_own(parts.uri.path()) {
            let mut parts = taken(parts);
            parts.extensions.insert(RequestId(record.id.clone()));
            let request = Request::from_parts(parts, body);
            match self.admin.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        } else {
            match self.forward(settings, parts, body, record, https).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(request_id = %id, %error, "answered by the proxy");
                    error.into_response(id)
                }
            }
        };
        if let Some(origin) = origin {
            gate::allow_origin(response.headers_mut(), origin);
        }
        response
    }

    /// A normal call, its findings written into the record.
    async fn forward(
        &self,
        settings: &Settings,
        parts: &mut Parts,
        body: Body,
        record: &mut Record,
        https: bool,
    ) -> Result<Response, ProxyError> {
        let mut learnt = Learnt::default();
        let answer = self.dispatch(settings, parts, body, https, &mut learnt).await;
        learnt.into_record(record);
        answer
    }

    /// A call as the caller's path names it: its tenant (this listener's, or by `/t/NAME/`, or
    /// the default), then [`Service::call`] with the path the tenant's API has. `/_proxy/all/`
    /// hands each page's path here too, so paging picks tenants as a normal call does.
    async fn dispatch(
        &self,
        settings: &Settings,
        parts: &mut Parts,
        body: Body,
        https: bool,
        learnt: &mut Learnt,
    ) -> Result<Response, ProxyError> {
        let tenants = self.app.tenants.load_full();
        let uri = parts.uri.clone();
        let picked = match &self.listener.pinned {
            Some(name) => tenants.get(name).map(|tenant| Picked { tenant, path: uri.path(), prefix: "" }),
            None => tenants.pick(uri.path()),
        };
        let picked = picked.ok_or_else(|| match &self.listener.pinned {
            Some(name) => ProxyError::TenantGone(name.to_string()),
            None => ProxyError::UnknownTenant(tenants.names()),
        })?;
        if tenants.prefixed {
            learnt.tenant = Some(picked.tenant.name.clone());
        }
        // A path that reached the default tenant without naming it.
        let unprefixed_default = tenants.prefixed && picked.prefix.is_empty() && self.listener.pinned.is_none();
        self.call(settings, picked, unprefixed_default, parts, body, https, learnt).await
    }

    /// One call of a tenant's API: the target, the tenant's policy, then the cache (for what no
    /// denial stopped) and the tenant's forwarder. Every page of `/_proxy/all/` comes here too.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        settings: &Settings,
        picked: Picked<'_>,
        unprefixed_default: bool,
        parts: &mut Parts,
        body: Body,
        https: bool,
        learnt: &mut Learnt,
    ) -> Result<Response, ProxyError> {
        let tenant = picked.tenant;
        let own = tenant.settings.load_full();
        let target = Target::of(&parts.method, picked.path).map_err(ProxyError::BadTarget)?;
        // `//t/uat/…`, `/%74/uat/…`, `/x/../t/uat/…` name a tenant only once made canonical: the
        // default tenant must not receive them with its token.
        if unprefixed_default && split_prefix(&target.path).is_some() {
            return Err(ProxyError::BadTarget("a tenant prefix is written /t/NAME/ at the very start of the path"));
        }
        // `/api/../_proxy/status`, `/_PROXY/status`: the proxy's own paths as the API would read
        // them (it ignores case) are never sent to it.
        if names_own(&target.path) {
            return Err(ProxyError::BadTarget("paths under /_proxy/ are the proxy's own and are never forwarded"));
        }
        learnt.category = Some(target.category());
        learnt.permission = target.required.map(|r| r.permission.name);
        gate::decide(&own.policy, parts, &target)?;
        let reached = Reached { https, listen_host: &self.listener.host, prefix: picked.prefix };
        let aim = Aim { tenant, own: &own, target: &target, reached };
        let Some(cache) = settings.cache.as_deref() else {
            return self.send(&aim, parts, body, learnt).await;
        };
        // Boxed: the cache's state is made only when there is a cache.
        Box::pin(self.cached(cache, &aim, parts, body, learnt)).await
    }

    /// A call through the cache: a hit, a fill (single flight), a pass, or a write that purges.
    async fn cached(
        &self,
        cache: &crate::cache::Cache,
        aim: &Aim<'_>,
        parts: &mut Parts,
        body: Body,
        learnt: &mut Learnt,
    ) -> Result<Response, ProxyError> {
        let (tenant, path, reached) = (aim.tenant, &aim.target.path, aim.reached);
        let method = parts.method.clone();
        match cache.lookup(&tenant.name, parts, path, reached.https, reached.prefix).await {
            crate::cache::Lookup::Hit(response) => Ok(response),
            crate::cache::Lookup::Fill(fill) => fill.complete(self.send(aim, parts, body, learnt).await).await,
            crate::cache::Lookup::Pass(label) => {
                let response = self.send(aim, parts, body, learnt).await?;
                Ok(crate::cache::labelled(response, label, Duration::ZERO))
            }
            crate::cache::Lookup::Uncovered => {
                let response = self.send(aim, parts, body, learnt).await?;
                cache.after(&tenant.name, &method, path, response.status());
                Ok(response)
            }
        }
    }

    /// The tenant's forwarder, for a target its policy allowed.
    async fn send(
        &self,
        aim: &Aim<'_>,
        parts: &mut Parts,
        body: Body,
        learnt: &mut Learnt,
    ) -> Result<Response, ProxyError> {
        let Aim { tenant, own, target, reached } = *aim;
        let forwarded =
            tenant.forwarder.forward(&own.route, parts, body, &target.path, target.required, reached).await?;
        learnt.upstream = Some(forwarded.upstream);
        learnt.activity_id = forwarded.activity_id;
        if forwarded.response.status() == StatusCode::TOO_MANY_REQUESTS {
            self.app.metrics.throttled();
        }
        Ok(forwarded.response)
    }
}

/// The request's head, for a path that needs it as a value (the admin router, paging); an empty
/// head is left in its place. The normal path borrows it: an `async fn` keeps its arguments for
/// its whole life, so a head passed by value down the forwarding path is stored at every level.
fn taken(parts: &mut Parts) -> Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// Where a call that its tenant's policy allowed goes, and how the caller reached the proxy.
#[derive(Clone, Copy)]
struct Aim<'a> {
    tenant: &'a Tenant,
    own: &'a TenantSettings,
    target: &'a Target<'a>,
    reached: Reached<'a>,
}

/// What a call learnt for the request's record.
#[derive(Default)]
struct Learnt {
    tenant: Option<Arc<str>>,
    category: Option<&'static str>,
    permission: Option<&'static str>,
    upstream: Option<Duration>,
    activity_id: Option<Box<str>>,
}

impl Learnt {
    fn into_record(self, record: &mut Record) {
        record.tenant = self.tenant.or(record.tenant.take());
        record.category = self.category.or(record.category);
        record.permission = self.permission.or(record.permission);
        record.upstream = self.upstream.or(record.upstream);
        record.activity_id = self.activity_id.or(record.activity_id.take());
    }
}

impl Handler for Service {
    fn call(self, req: Request<Incoming>, peer: Peer, https: bool) -> impl Future<Output = Response> + Send + 'static {
        self.serve(req, peer, https)
    }
}

/// Marks credential-bearing headers so that no debug output of them shows their values. One pass
/// over the few headers there are, rather than a lookup per name.
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        if names.contains(name) {
            value.set_sensitive(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service of a proxy configured with the least there is.
    fn a_service() -> Service {
        let env = |k: &str| match k {
            "UEM_API_URL" => Some("http://127.0.0.1:9".to_owned()),
            "UEM_TOKEN_URL" => Some("http://127.0.0.1:9/token".to_owned()),
            "UEM_CLIENT_ID" => Some("client".to_owned()),
            "UEM_CLIENT_SECRET" => Some("secret".to_owned()),
            _ => None,
        };
        let config = crate::config::Config::load(None, &env).unwrap();
        crate::service(&config, &config.listen).unwrap()
    }

    /// hyper keeps room for a request's future beside every connection, idle ones included: a
    /// thousand idle callers cost a thousand times its size (2 120 bytes when it held part of
    /// the request's state; DHAT with 300 idle connections).
    #[tokio::test]
    async fn the_future_kept_beside_each_connection_stays_small() {
        let service = a_service();
        let serving = service.serve(Request::new(Body::empty()), Peer::Unix(None), false);
        assert!(std::mem::size_of_val(&serving) <= 1024, "{} bytes", std::mem::size_of_val(&serving));
    }

    /// A request's state is boxed and copied whole into its box (see `serve`), and its cache
    /// lines are fresh memory each time: every KiB is paid on every request. The request's head
    /// is borrowed down the forwarding path, not stored again at each level (6.7 KiB for the
    /// answering part alone when it was), and the resend on a new connection is boxed (5.3 KiB
    /// for the whole when it was inline).
    #[tokio::test]
    async fn the_state_of_serving_a_request_stays_under_4_5_kib() {
        let service = a_service();
        let request = Request::new(http_body_util::Empty::<Bytes>::new());
        let serving = service.serving(request, Peer::Unix(None), false);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 4608, "{size} bytes");
    }

    #[test]
    fn own_paths_are_the_prefix_and_what_is_under_it() {
        for own in ["/_proxy", "/_proxy/", "/_proxy/status", "/_proxy/../api/x"] {
            assert!(is_own(own), "{own}");
        }
        for forwarded in ["/_proxyx", "/api/_proxy/status", "/", "/_prox"] {
            assert!(!is_own(forwarded), "{forwarded}");
            assert!(!names_own(forwarded), "{forwarded}");
        }
        for named in ["/_PROXY", "/_Proxy/", "/_proxy/status", "/_pRoXy/x/y"] {
            assert!(names_own(named), "{named}");
        }
        assert!(!names_own("/_proxé") && !names_own(""), "no panic on other characters");
    }
}
