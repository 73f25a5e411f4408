//! uem-proxy: a reverse proxy that holds a Workspace ONE UEM OAuth client and lets local callers
//! use the tenant's REST API without any credential of their own.
//!
//! # Layout
//! - [`config`]: TOML file and environment to a typed [`Config`]; every problem reported at once.
//! - [`uem`]: UEM domain knowledge: the region table, the console-to-API host rule, the
//!   permission catalogue and the request-to-permission map.
//! - [`token`]: token fetch (with the other domain as fallback), the pure refresh schedule, the
//!   refresher task, the lock-free store; also the fixed credential of basic mode.
//! - [`app`](mod@app): the shared state requests read, swapped whole by [`reload`] (SIGHUP, file changes).
//! - [`proxy`]: the forwarding handler; [`upstream`]: the client it forwards with (TLS, HTTP/2,
//!   egress proxy) over [`pool`]'s kept-alive connections; [`rewrite`]: pure header, path and
//!   `Location` rules; [`body`]: streaming body wrappers; [`body_rewrite`]: the API's URLs inside
//!   text bodies.
//! - [`access_log`]: request ids and the one log event per request; [`metrics`]: Prometheus;
//!   [`admin`]: `/_proxy/*`.
//! - [`error`]: the proxy's own errors and their single status mapping.
//! - [`inbound`]: who may call (address, `Host`, web origin) and request limits; [`policy`]: what
//!   they may do, in the permission catalogue's terms; [`framing`]: the strict request-framing guard.
//! - [`pacer`]: concurrency, rate and 429 pacing of upstream requests.
//! - [`server`]: TCP, Unix and HTTPS ([`tls`]) listeners, header limits, the connection cap,
//!   stalled-write timeouts, graceful shutdown;
//!   [`telemetry`]: logging.
//! - [`check`]: the `check` command; [`healthcheck`]: the `healthcheck` command.
//! - [`sandbox`]: an offline simulated UEM tenant; [`demo`]: the sandbox and the proxy together.
//!
//! # Invariants
//! - Only the refresher task talks to the token service; requests read the token lock-free.
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

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod body_rewrite;
pub mod check;
pub mod config;
pub mod demo;
pub mod error;
pub mod framing;
pub mod healthcheck;
pub mod inbound;
pub mod metrics;
pub mod pacer;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod sandbox;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod uem;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};

use app::App;
pub use config::Config;

/// The HTTP client for the token service: rustls, no redirects ever followed (a redirect must not
/// carry the secret anywhere), keep-alive pooling. API requests go through [`upstream`] instead.
pub fn http_client(config: &Config) -> Result<reqwest::Client, String> {
    token_client(config, upstream::tls_config(config)?)
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

/// The whole application as one router, used by `run` and by tests alike.
pub fn router(app: Arc<App>) -> Router {
    let routes = admin::routes()
        .fallback(proxy::handle)
        .layer(axum::middleware::from_fn_with_state(app.clone(), inbound::middleware))
        .layer(axum::middleware::from_fn_with_state(app.clone(), access_log::middleware))
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
        .with_state(app);
    // Around the whole router, not its routes: the method is made canonical before anything,
    // routing included, looks at it.
    Router::new().fallback_service(routes).layer(axum::middleware::map_request(inbound::canonical_method))
}

/// The application for `config`, serving callers who reach it at `local`, and the token
/// refresher it owns (the caller aborts it when done serving).
pub fn app(config: &Config, local: &config::Listen) -> std::io::Result<(Router, tokio::task::JoinHandle<()>)> {
    let (app, refresher) = App::new(config.clone(), local.clone())?;
    Ok((router(app), refresher))
}

/// Runs the proxy on an already bound listener until `shutdown` completes and in-flight
/// requests have drained (or the grace period is over). SIGHUP, and a change of the
/// configuration file, reload the configuration.
pub async fn run(
    config: Config,
    listener: impl Into<server::Listener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = listener.into();
    let local = listener.local()?;
    let limits = server::Limits {
        header_timeout: config.inbound.header_timeout,
        max_header_bytes: config.inbound.max_header_bytes,
        write_idle_timeout: config.inbound.body_idle_timeout,
        max_connections: server::Limits::max_connections(config.inbound.max_connections),
    };
    let grace = config.shutdown_grace;
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration");
    }
    tracing::info!(
        listen = %local,
        api_url = %config::mask_userinfo(config.api_url.as_str().trim_end_matches('/')),
        auth = config.auth.mode(),
        token_url = config.auth.oauth().map(|o| config::mask_userinfo(o.token_url.as_str())),
        principal = %config.auth.principal(),
        policy = if config.policy.is_open() { "open" } else { "restricted" },
        read_only = config.policy.read_only,
        "listening"
    );
    let mut bound = vec![server::Bound::from(listener)];
    if let Some(tls) = &config.tls {
        let listener = tokio::net::TcpListener::bind(tls.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for HTTPS on {}: {e}", tls.listen)))?;
        tracing::info!(tls_listen = %listener.local_addr()?, "listening for HTTPS");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        bound.push(server::Bound { listener: listener.into(), tls: Some(acceptor) });
    }
    let (app, refresher) = App::new(config, local)?;
    let reloader = tokio::spawn(reload::watch(app.clone()));
    let counts = app.metrics.connections.clone();
    server::serve(bound, router(app), limits, counts, shutdown, grace).await;
    reloader.abort();
    refresher.abort();
    Ok(())
}
