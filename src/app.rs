//! The running proxy's shared state: what every request reads (lock-free), and how a reload
//! replaces it without disturbing requests in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde_json::json;

use crate::cache::{Cache, CacheStats};
use crate::config::{Config, Listen};
use crate::forward::body::ReplayBudget;
use crate::gate::Checks;
use crate::record::inspect::Inspector;
use crate::record::metrics::{Metrics, TenantGauges};
use crate::tenants::{Shared, Tenant, Tenants};

pub use crate::tenants::basic_header;

/// What every request needs from the configuration besides its tenant's settings. Replaced
/// whole on reload; a request keeps the one it started with.
pub struct Settings {
    pub checks: Checks,
    /// The most pages one `/_proxy/all/` request fetches.
    pub max_pages: u32,
    /// The cache for reads, when configured, shared by the tenants (its keys start with the
    /// tenant's name); kept across reloads that leave `[cache]` alone.
    pub cache: Option<Arc<Cache>>,
}

impl Settings {
    fn new(config: &Config, checks: Checks, cache: Option<Arc<Cache>>) -> Settings {
        Settings { checks, max_pages: config.max_pages, cache }
    }
}

/// The cache `config` asks for: `previous`'s when its settings are the same, else a new, empty one.
fn cache_for(config: &Config, stats: &Arc<CacheStats>, previous: Option<&Settings>) -> Option<Arc<Cache>> {
    let settings = config.cache.clone()?;
    match previous.and_then(|p| p.cache.clone()) {
        Some(cache) if *cache.settings() == settings => Some(cache),
        _ => Some(Arc::new(Cache::new(settings, stats.clone()))),
    }
}

/// The last reload, for `/_proxy/status`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub at: Option<SystemTime>,
    pub ok: bool,
    pub message: String,
}

pub struct App {
    /// What the tenants share: the token service's client, TLS, the replay budget.
    shared: Shared,
    pub tenants: ArcSwap<Tenants>,
    pub settings: ArcSwap<Settings>,
    pub metrics: Arc<Metrics>,
    /// The last exchanges, for `/_proxy/ui`.
    pub inspector: Arc<Inspector>,
    /// The cache's counters, kept across the caches reloads make.
    pub cache_stats: Arc<CacheStats>,
    pub config: ArcSwap<Config>,
    /// Where callers reach the proxy.
    pub local: Listen,
    /// The tenants' own listeners, bound at start (a reload does not move them).
    tenant_listeners: Vec<std::net::SocketAddr>,
    pub started: SystemTime,
    pub last_reload: Mutex<ReloadStatus>,
    /// Reloads one at a time, so that two cannot start the same new tenant twice.
    reloading: tokio::sync::Mutex<()>,
}

/// Where in the refresh window tenant `index` of `count` refreshes: evenly spaced.
fn spread(index: usize, count: usize) -> f64 {
    if count <= 1 { 0.0 } else { index as f64 / count as f64 }
}

impl App {
    /// Builds the state and starts every tenant's token refresher; they stop when the app is
    /// dropped.
    pub fn new(config: Config, local: Listen) -> std::io::Result<Arc<App>> {
        let tls = crate::forward::upstream::tls_config(config.ca_bundle.as_deref().map(Vec::as_slice))
            .map_err(std::io::Error::other)?;
        let client = crate::token_client(&config, tls.clone()).map_err(std::io::Error::other)?;
        let shared = Shared {
            client,
            tls,
            replay_budget: ReplayBudget::new(config.replay_budget),
            token_permits: crate::tenants::TokenPermits::default(),
        };
        let count = config.tenants.len();
        let mut list = Vec::with_capacity(count);
        for (i, tenant) in config.tenants.iter().enumerate() {
            list.push(Arc::new(Tenant::start(&config, tenant, &shared, spread(i, count))?));
        }
        let tenants = tenants(list, &config);
        let cache_stats = Arc::new(CacheStats::default());
        let metrics = Arc::new(Metrics::new(gauges(&tenants), cache_stats.clone()));
        let inspector = Inspector::new(config.inspect, tenant_secrets(&tenants));
        let tenant_listeners: Vec<_> = config.tenants.iter().filter_map(|t| t.listen).collect();
        let checks = checks(&config, &local, &tenant_listeners);
        let app = App {
            shared,
            tenants: ArcSwap::from_pointee(tenants),
            settings: ArcSwap::from_pointee(Settings::new(&config, checks, cache_for(&config, &cache_stats, None))),
            metrics,
            inspector,
            cache_stats,
            config: ArcSwap::from_pointee(config),
            local,
            tenant_listeners,
            started: SystemTime::now(),
            last_reload: Mutex::new(ReloadStatus::default()),
            reloading: tokio::sync::Mutex::new(()),
        };
        Ok(Arc::new(app))
    }

