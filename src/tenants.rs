//! The UEM environments the proxy serves, each with its own token, refresher, pacer, policy and
//! upstream connections, and which of them a request goes to.
//!
//! Nothing is shared between tenants but the process: a tenant's token lives in its own store
//! and is injected only by its own forwarder, whose upstream is its own API, so no interleaving
//! of refreshes, 401 replays or reloads can send one tenant's token to another's API.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::config::{Auth, Config, TenantConfig};
use crate::forward::body::ReplayBudget;
use crate::forward::body_rewrite::Needles;
use crate::forward::pacer::Pacer;
use crate::forward::upstream::{Reach, UpstreamClient};
use crate::forward::{Forwarder, Route};
use crate::gate::policy::Policy;
use crate::token::{Credentials, TokenClient, Tokens};

/// At most this many token requests at once to one token service, all tenants together.
pub const TOKEN_REQUESTS_AT_ONCE: usize = 8;

/// The limit on token requests at once, one per token service (scheme, host and port): a hundred
/// tenants starting together ask each service a few at a time, and tenants on a service that
/// hangs never hold up tenants on another.
#[derive(Clone, Default)]
pub struct TokenPermits(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>>);

impl TokenPermits {
    pub fn for_service(&self, token_url: &url::Url) -> Arc<Semaphore> {
        let mut services = self.0.lock().expect("not poisoned");
        let service = services.entry(token_url.origin().ascii_serialization());
        service.or_insert_with(|| Arc::new(Semaphore::new(TOKEN_REQUESTS_AT_ONCE))).clone()
    }
}

/// What a tenant's requests read from the configuration. Replaced whole on reload; a request
/// keeps the one it started with.
pub struct TenantSettings {
    pub policy: Policy,
    pub route: Route,
}

impl TenantSettings {
    fn new(config: &Config, tenant: &TenantConfig) -> TenantSettings {
        let upstream_base = tenant.api_url.as_str().trim_end_matches('/').to_owned();
        let route = Route {
            needles: Arc::new(Needles::new(&upstream_base)),
            upstream_origin: Route::origin(&upstream_base),
            upstream_base,
            upstream_path: tenant.api_url.path().trim_end_matches('/').to_owned(),
            upstream_timeout: config.upstream_timeout,
            token_wait: config.token_wait,
            replay_body_limit: config.replay_body_limit,
            rewrite_bodies: config.rewrite_bodies,
            max_body_bytes: config.inbound.max_body_bytes,
            body_idle_timeout: config.inbound.body_idle_timeout,
            tenant_code: tenant_header(tenant),
        };
        TenantSettings { policy: tenant.policy.clone(), route }
    }
}

/// The configured tenant code as a header value, marked sensitive.
fn tenant_header(tenant: &TenantConfig) -> Option<HeaderValue> {
    let mut header = HeaderValue::try_from(tenant.tenant_code.as_ref()?.expose_secret()).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// `Authorization: Basic …` for an on-premises administrator account.
pub fn basic_header(username: &str, password: &secrecy::SecretString) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose_secret()));
    let mut header = HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
    header.set_sensitive(true);
    header
}

/// What the tenants of one process share: the token service's HTTP client, the TLS settings,
/// the replay budget and the limits on token requests at once.
#[derive(Clone)]
pub struct Shared {
    pub client: reqwest::Client,
    pub tls: rustls::ClientConfig,
    pub replay_budget: ReplayBudget,
    pub token_permits: TokenPermits,
}

