//! The running proxy's shared state: what every request reads (lock-free), and how a reload
//! replaces it without disturbing requests in flight.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde_json::json;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::cache::{Cache, CacheStats};
use crate::config::{Auth, Config, Listen};
use crate::forward::body::ReplayBudget;
use crate::forward::pacer::Pacer;
use crate::forward::upstream::{Reach, UpstreamClient};
use crate::forward::{Forwarder, Route};
use crate::gate::Checks;
use crate::gate::policy::Policy;
use crate::record::metrics::Metrics;
use crate::token::{Credentials, TokenClient, Tokens};

/// What a request needs from the configuration. Replaced whole on reload; a request keeps the
/// one it started with.
pub struct Settings {
    pub checks: Checks,
    pub policy: Policy,
    pub route: Route,
    /// The most pages one `/_proxy/all/` request fetches.
    pub max_pages: u32,
    /// The cache for reads, when configured; kept across reloads that leave `[cache]` alone.
    pub cache: Option<Arc<Cache>>,
}

impl Settings {
    fn new(config: &Config, local: &Listen, cache: Option<Arc<Cache>>) -> Settings {
        let route = Route {
            upstream_base: config.api_url.as_str().trim_end_matches('/').to_owned(),
            upstream_path: config.api_url.path().trim_end_matches('/').to_owned(),
            upstream_timeout: config.upstream_timeout,
            token_wait: config.token_wait,
            replay_body_limit: config.replay_body_limit,
            rewrite_bodies: config.rewrite_bodies,
            max_body_bytes: config.inbound.max_body_bytes,
            body_idle_timeout: config.inbound.body_idle_timeout,
            tenant_code: tenant_header(config),
        };
        let (checks, policy, max_pages) =
            (Checks::new(&config.inbound, local), config.policy.clone(), config.max_pages);
        Settings { checks, policy, route, max_pages, cache }
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

/// The configured tenant code as a header value, marked sensitive.
fn tenant_header(config: &Config) -> Option<HeaderValue> {
    let mut header = HeaderValue::try_from(config.tenant_code.as_ref()?.expose_secret()).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// The last reload, for `/_proxy/status`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub at: Option<SystemTime>,
    pub ok: bool,
    pub message: String,
}

pub struct App {
    /// For the token service.
    pub client: reqwest::Client,
    /// For API requests.
    pub forwarder: Forwarder,
    /// The OAuth client's credentials, which a reload may replace; `None` in basic mode.
    credentials: Option<Arc<ArcSwap<Credentials>>>,
    pub settings: ArcSwap<Settings>,
    pub metrics: Arc<Metrics>,
    /// The cache's counters, kept across the caches reloads make.
    pub cache_stats: Arc<CacheStats>,
    pub config: ArcSwap<Config>,
    /// Where callers reach the proxy.
    pub local: Listen,
    pub started: SystemTime,
    pub last_reload: Mutex<ReloadStatus>,
}

/// `Authorization: Basic …` for an on-premises administrator account.
pub fn basic_header(username: &str, password: &SecretString) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose_secret()));
    let mut header = HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
    header.set_sensitive(true);
    header
}

/// Logs the policy's entries that allow or deny nothing, at start and on every reload, so that an
/// administrator does not believe something is denied that is not.
fn warn_about_policy(policy: &Policy) {
    for warning in policy.warnings() {
        tracing::warn!(%warning, "policy entry has no effect");
    }
}

impl App {
    /// Builds the state and starts the token refresher, whose handle the caller owns.
    pub fn new(config: Config, local: Listen) -> std::io::Result<(Arc<App>, tokio::task::JoinHandle<()>)> {
        let tls = crate::forward::upstream::tls_config(config.ca_bundle.as_deref().map(Vec::as_slice))
            .map_err(std::io::Error::other)?;
        let client = crate::token_client(&config, tls.clone()).map_err(std::io::Error::other)?;
        let reach = Reach { api_url: &config.api_url, egress: &config.egress, connect_timeout: config.connect_timeout };
        let upstream = UpstreamClient::new(reach, tls).map_err(std::io::Error::other)?;
        let (tokens, refresher, credentials) = match &config.auth {
            Auth::OAuth(oauth) => {
                let credentials = Arc::new(ArcSwap::from_pointee(oauth.credentials()));
                let timeout = config.upstream_timeout;
                let source = TokenClient { http: client.clone(), credentials: credentials.clone(), timeout };
                let (tokens, refresher) = Tokens::start(source, config.forced_refresh_interval);
                (tokens, refresher, Some(credentials))
            }
            Auth::Basic { username, password } => {
                let tokens = Tokens::fixed(basic_header(username, password));
                (tokens, tokio::spawn(async {}), None)
            }
        };
        warn_about_policy(&config.policy);
        let pacer = Arc::new(ArcSwap::from_pointee(Pacer::new(config.pacer)));
        let cache_stats = Arc::new(CacheStats::default());
        let metrics = Arc::new(Metrics::new(tokens.clone(), pacer.clone(), cache_stats.clone()));
        let listen_host = match &local {
            Listen::Tcp(addr) => addr.to_string(),
            Listen::Unix(_) => "localhost".to_owned(),
        };
        let forwarder =
            Forwarder { upstream, replay_budget: ReplayBudget::new(config.replay_budget), tokens, pacer, listen_host };
        let app = App {
            client,
            forwarder,
            credentials,
            settings: ArcSwap::from_pointee(Settings::new(&config, &local, cache_for(&config, &cache_stats, None))),
            metrics,
            cache_stats,
            config: ArcSwap::from_pointee(config),
            local,
            started: SystemTime::now(),
            last_reload: Mutex::new(ReloadStatus::default()),
        };
        Ok((Arc::new(app), refresher))
    }