    /// Applies a newly loaded configuration: tenants are added, changed and removed, each on its
    /// own, so that requests to the others are not disturbed. A tenant whose new credentials do
    /// not obtain a token keeps its old ones, and the reload is reported as failed. Returns what
    /// changed.
    pub async fn apply(&self, new: Config) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config.load_full();
        if old.prefixed != new.prefixed {
            return Err("adding or removing the [tenants] table needs a restart".to_owned());
        }
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        let current = self.tenants.load_full();
        let count = new.tenants.len();
        let mut list = Vec::with_capacity(count);
        for (i, tenant) in new.tenants.iter().enumerate() {
            let name = &tenant.name;
            let label = |change: &str| if new.prefixed { format!("{name}: {change}") } else { change.to_owned() };
            // Listeners are bound at start: a tenant's own, added or moved, waits for a restart.
            if current
                .get(name)
                .map_or(tenant.listen.is_some(), |running| running.config.load().listen != tenant.listen)
            {
                tracing::warn!(tenant = %name, setting = "listen", "changed, but takes effect only after a restart");
            }
            match current.get(name) {
                Some(running) if running.can_take(tenant) => {
                    changes.extend(running.apply(&new, tenant).iter().map(|c| label(c)));
                    list.push(running.clone());
                }
                Some(running) if !new.prefixed && running.config.load().auth.mode() != tenant.auth.mode() => {
                    errors.push("changing UEM_AUTH_MODE needs a restart".to_owned());
                    list.push(running.clone());
                }
                // New credentials or another authentication mode: a tenant of its own, started
                // anew; the old one finishes the requests it has with its own token and API.
                Some(running) => {
                    let mode_changed = running.config.load().auth.mode() != tenant.auth.mode();
                    match Tenant::start_checked(&new, tenant, &self.shared, spread(i, count), running).await {
                        Ok(started) => {
                            let change = if mode_changed {
                                "restarted (authentication mode changed)"
                            } else {
                                "credentials (a new token is in use)"
                            };
                            changes.push(label(change));
                            list.push(Arc::new(started));
                        }
                        Err(error) => {
                            errors.push(label(&error));
                            list.push(running.clone());
                        }
                    }
                }
                None => match Tenant::start(&new, tenant, &self.shared, spread(i, count)) {
                    Ok(started) => {
                        changes.push(format!("{name}: added"));
                        list.push(Arc::new(started));
                    }
                    Err(error) => errors.push(format!("{name}: {error}")),
                },
            }
        }
        if !new.prefixed && !errors.is_empty() {
            // One tenant: nothing changes unless everything does, as before tenants existed.
            return Err(errors.join("; "));
        }
        for gone in current.list.iter().filter(|t| !new.tenants.iter().any(|n| *n.name == *t.name)) {
            changes.push(format!("{}: removed", gone.name));
        }
        let restart_only = [
            ("listen", old.listen != new.listen),
            ("log_format", old.log_format != new.log_format),
            ("header_timeout", old.inbound.header_timeout != new.inbound.header_timeout),
            ("max_header_bytes", old.inbound.max_header_bytes != new.inbound.max_header_bytes),
            ("connect_timeout", old.connect_timeout != new.connect_timeout),
            ("egress_proxy", old.egress != new.egress),
            ("ca_bundle", old.ca_bundle.as_ref().map(|c| c.len()) != new.ca_bundle.as_ref().map(|c| c.len())),
            ("forced_refresh_interval", old.forced_refresh_interval != new.forced_refresh_interval),
            ("shutdown_grace", old.shutdown_grace != new.shutdown_grace),
            ("max_connections", old.inbound.max_connections != new.inbound.max_connections),
            // The write side is fixed per connection at accept; the read side follows the reload.
            ("body_idle_timeout (writes to callers)", old.inbound.body_idle_timeout != new.inbound.body_idle_timeout),
            ("replay_budget", old.replay_budget != new.replay_budget),
        ];
        for (name, changed) in restart_only {
            if changed {
                tracing::warn!(setting = name, "changed, but takes effect only after a restart");
            }
        }
        let reloadable = [
            ("callers and limits", old.inbound != new.inbound),
            ("upstream_timeout", old.upstream_timeout != new.upstream_timeout),
            ("token_wait", old.token_wait != new.token_wait),
            ("replay_body_limit", old.replay_body_limit != new.replay_body_limit),
            ("rewrite_bodies", old.rewrite_bodies != new.rewrite_bodies),
            ("default_tenant", old.default_tenant != new.default_tenant),
            ("inspect", old.inspect != new.inspect),
            ("max_pages", old.max_pages != new.max_pages),
            ("cache (emptied)", old.cache != new.cache),
        ];
        self.inspector.configure(new.inspect);
        changes.extend(reloadable.iter().filter(|(_, changed)| *changed).map(|(name, _)| name.to_string()));
        let tenants = tenants(list, &new);
        self.metrics.set_tenants(gauges(&tenants));
        self.inspector.set_tenants(tenant_secrets(&tenants));
        self.tenants.store(Arc::new(tenants));
        let cache = cache_for(&new, &self.cache_stats, Some(&self.settings.load()));
        let checks = checks(&new, &self.local, &self.tenant_listeners);
        self.settings.store(Arc::new(Settings::new(&new, checks, cache)));
        self.config.store(Arc::new(new));
        if errors.is_empty() { Ok(changes) } else { Err(errors.join("; ")) }
    }

    /// Loads the configuration again and applies it; a failure keeps the running one.
    pub async fn reload(&self, trigger: &str) {
        let result = match self.config.load().reload() {
            Ok(config) => {
                for warning in &config.warnings {
                    tracing::warn!(trigger, %warning, "configuration");
                }
                self.apply(config).await
            }
            Err(e) => Err(e.0.join("; ")),
        };
        let status = match &result {
            Ok(changes) => {
                tracing::info!(trigger, changes = %changes.join(", "), "configuration reloaded");
                ReloadStatus { at: Some(SystemTime::now()), ok: true, message: changes.join(", ") }
            }
            Err(error) => {
                tracing::error!(trigger, %error, "reload refused; the running configuration stays");
                ReloadStatus { at: Some(SystemTime::now()), ok: false, message: error.clone() }
            }
        };
        *self.last_reload.lock().expect("not poisoned") = status;
    }

    /// The proxy's state for people and scripts: never the token or the secret. `only`: on a
    /// tenant's own listener, that tenant alone, as if it were the only one.
    pub fn status(&self, only: Option<&str>) -> serde_json::Value {
        let config = self.config.load();
        let all = self.tenants.load();
        let tenants = match only {
            Some(name) => &Tenants {
                list: all.get(name).into_iter().cloned().collect(),
                default: all.get(name).cloned(),
                prefixed: all.prefixed,
            },
            None => &**all,
        };
        let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let reload = self.last_reload.lock().expect("not poisoned").clone();
        let each: BTreeMap<&str, serde_json::Value> =
            tenants.list.iter().map(|t| (&*t.name, tenant_status(t))).collect();
        let mut status = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": time(Some(self.started)),
            "listen": self.local.to_string(),
            "default_tenant": tenants.default.as_ref().map(|t| &*t.name),
            "tenants": each,
            "replay_buffers": {
                "held_bytes": self.shared.replay_budget.held(),
                "budget_bytes": self.shared.replay_budget.total(),
            },
            "inspector": self.inspector.status(only),
            "config": {
                "file": config.config_file.as_ref().map(|p| p.display().to_string()),
                "last_reload": reload.at.map(|at| json!({ "at": time(Some(at)), "ok": reload.ok, "message": reload.message })),
            },
        });
        if only.is_some() {
            // The whole proxy's: what a reload did names other tenants, and the bodies held for
            // replay count theirs.
            if let Some(reload) = status["config"]["last_reload"].as_object_mut() {
                reload.remove("message");
            }
            if let Some(fields) = status.as_object_mut() {
                fields.remove("replay_buffers");
            }
        }
        // The primary tenant's fields at the top too, where scripts written for one tenant read them.
        let primary = tenants.default.as_ref().or(tenants.list.first());
        if let Some(primary) = primary
            && let Some(serde_json::Value::Object(own)) = status["tenants"].get(&*primary.name).cloned()
            && let Some(fields) = status.as_object_mut()
        {
            for (key, value) in own {
                fields.entry(key).or_insert(value);
            }
        }
        status
    }
}