/// One running tenant.
pub struct Tenant {
    pub name: Arc<str>,
    pub forwarder: Forwarder,
    pub settings: ArcSwap<TenantSettings>,
    /// What it was started or last reloaded with.
    pub config: ArcSwap<TenantConfig>,
    /// The OAuth client's credentials, which a reload may replace; `None` in basic mode.
    credentials: Option<Arc<ArcSwap<Credentials>>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Tenant {
    /// A removed tenant's refresher stops once its last request in flight is answered.
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Tenant {
    /// Starts a tenant and its token refresher. `spread` in `[0, 1)` places its refreshes in the
    /// refresh window.
    pub fn start(config: &Config, tenant: &TenantConfig, shared: &Shared, spread: f64) -> std::io::Result<Tenant> {
        let reach = Reach { api_url: &tenant.api_url, egress: &config.egress, connect_timeout: config.connect_timeout };
        let upstream = UpstreamClient::new(reach, shared.tls.clone()).map_err(std::io::Error::other)?;
        let (tokens, refresher, credentials) = match &tenant.auth {
            Auth::OAuth(oauth) => {
                let credentials = Arc::new(ArcSwap::from_pointee(oauth.credentials()));
                let source = TokenClient {
                    http: shared.client.clone(),
                    credentials: credentials.clone(),
                    timeout: config.upstream_timeout,
                    permits: shared.token_permits.for_service(&oauth.token_url),
                    via: crate::forward::upstream::egress_for(&config.egress, oauth.token_url.as_str()),
                };
                let (tokens, refresher) = Tokens::start_spread(source, config.forced_refresh_interval, spread);
                (tokens, refresher, Some(credentials))
            }
            Auth::Basic { username, password } => {
                let tokens = Tokens::fixed(basic_header(username, password));
                (tokens, tokio::spawn(async {}), None)
            }
        };
        for warning in tenant.policy.warnings() {
            tracing::warn!(tenant = %tenant.name, %warning, "policy entry has no effect");
        }
        let pacer = Arc::new(ArcSwap::from_pointee(Pacer::new(tenant.pacer)));
        let forwarder = Forwarder { upstream, replay_budget: shared.replay_budget.clone(), tokens, pacer };
        Ok(Tenant {
            name: Arc::from(tenant.name.as_str()),
            forwarder,
            settings: ArcSwap::from_pointee(TenantSettings::new(config, tenant)),
            config: ArcSwap::from_pointee(tenant.clone()),
            credentials,
            refresher,
        })
    }

    /// Whether `new` can be applied to this running tenant, rather than a new one started: the
    /// same authentication mode and credentials. New credentials get a tenant of their own (see
    /// [`Tenant::start_checked`]), so that a request routed before a reload, with the old API URL,
    /// never carries a token of the new credentials, nor one made after it the old.
    pub fn can_take(&self, new: &TenantConfig) -> bool {
        match (&new.auth, &self.credentials) {
            (Auth::OAuth(oauth), Some(current)) => oauth.credentials().same_as(&current.load()),
            (Auth::Basic { username, password }, None) => {
                self.forwarder.tokens.current().is_some_and(|t| *t.header() == basic_header(username, password))
            }
            _ => false,
        }
    }

    /// Starts a tenant for credentials that a reload changed, and waits for its first token; a
    /// tenant whose credentials obtain none is not started. `running`: the tenant it replaces,
    /// whose hold after a 429 it keeps when the API is the same.
    pub async fn start_checked(
        config: &Config,
        tenant: &TenantConfig,
        shared: &Shared,
        spread: f64,
        running: &Tenant,
    ) -> Result<Tenant, String> {
        let started = Tenant::start(config, tenant, shared, spread).map_err(|e| e.to_string())?;
        let wait = config.upstream_timeout + std::time::Duration::from_secs(1);
        if let Err(error) = started.forwarder.tokens.first_outcome(wait).await {
            return Err(format!("the new credentials did not obtain a token ({error})"));
        }
        if running.config.load().api_url == tenant.api_url {
            let pacer = running.forwarder.pacer.load().with_settings(tenant.pacer);
            started.forwarder.pacer.store(Arc::new(pacer));
        }
        Ok(started)
    }

    /// Applies `new`, whose credentials are this tenant's (see [`Tenant::can_take`]), to this
    /// tenant. Returns what changed.
    pub fn apply(&self, config: &Config, new: &TenantConfig) -> Vec<String> {
        let old = self.config.load_full();
        let mut changes = Vec::new();
        if old.pacer != new.pacer {
            let pacer = self.forwarder.pacer.load().with_settings(new.pacer);
            self.forwarder.pacer.store(Arc::new(pacer));
            changes.push("pacing".to_owned());
        }
        let reloadable = [
            ("api_url", old.api_url != new.api_url),
            ("tenant_code", tenant_header(&old) != tenant_header(new)),
            ("policy", old.policy != new.policy),
        ];
        changes.extend(reloadable.iter().filter(|(_, changed)| *changed).map(|(name, _)| name.to_string()));
        for warning in new.policy.warnings() {
            tracing::warn!(tenant = %new.name, %warning, "policy entry has no effect");
        }
        self.settings.store(Arc::new(TenantSettings::new(config, new)));
        self.config.store(Arc::new(new.clone()));
        changes
    }
}

/// The tenants as one value, replaced whole when a reload adds or removes one.
pub struct Tenants {
    /// Sorted by name.
    pub list: Vec<Arc<Tenant>>,
    /// The tenant of paths without a prefix.
    pub default: Option<Arc<Tenant>>,
    /// Whether `/t/NAME/` prefixes select tenants (a configuration with `[tenants]`).
    pub prefixed: bool,
}

/// Where a request goes: its tenant, the path it has there and the prefix that was removed.
pub struct Picked<'a> {
    pub tenant: &'a Arc<Tenant>,
    pub path: &'a str,
    pub prefix: &'a str,
}

impl Tenants {
    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.list.iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The names, for error messages: `prod, uat`.
    pub fn names(&self) -> String {
        self.list.iter().map(|t| &*t.name).collect::<Vec<_>>().join(", ")
    }