    /// Applies a newly loaded configuration. New credentials must first win a token, which then
    /// replaces the old one; if they do not, nothing changes. Returns what changed.
    pub async fn apply(&self, new: Config) -> Result<Vec<String>, String> {
        let old = self.config.load_full();
        let mut changes = Vec::new();
        match (&new.auth, &self.credentials) {
            (Auth::OAuth(oauth), Some(current)) => {
                let new_credentials = oauth.credentials();
                if !new_credentials.same_as(&current.load()) {
                    let grant = crate::token::request(&self.client, &new_credentials, new.upstream_timeout)
                        .await
                        .map_err(|e| format!("the new credentials did not obtain a token ({e})"))?;
                    if !self.forwarder.tokens.install(&grant) {
                        return Err("the token obtained with the new credentials cannot be used".to_owned());
                    }
                    current.store(Arc::new(new_credentials));
                    changes.push("credentials (a new token is in use)".to_owned());
                }
            }
            (Auth::Basic { username, password }, None) => {
                let header = basic_header(username, password);
                if self.forwarder.tokens.current().is_none_or(|t| t.header() != header) {
                    self.forwarder.tokens.set_fixed(header);
                    changes.push("credentials".to_owned());
                }
            }
            _ => return Err("changing UEM_AUTH_MODE needs a restart".to_owned()),
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
        if old.pacer != new.pacer {
            let pacer = self.forwarder.pacer.load().with_settings(new.pacer);
            self.forwarder.pacer.store(Arc::new(pacer));
            changes.push("pacing".to_owned());
        }
        let reloadable = [
            ("api_url", old.api_url != new.api_url),
            ("tenant_code", tenant_header(&old) != tenant_header(&new)),
            ("policy", old.policy != new.policy),
            ("callers and limits", old.inbound != new.inbound),
            ("upstream_timeout", old.upstream_timeout != new.upstream_timeout),
            ("token_wait", old.token_wait != new.token_wait),
            ("replay_body_limit", old.replay_body_limit != new.replay_body_limit),
            ("rewrite_bodies", old.rewrite_bodies != new.rewrite_bodies),
            ("max_pages", old.max_pages != new.max_pages),
            ("cache (emptied)", old.cache != new.cache),
        ];
        changes.extend(reloadable.iter().filter(|(_, changed)| *changed).map(|(name, _)| name.to_string()));
        warn_about_policy(&new.policy);
        let cache = cache_for(&new, &self.cache_stats, Some(&self.settings.load()));
        self.settings.store(Arc::new(Settings::new(&new, &self.local, cache)));
        self.config.store(Arc::new(new));
        Ok(changes)
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

    /// The proxy's state for people and scripts: never the token or the secret.
    pub fn status(&self) -> serde_json::Value {
        let config = self.config.load();
        let stats = self.forwarder.tokens.stats();
        let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let token = self.forwarder.tokens.current().map(|t| {
            let left = t.usable_until().saturating_duration_since(tokio::time::Instant::now());
            json!({
                "generation": t.generation(),
                "usable": t.is_usable(),
                "usable_for_s": left.as_secs(),
                "usable_until": time(Some(SystemTime::now() + left)),
            })
        });
        let pacer = self.forwarder.pacer.load();
        let settings = pacer.settings();
        let reload = self.last_reload.lock().expect("not poisoned").clone();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": time(Some(self.started)),
            "listen": self.local.to_string(),
            "upstream": config.api_url.as_str().trim_end_matches('/'),
            "auth_mode": config.auth.mode(),
            "token_url": config.auth.oauth().map(|o| o.token_url.as_str()),
            "principal": config.auth.principal(),
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
            "replay_buffers": {
                "held_bytes": self.forwarder.replay_budget.held(),
                "budget_bytes": self.forwarder.replay_budget.total(),
            },
            "policy": if config.policy.is_open() { "open" } else { "restricted" },
            "read_only": config.policy.read_only,
            "config": {
                "file": config.config_file.as_ref().map(|p| p.display().to_string()),
                "last_reload": reload.at.map(|at| json!({ "at": time(Some(at)), "ok": reload.ok, "message": reload.message })),
            },
        })
    }
}