/// Who may call: tenants' own listeners are named in `Host` like the shared one.
fn checks(config: &Config, local: &Listen, tenant_listeners: &[std::net::SocketAddr]) -> Checks {
    Checks::new(&config.inbound, local).with_listeners(tenant_listeners.iter().copied())
}

/// The tenants in order, with the default one found.
fn tenants(mut list: Vec<Arc<Tenant>>, config: &Config) -> Tenants {
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let default = config.default_tenant.as_deref().and_then(|d| list.iter().find(|t| &*t.name == d).cloned());
    Tenants { list, default, prefixed: config.prefixed }
}

/// What the inspector hides: each tenant's tokens, its code, and its client secret or password.
fn tenant_secrets(tenants: &Tenants) -> Vec<crate::record::inspect::TenantSecrets> {
    let of = |t: &Arc<Tenant>| {
        let config = t.config.load();
        let auth = match &config.auth {
            crate::config::Auth::OAuth(oauth) => oauth.client_secret.clone(),
            crate::config::Auth::Basic { password, .. } => password.clone(),
        };
        crate::record::inspect::TenantSecrets {
            tenant: tenants.prefixed.then(|| t.name.clone()),
            tokens: t.forwarder.tokens.clone(),
            secrets: config.tenant_code.clone().into_iter().chain([auth]).collect(),
        }
    };
    tenants.list.iter().map(of).collect()
}

