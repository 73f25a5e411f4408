//! uem-proxy: a reverse proxy that holds a Workspace ONE UEM OAuth client and lets local callers
//! use the tenant's REST API without any credential of their own.
//!
//! # Layout
//! A request travels four stages, each a folder; a stage imports only the stages before it, and
//! [`service`](mod@service) calls them in turn, carrying the request's state as values:
//! - [`listen`]: bytes in. TCP, Unix and HTTPS listeners, the connection cap and the
//!   header-timeout sweep, stalled writes, the strict request-framing guard, and the caller's
//!   request body (counted, and never left half read on a connection that is kept).
//! - [`gate`]: who may call (address, `Host`, web origin, limits), what the request targets (the
//!   canonical method and path, and the permission it needs), and what the [`gate::policy`] lets
//!   callers do.
//! - [`forward`]: the upstream client and its own connection pool (TLS, egress proxy), header and
//!   `Location` rewriting, streaming body wrappers, the API's URLs in text bodies, pacing.
//! - [`record`]: one record per request, filled on the way and written once when the answer's
//!   body is done: the access line, the metrics, and the inspector's entry.
//!
//! Beside the path:
//! - [`config`]: TOML file and environment to a typed [`Config`]; every problem reported at once.
//! - [`token`]: token fetch (with the other domain as fallback), the pure refresh schedule, the
//!   refresher task, the lock-free store; also the fixed credential of basic mode.
//! - [`uem`]: UEM domain knowledge: the region table, the console-to-API host rule, the
//!   permission catalogue and the request-to-permission map.
//! - [`error`]: the proxy's own errors and their single status mapping; [`request_id`]: ids.
//! - [`tenants`]: the UEM environments served, each with its own token store and refresher, pacer,
//!   policy and forwarder, and which of them a request goes to (`/t/NAME/`, a tenant's own
//!   listener, or the default tenant).
//! - [`cache`]: the opt-in cache for reads, consulted between the policy and the forwarder.
//! - [`app`](mod@app): the shared state requests read, swapped whole by [`reload`] (SIGHUP, file
//!   changes); [`admin`]: `/_proxy/*`, the inspector's page and endpoints among them.
//! - [`check`]: the `check` command; [`healthcheck`]: the `healthcheck` command;
//!   [`telemetry`]: logging.
//! - [`sandbox`]: an offline simulated UEM tenant; [`demo`]: the sandbox and the proxy together.
//!
//! # Invariants
//! - Only the refresher tasks talk to the token services; requests read the token lock-free.
//! - A tenant's token is injected only by that tenant's forwarder, into requests to that tenant's
//!   API: tenants share nothing but the process.
//! - No credential is logged: the client secret, password and tenant code are `SecretString`s,
//!   injected headers are marked sensitive, and the token service's bodies never reach a log line.
//! - Request and response bodies stream; only request bodies of known size up to
//!   `replay_body_limit`, within one shared `replay_budget`, are held, so that a request rejected
//!   with 401 can be replayed once; and small text answers of known size, read whole for URL
//!   rewriting or UEM's `activityId`.
//! - No answer looks more complete than it is: a body that breaks before anything is sent fails
//!   the request (502/504); one that breaks after the status is out cuts the connection.
//! - Time limits inside bodies bound pauses, never lengths.
//! - No caller holds the proxy: caller connections stay below the open-file limit (idle ones give
//!   way to new callers), and a write to a caller that makes no progress closes its connection.
//! - Redirects are never followed; the upstream URL is the configured base plus the caller's
//!   path and query, so no request can be sent to another host.

pub mod admin;
pub mod app;
pub mod cache;
pub mod check;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gate;
pub mod healthcheck;
pub mod listen;
pub mod record;
pub mod reload;
pub mod request_id;
pub mod sandbox;
pub mod service;
pub mod telemetry;
pub mod tenants;
pub mod token;
pub mod uem;

use std::future::Future;

use app::App;
pub use config::Config;
pub use service::Service;

