//! An offline stand-in for a Workspace ONE UEM SaaS tenant: a token service and an API on one
//! port, with seeded data, a role drawn from the permission catalogue, and an optional rate
//! limit. It lets scripts be developed without touching production, and every test here use a
//! realistic upstream.
//!
//! - `POST /connect/token`: the client-credentials grant (`auth`).
//! - `/api/…`: system info, devices (search, get, commands, delete), users, organization groups,
//!   smart groups, apps, and blob upload and download (`api`).

mod api;
mod auth;
mod blobs;
pub mod data;
mod reply;

use std::future::Future;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::HeaderMap;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::uem::permissions::{Access, Permission};

/// What the sandbox's OAuth client may do, in the catalogue's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every permission of the catalogue.
    Full,
    /// Everything but deletions and the Admins category: a typical automation role.
    Operator,
    /// Only the permissions the catalogue marks Read Only.
    ReadOnly,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(Role::Full),
            "operator" => Some(Role::Operator),
            "read-only" | "readonly" => Some(Role::ReadOnly),
            _ => None,
        }
    }

    pub fn allows(self, p: &Permission) -> bool {
        match self {
            Role::Full => true,
            Role::Operator => !(p.name.ends_with(" Delete") || p.category == "Admins"),
            Role::ReadOnly => p.access == Access::ReadOnly,
        }
    }
}

/// How to build a sandbox.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tenant's name when the sandbox plays several (its paths then start with `/NAME`).
    pub name: Option<String>,
    pub client_id: String,
    pub client_secret: SecretString,
    pub token_lifetime: Duration,
    /// API calls a second across all callers; `None` for no limit.
    pub rate_limit: Option<u32>,
    pub role: Role,
    pub devices: usize,
    pub seed: u64,
}

impl Options {
    /// The sandbox's documented defaults for these credentials.
    pub fn new(client_id: &str, client_secret: &str) -> Options {
        Options {
            name: None,
            client_id: client_id.to_owned(),
            client_secret: SecretString::from(client_secret.to_owned()),
            token_lifetime: Duration::from_secs(3600),
            rate_limit: None,
            role: Role::Operator,
            devices: 300,
            seed: 1,
        }
    }

    /// The options of tenant `name`, the `index`th of several: its own client (`NAME-client`,
    /// `NAME-secret`) and its own data (another seed); the rest as `self`.
    pub fn tenant(&self, name: &str, index: u64) -> Options {
        Options {
            name: Some(name.to_owned()),
            client_id: format!("{name}-client"),
            client_secret: SecretString::from(format!("{name}-secret")),
            seed: self.seed.wrapping_add(index),
            ..self.clone()
        }
    }
}

/// The running tenant's state.
pub struct Sandbox {
    name: Option<String>,
    auth: auth::Auth,
    rate_limit: Option<auth::RateLimit>,
    role: Role,
    tenant: RwLock<data::Tenant>,
    blobs: blobs::Blobs,
}

impl Sandbox {
    pub fn new(options: Options) -> io::Result<Arc<Sandbox>> {
        Ok(Arc::new(Sandbox {
            name: options.name,
            auth: auth::Auth::new(options.client_id, options.client_secret, options.token_lifetime),
            rate_limit: options.rate_limit.filter(|r| *r > 0).map(auth::RateLimit::new),
            role: options.role,
            tenant: RwLock::new(data::Tenant::seeded(options.seed, options.devices)),
            blobs: blobs::Blobs::new()?,
        }))
    }

    /// How many tokens the token service has issued.
    pub fn tokens_issued(&self) -> u64 {
        self.auth.grants.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The sandbox's routes: the token endpoint and the API.
pub fn router(sandbox: Arc<Sandbox>) -> Router {
    Router::new().route("/connect/token", post(token)).fallback(api::handle).with_state(sandbox)
}

async fn token(State(sb): State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    sb.auth.token_endpoint(&headers, &body)
}

/// Serves a sandbox on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, options: Options, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    serve_tenants(listener, vec![options], shutdown).await
}

/// Serves several sandbox tenants on one listener until `shutdown` completes: a named tenant's
/// token service and API are under `/NAME` (`/prod/connect/token`, `/prod/api/…`), an unnamed
/// one's at the root.
pub async fn serve_tenants(
    listener: TcpListener,
    tenants: Vec<Options>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut app = Router::new();
    for options in tenants {
        let name = options.name.clone();
        let tenant = router(Sandbox::new(options)?);
        app = match name {
            Some(name) => app.nest(&format!("/{name}"), tenant),
            None => app.merge(tenant),
        };
    }
    let limits = crate::listen::Limits {
        header_timeout: Duration::from_secs(30),
        max_header_bytes: 65536,
        write_idle_timeout: Duration::from_secs(30),
        max_connections: crate::listen::Limits::max_connections(None),
    };
    let bound = vec![(crate::listen::Listener::from(listener).into(), app)];
    let counts = Default::default();
    crate::listen::serve(bound, limits, counts, shutdown, Duration::from_secs(5)).await;
    Ok(())
}
