//! The one service every request goes through, as plain function calls: the method made
//! canonical, an id and a [`Record`] given, then the gate (who may call), then either the proxy's
//! own endpoints (`/_proxy/…`, by a prefix test) or the policy and the forwarder; the record is
//! written when the answer's body is done.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, ORIGIN, PROXY_AUTHORIZATION, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use crate::app::{App, Settings};
use crate::error::ProxyError;
use crate::forward::Reached;
use crate::forward::body::Counted;
use crate::gate::target::{Target, canonical_method, is_own};
use crate::gate::{self};
use crate::listen::{Handler, Peer};
use crate::record::{Record, RequestId};
use crate::request_id::{self, X_REQUEST_ID};
use crate::tenants::{Picked, split_prefix};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application: what answers each request. Cloning is cheap.
#[derive(Clone)]
pub struct Service {
    app: Arc<App>,
    /// The proxy's own endpoints.
    admin: Router,
    /// On a tenant's own listener, the tenant every path goes to.
    pinned: Option<Arc<str>>,
    /// The listener's `host:port`, for URLs in answers to callers that send no `Host`.
    listen_host: Arc<str>,
}

impl Service {
    /// The service of the shared listener.
    pub fn new(app: Arc<App>) -> Service {
        let listen_host = match &app.local {
            crate::config::Listen::Tcp(addr) => Arc::from(addr.to_string()),
            crate::config::Listen::Unix(_) => Arc::from("localhost"),
        };
        Service { admin: crate::admin::routes().with_state(app.clone()), app, pinned: None, listen_host }
    }

    /// The service of tenant `name`'s own listener, bound at `local`.
    pub fn for_tenant(app: Arc<App>, name: &str, local: std::net::SocketAddr) -> Service {
        let pinned: Arc<str> = Arc::from(name);
        let admin = crate::admin::routes().layer(axum::Extension(crate::admin::Pinned(pinned.clone())));
        Service {
            admin: admin.with_state(app.clone()),
            pinned: Some(pinned),
            listen_host: Arc::from(local.to_string()),
            ..Service::new(app)
        }
    }

    /// Serves one request from `peer`; `https`: it came over the HTTPS listener.
    pub async fn serve<B>(self, req: Request<B>, peer: Peer, https: bool) -> Response
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
        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            let count = Arc::default();
            record.bytes_in = Some(Arc::clone(&count));
            Body::new(Counted::new(body, count))
        };
        // Debug lines written while serving the request carry its id through this span.
        let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or(""));
        // Boxed: answering takes several KiB of state, and hyper keeps room for a request's future
        // beside every connection, busy or idle.
        let answer = Box::pin(self.answer(&settings, parts, body, &mut record, https).instrument(span));
        let mut response = answer.await;
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), id);
        mark_sensitive(headers, &[SET_COOKIE]);
        record.finish(response)
    }

    async fn answer(
        &self,
        settings: &Settings,
        mut parts: Parts,
        body: Body,
        record: &mut Record,
        https: bool,
    ) -> Response {
        let id = record.id.clone();
        let id = id.to_str().unwrap_or("");
        if let Some(refusal) = settings.checks.refusal(&parts, record.caller.as_ref()) {
            // A refused caller's line names the networks let in, so a bridge network's range that is
            // missing from UEM_PROXY_ALLOW_CIDRS shows beside the address.
            let allowed = matches!(refusal, ProxyError::CallerNotAllowed).then(|| settings.checks.allowed_networks());
            tracing::warn!(request_id = %id, peer = %record.peer, reason = %refusal, allow_cidrs = allowed, "request refused");
            // `caller` says why a caller was let in; this one was not.
            record.caller = None;
            return refusal.into_response(id);
        }
        if let Some(answer) = gate::preflight(&parts) {
            return answer;
        }
        let origin = parts.headers.get(ORIGIN).cloned();
        let mut response = if is_own(parts.uri.path()) {
            parts.extensions.insert(RequestId(record.id.clone()));
            let request = Request::from_parts(parts, body);
            match self.admin.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        } else {
            match self.forward(parts, body, record, https).await {
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

    /// The tenant, the policy's decision, then the tenant's forwarder.
    async fn forward(
        &self,
        parts: Parts,
        body: Body,
        record: &mut Record,
        https: bool,
    ) -> Result<Response, ProxyError> {
        let tenants = self.app.tenants.load_full();
        let uri = parts.uri.clone();
        let picked = match &self.pinned {
            Some(name) => tenants.get(name).map(|tenant| Picked { tenant, path: uri.path(), prefix: "" }),
            None => tenants.pick(uri.path()),
        };
        let picked = picked.ok_or_else(|| match &self.pinned {
            Some(name) => ProxyError::TenantGone(name.to_string()),
            None => ProxyError::UnknownTenant(tenants.names()),
        })?;
        let tenant = picked.tenant;
        if tenants.prefixed {
            record.tenant = Some(tenant.name.clone());
        }
        let settings = tenant.settings.load_full();
        let target = Target::of(&parts.method, picked.path).map_err(ProxyError::BadTarget)?;
        // `//t/uat/…`, `/%74/uat/…`, `/x/../t/uat/…` name a tenant only once made canonical: the
        // default tenant must not receive them with its token.
        if tenants.prefixed && picked.prefix.is_empty() && self.pinned.is_none() && split_prefix(&target.path).is_some()
        {
            return Err(ProxyError::BadTarget("a tenant prefix is written /t/NAME/ at the very start of the path"));
        }
        record.category = Some(target.category());
        gate::decide(&settings.policy, &parts, &target)?;
        let reached = Reached { https, listen_host: &self.listen_host, prefix: picked.prefix };
        let forwarded =
            tenant.forwarder.forward(&settings.route, parts, body, &target.path, target.required, reached).await?;
        record.upstream = Some(forwarded.upstream);
        record.activity_id = forwarded.activity_id;
        if forwarded.response.status() == StatusCode::TOO_MANY_REQUESTS {
            self.app.metrics.throttled();
        }
        Ok(forwarded.response)
    }
}

impl Handler for Service {
    fn call(self, req: Request<Incoming>, peer: Peer, https: bool) -> impl Future<Output = Response> + Send + 'static {
        self.serve(req, peer, https)
    }
}

/// Marks credential-bearing headers so that no debug output of them shows their values.
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper keeps room for a request's future beside every connection, idle ones included: a
    /// thousand idle callers cost a thousand times its size.
    #[tokio::test]
    async fn the_future_kept_beside_each_connection_stays_small() {
        let env = |k: &str| match k {
            "UEM_API_URL" => Some("http://127.0.0.1:9".to_owned()),
            "UEM_TOKEN_URL" => Some("http://127.0.0.1:9/token".to_owned()),
            "UEM_CLIENT_ID" => Some("client".to_owned()),
            "UEM_CLIENT_SECRET" => Some("secret".to_owned()),
            _ => None,
        };
        let config = crate::config::Config::load(None, &env).unwrap();
        let service = crate::service(&config, &config.listen).unwrap();
        let serving = service.serve(Request::new(Body::empty()), Peer::Unix(None), false);
        assert!(std::mem::size_of_val(&serving) <= 1024, "{} bytes", std::mem::size_of_val(&serving));
    }

    #[test]
    fn own_paths_are_the_prefix_and_what_is_under_it() {
        for own in ["/_proxy", "/_proxy/", "/_proxy/status", "/_proxy/../api/x"] {
            assert!(is_own(own), "{own}");
        }
        for forwarded in ["/_proxyx", "/api/_proxy/status", "/", "/_prox"] {
            assert!(!is_own(forwarded), "{forwarded}");
        }
    }
}