/// The HTTP client for the token service: rustls, no redirects ever followed (a redirect must not
/// carry the secret anywhere), keep-alive pooling. API requests go through [`forward::upstream`] instead.
pub fn http_client(config: &Config) -> Result<reqwest::Client, String> {
    token_client(config, forward::upstream::tls_config(config.ca_bundle.as_deref().map(Vec::as_slice))?)
}

/// The same, over a TLS configuration already built (and shared with the forwarding client).
pub fn token_client(config: &Config, tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("uem-proxy/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls);
    builder = match &config.egress {
        config::Egress::FromEnvironment => builder,
        config::Egress::Direct => builder.no_proxy(),
        config::Egress::Via(url) => builder.proxy(
            reqwest::Proxy::all(url.as_str()).map_err(|e| e.to_string())?.no_proxy(reqwest::NoProxy::from_env()),
        ),
    };
    builder.build().map_err(|e| e.to_string())
}

/// The application for `config`, serving callers who reach it at `local`. The tenants' token
/// refreshers stop when the last clone of it is dropped.
pub fn service(config: &Config, local: &config::Listen) -> std::io::Result<Service> {
    Ok(Service::new(App::new(config.clone(), local.clone())?))
}

/// Runs the proxy on an already bound listener until `shutdown` completes and in-flight
/// requests have drained (or the grace period is over). SIGHUP, and a change of the
/// configuration file, reload the configuration.
pub async fn run(
    config: Config,
    listener: impl Into<listen::Listener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = listener.into();
    let local = listener.local()?;
    let limits = listen::Limits {
        header_timeout: config.inbound.header_timeout,
        max_header_bytes: config.inbound.max_header_bytes,
        write_idle_timeout: config.inbound.body_idle_timeout,
        max_connections: listen::Limits::max_connections(config.inbound.max_connections),
    };
    let grace = config.shutdown_grace;
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration");
    }
    tracing::info!(listen = %local, "listening");
    for tenant in &config.tenants {
        tracing::info!(
            tenant = config.prefixed.then_some(tenant.name.as_str()),
            api_url = %config::mask_userinfo(tenant.api_url.as_str().trim_end_matches('/')),
            auth = tenant.auth.mode(),
            token_url = tenant.auth.oauth().map(|o| config::mask_userinfo(o.token_url.as_str())),
            principal = %tenant.auth.principal(),
            policy = if tenant.policy.is_open() { "open" } else { "restricted" },
            read_only = tenant.policy.read_only,
            "serving"
        );
    }
    let mut bound = vec![(listen::Bound::from(listener), None)];
    if let Some(tls) = &config.tls {
        let listener = tokio::net::TcpListener::bind(tls.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for HTTPS on {}: {e}", tls.listen)))?;
        tracing::info!(tls_listen = %listener.local_addr()?, "listening for HTTPS");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        bound.push((listen::Bound { listener: listener.into(), tls: Some(acceptor) }, None));
    }
    for tenant in &config.tenants {
        let Some(addr) = tenant.listen else { continue };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for tenant {} on {addr}: {e}", tenant.name))
        })?;
        let local = listener.local_addr()?;
        tracing::info!(tenant = %tenant.name, listen = %local, "listening for one tenant");
        bound.push((listen::Bound::from(listen::Listener::from(listener)), Some((tenant.name.clone(), local))));
    }
    let app = App::new(config, local)?;
    let reloader = tokio::spawn(reload::watch(app.clone()));
    let counts = app.metrics.connections.clone();
    let inspector = app.inspector.clone();
    // The inspector's event streams never end by themselves: they end at the shutdown, so their
    // connections drain like the others.
    let shutdown = async move {
        shutdown.await;
        inspector.close();
    };
    let bound = bound
        .into_iter()
        .map(|(bound, tenant)| {
            let service = match tenant {
                None => Service::new(app.clone()),
                Some((name, local)) => Service::for_tenant(app.clone(), &name, local),
            };
            (bound, service)
        })
        .collect();
    drop(app);
    listen::serve(bound, limits, counts, shutdown, grace).await;
    reloader.abort();
    Ok(())
}