fn gauges(tenants: &Tenants) -> Vec<TenantGauges> {
    tenants
        .list
        .iter()
        .map(|t| TenantGauges {
            name: tenants.prefixed.then(|| t.name.clone()),
            tokens: t.forwarder.tokens.clone(),
            pacer: t.forwarder.pacer.clone(),
        })
        .collect()
}

/// One tenant's upstream, token and pacer, for `/_proxy/status`.
fn tenant_status(tenant: &Tenant) -> serde_json::Value {
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let own = tenant.config.load();
    let tokens = &tenant.forwarder.tokens;
    let stats = tokens.stats();
    let token = tokens.current().map(|t| {
        let left = t.usable_until().saturating_duration_since(tokio::time::Instant::now());
        json!({
            "generation": t.generation(),
            "usable": t.is_usable(),
            "usable_for_s": left.as_secs(),
            "usable_until": time(Some(SystemTime::now() + left)),
        })
    });
    let pacer = tenant.forwarder.pacer.load();
    let settings = pacer.settings();
    json!({
        "upstream": own.api_url.as_str().trim_end_matches('/'),
        "auth_mode": own.auth.mode(),
        "token_url": own.auth.oauth().map(|o| o.token_url.as_str()),
        "principal": own.auth.principal(),
        "tenant_listen": own.listen.map(|l| l.to_string()),
        "token": {
            "current": token,
            "last_refresh": time(stats.last_refresh),
            "refreshes": stats.refreshed,
            "failures": stats.failed,
            "consecutive_failures": stats.consecutive_failures,
            "last_error": stats.last_error.as_ref().map(|(at, e)| json!({ "at": time(Some(*at)), "error": e })),
        },
        "pacer": {
            "max_concurrent": settings.max_concurrent,
            "rate_per_s": settings.rate,
            "max_wait_s": settings.max_wait.as_secs_f64(),
            "waiting": pacer.waiting(),
            "held_after_429_s": pacer.held_for().as_secs_f64(),
        },
        "policy": if own.policy.is_open() { "open" } else { "restricted" },
        "read_only": own.policy.read_only,
    })
}
