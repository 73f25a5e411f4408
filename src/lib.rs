//! uem-proxy: a reverse proxy that holds a Workspace ONE UEM OAuth client and lets local callers
//! use the tenant's REST API without any credential of their own.
//!
//! # Layout
//! - [`config`]: TOML file and environment to a typed [`Config`]; every problem reported at once.
//! - [`uem`]: UEM domain knowledge: the region table and the console-to-API host rule.
//! - [`token`]: token fetch, the pure refresh schedule, the refresher task, the lock-free store.
//! - [`proxy`]: the forwarding handler; [`rewrite`]: pure header and `Location` rules;
//!   [`body`]: streaming body wrappers.
//! - [`access_log`]: request ids and the one log event per request; [`admin`]: `/_proxy/*`.
//! - [`error`]: the proxy's own errors and their single status mapping.
//! - [`inbound`]: who may call (address, `Host`, web origin) and request limits; [`policy`]: what
//!   they may do, in the permission catalogue's terms; [`framing`]: the strict request-framing guard.
//! - [`server`]: TCP and Unix listeners, header limits, graceful shutdown; [`telemetry`]: logging.
//! - [`healthcheck`]: the `healthcheck` command for container images without an HTTP client.
//! - [`sandbox`]: an offline simulated UEM tenant; [`demo`]: the sandbox and the proxy together.
//! - [`uem`]: also the permission catalogue and the request-to-permission map.
//!
//! # Invariants
//! - Only the refresher task talks to the token service; requests read the token lock-free.
//! - No credential is logged: the client secret is a `SecretString`, the injected header is
//!   marked sensitive, and the token service's bodies never reach a log line.
//! - Request and response bodies stream; only bodies of known size up to `replay_body_limit` are
//!   held, so that a request rejected with 401 can be replayed once.
//! - Redirects are never followed; the upstream URL is the configured base plus the caller's
//!   path and query, so no request can be sent to another host.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod framing;
pub mod healthcheck;
pub mod inbound;
pub mod policy;
pub mod proxy;
pub mod rewrite;
pub mod sandbox;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod uem;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};

pub use config::Config;
use proxy::Forwarder;
use token::{TokenClient, Tokens};

/// The HTTP client for the token service and the API: rustls, no redirects ever followed (a
/// redirect must not carry the token or the secret anywhere), keep-alive pooling.
pub fn http_client(config: &Config) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("uem-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The whole application as one router, used by `run` and by tests alike.
pub fn router(forwarder: Arc<Forwarder>, checks: Arc<inbound::Checks>) -> Router {
    admin::routes()
        .fallback(proxy::handle)
        .with_state(forwarder)
        .layer(axum::middleware::from_fn_with_state(checks, inbound::middleware))
        .layer(axum::middleware::from_fn(access_log::middleware))
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            PROXY_AUTHORIZATION,
            COOKIE,
        ]))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
}

/// The application for `config`, serving callers who reach it at `local`, and the token
/// refresher it owns (the caller aborts it when done serving).
pub fn app(config: &Config, local: &config::Listen) -> std::io::Result<(Router, tokio::task::JoinHandle<()>)> {
    let client = http_client(config).map_err(std::io::Error::other)?;
    let source = TokenClient {
        http: client.clone(),
        url: config.token_url.clone(),
        client_id: config.client_id.clone(),
        client_secret: config.client_secret.clone(),
        timeout: config.upstream_timeout,
    };
    let (tokens, refresher) = Tokens::start(source, config.forced_refresh_interval);
    let checks = Arc::new(inbound::Checks::new(&config.inbound, local));
    let forwarder = Arc::new(Forwarder {
        client,
        tokens,
        upstream_base: config.api_url.as_str().trim_end_matches('/').to_owned(),
        listen: match local {
            config::Listen::Tcp(addr) => addr.to_string(),
            config::Listen::Unix(_) => "localhost".to_owned(),
        },
        policy: config.policy.clone(),
        upstream_timeout: config.upstream_timeout,
        token_wait: config.token_wait,
        replay_body_limit: config.replay_body_limit,
        max_body_bytes: config.inbound.max_body_bytes,
    });
    Ok((router(forwarder, checks), refresher))
}

/// Runs the proxy on an already bound listener until `shutdown` completes and in-flight
/// requests have drained (or the grace period is over).
pub async fn run(
    config: Config,
    listener: impl Into<server::Listener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = listener.into();
    let local = listener.local()?;
    let (app, refresher) = app(&config, &local)?;
    tracing::info!(
        listen = %local,
        api_url = %config.api_url.as_str().trim_end_matches('/'),
        token_url = %config.token_url,
        client_id = %config.client_id,
        policy = if config.policy.is_open() { "open" } else { "restricted" },
        read_only = config.policy.read_only,
        "listening"
    );
    let limits = server::Limits {
        header_timeout: config.inbound.header_timeout,
        max_header_bytes: config.inbound.max_header_bytes,
    };
    server::serve(listener, app, limits, shutdown, config.shutdown_grace).await;
    refresher.abort();
    Ok(())
}