    /// The tenant `path` goes to. `/t/NAME/…` names one when tenants are prefixed; any other
    /// path goes to the default tenant, if there is one.
    pub fn pick<'a>(&'a self, path: &'a str) -> Option<Picked<'a>> {
        if self.prefixed
            && let Some((name, prefix, rest)) = split_prefix(path)
        {
            return self.get(name).map(|tenant| Picked { tenant, path: rest, prefix });
        }
        self.default.as_ref().map(|tenant| Picked { tenant, path, prefix: "" })
    }
}

/// `/t/NAME/rest` as (`NAME`, `/t/NAME`, `/rest`); `/t/NAME` alone has the path `/`. The `t` is
/// matched in either case, as the API's server matches paths. `None` when the first segment is
/// not `t`.
pub fn split_prefix(path: &str) -> Option<(&str, &str, &str)> {
    let after = path.strip_prefix('/')?;
    let (first, rest) = match after.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (after, None),
    };
    if !first.eq_ignore_ascii_case("t") {
        return None;
    }
    let Some(rest) = rest else { return Some(("", path, "/")) };
    let name = rest.split('/').next().unwrap_or("");
    let prefix = &path[..3 + name.len()];
    let inner = &path[prefix.len()..];
    Some((name, prefix, if inner.is_empty() { "/" } else { inner }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_removed_and_the_rest_kept_byte_for_byte() {
        assert_eq!(split_prefix("/t/uat/api/mdm/devices/1"), Some(("uat", "/t/uat", "/api/mdm/devices/1")));
        assert_eq!(split_prefix("/T/uat/api"), Some(("uat", "/T/uat", "/api")));
        assert_eq!(split_prefix("/t/uat"), Some(("uat", "/t/uat", "/")));
        assert_eq!(split_prefix("/t/uat/"), Some(("uat", "/t/uat", "/")));
        assert_eq!(split_prefix("/t/"), Some(("", "/t/", "/")));
        assert_eq!(split_prefix("/t"), Some(("", "/t", "/")));
        assert_eq!(split_prefix("/t/a%2Fb/x"), Some(("a%2Fb", "/t/a%2Fb", "/x")));
        for other in ["/api/t/uat", "/tt/uat/api", "/", "", "t/uat/api", "/%74/uat/api"] {
            assert_eq!(split_prefix(other), None, "{other}");
        }
    }
}
