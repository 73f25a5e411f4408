//! Settings from a TOML file and the environment, parsed once into a typed, validated [`Config`].
//!
//! Every setting has one TOML key and one environment variable; the environment wins. Loading
//! reports every problem at once, naming where each bad value came from, so a user fixes a broken
//! deployment in one round. Nothing downstream re-checks a string: what leaves here is typed.

mod access;
pub mod cache;
mod defaults;
mod hints;
mod parse;
mod source;
pub mod tenants;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use crate::cache::CacheSettings;
use crate::forward::pacer::PacerSettings;
pub use crate::forward::upstream::Egress;
pub use crate::gate::Inbound;
use crate::gate::policy::{Policy, PolicyFile};
pub use crate::listen::Listen;
use crate::record::inspect::{InspectMode, InspectSettings};
pub use defaults::{default_of, listen_for_probe};
pub use hints::{mask_userinfo, unknown_variables};
use source::{RawMap, Tables, read_file};
pub use source::{SETTINGS, fingerprint};
pub use tenants::TenantConfig;

/// The HTTPS listener: where, and the certificate it presents.
#[derive(Clone)]
pub struct Tls {
    pub listen: SocketAddr,
    pub server: Arc<rustls::ServerConfig>,
    pub cert_file: PathBuf,
}

/// The validated settings the proxy runs with. There is deliberately no `Default`: a proxy that
/// holds an admin credential must not start from guessed values.
#[derive(Clone)]
pub struct Config {
    /// Every UEM environment served, by name; never empty. Without `[tenants]` the one tenant is
    /// the top level's, named `default`, and reached without a prefix.
    pub tenants: Vec<TenantConfig>,
    /// Whether the tenants came from `[tenants]`: their paths then start with `/t/NAME/`.
    pub prefixed: bool,
    /// The tenant that serves paths without a `/t/NAME/` prefix, if any.
    pub default_tenant: Option<String>,
    /// The primary tenant's (the default one, else the first by name) API base: scheme, host,
    /// optional port and an optional path prefix without a trailing slash. Request paths are
    /// appended to it. `auth`, `tenant_code`, `policy` and `pacer` are the same tenant's.: scheme, host, optional port and an optional path prefix without a trailing
    /// slash. Request paths are appended to it.
    pub api_url: Url,
    /// How requests are authorised upstream.
    pub auth: Auth,
    /// The tenant's API key, sent as `aw-tenant-code` in place of any a caller sends.
    pub tenant_code: Option<SecretString>,
    pub listen: Listen,
    /// A second, HTTPS listener, for clients that insist on `https://`.
    pub tls: Option<Tls>,
    pub inbound: Inbound,
    pub policy: Policy,
    /// How long the upstream may take to send response headers once the request is sent, and
    /// the longest pause allowed between two pieces of a response body.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// How the proxy's own outbound calls (token service and API) reach the internet.
    pub egress: Egress,
    /// Extra trust anchors for TLS (TLS-inspecting networks, on-premises hosts), besides the
    /// system's trust store.
    pub ca_bundle: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// How long a request waits for a token when none is valid before it gets 503.
    pub token_wait: Duration,
    /// The least time between two refreshes forced by upstream 401s.
    pub forced_refresh_interval: Duration,
    /// Request bodies up to this size are kept so the request can be replayed after a 401.
    pub replay_body_limit: u64,
    /// All request bodies held for replay together stay within this many bytes; past it a
    /// request streams and is not replayed.
    pub replay_budget: u64,
    /// Rewrite absolute URLs of the API host inside textual response bodies to the proxy's.
    pub rewrite_bodies: bool,
    pub pacer: PacerSettings,
    /// The most pages one `/_proxy/all/` request fetches; past it the transfer fails.
    pub max_pages: u32,
    /// The cache for reads, when the file has a `[cache]` table.
    pub cache: Option<CacheSettings>,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// What the inspector (`/_proxy/ui`) keeps, and how many exchanges.
    pub inspect: InspectSettings,
    pub config_file: Option<PathBuf>,
    /// What loaded but is probably not what the user meant, one sentence each (never a secret):
    /// logged at start and on reload, printed by `config` and `check`.
    pub warnings: Vec<String>,
    /// The environment variables this configuration was loaded with, so a reload reads the file
    /// again under the same environment. Holds secrets: never printed.
    pub environment: Arc<BTreeMap<String, String>>,
    /// A hash of the configuration file's content as this configuration read it: the reloader
    /// compares the file with it, so a change made while the proxy starts is not missed.
    pub file_fingerprint: Option<u64>,
}

/// How the proxy authorises its requests to the API.
#[derive(Clone)]
pub enum Auth {
    /// SaaS: bearer tokens from the token service by the client-credentials grant.
    OAuth(OAuth),
    /// On-premises: HTTP Basic with an administrator account (and the tenant code).
    Basic { username: String, password: SecretString },
}

#[derive(Clone)]
pub struct OAuth {
    pub token_url: Url,
    /// In region mode, the other public domain's token URL, tried when the first is unreachable.
    pub fallback_token_url: Option<Url>,
    /// How the token URL was chosen, for `uem-proxy config` and the start-up log.
    pub token_url_source: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl OAuth {
    /// What the token service is asked with.
    pub fn credentials(&self) -> crate::token::Credentials {
        crate::token::Credentials {
            url: self.token_url.clone(),
            fallback_url: self.fallback_token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
        }
    }
}

impl Auth {
    pub fn oauth(&self) -> Option<&OAuth> {
        match self {
            Auth::OAuth(oauth) => Some(oauth),
            Auth::Basic { .. } => None,
        }
    }

    /// The mode's name: `oauth` or `basic`.
    pub fn mode(&self) -> &'static str {
        match self {
            Auth::OAuth(_) => "oauth",
            Auth::Basic { .. } => "basic",
        }
    }

    /// Who the proxy acts as, for logs: the client ID or the user name (never a secret).
    pub fn principal(&self) -> &str {
        match self {
            Auth::OAuth(oauth) => &oauth.client_id,
            Auth::Basic { username, .. } => username,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every problem found while loading, one per line.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "invalid configuration ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url.as_str())
            .field("auth", &self.auth.mode())
            .field("principal", &self.auth.principal())
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Loads the file (if any), overlays the environment as seen through `env`, and validates.
    ///
    /// `env` is a parameter so tests never touch the process environment.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_from(file, None, env)
    }

    /// Loads TOML `text` given by the program itself (the demo's), with the environment laid
    /// over it as over a file.
    pub fn load_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_from(None, Some(text), env)
    }

    fn load_from(
        file: Option<&Path>,
        text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut raw = RawMap::new();
        let mut tables = match (file, text) {
            (Some(path), _) => read_file(path, &mut raw, &mut problems),
            (None, Some(text)) => {
                source::read_text("built-in configuration", Path::new("."), text, &mut raw, &mut problems)
            }
            (None, None) => Tables::default(),
        };
        defaults::fill(env, &mut raw, &mut problems);
        source::overlay_env(env, &mut raw);
        let variables = SETTINGS.iter().map(|(_, var)| *var).chain([defaults::VARIABLE]);
        let environment: BTreeMap<String, String> =
            variables.filter_map(|var| env(var).map(|v| (var.to_string(), v))).collect();
        let cache = match tables.cache.take().map(cache::parse).transpose() {
            Ok(cache) => cache,
            Err(errors) => {
                let file = file.map(|f| f.display().to_string()).unwrap_or_default();
                problems.extend(errors.into_iter().map(|e| format!("{file}: {e}")));
                None
            }
        };
        let file_fingerprint = tables.fingerprint;
        let config = Self::from_raw(&raw, tables, file, &mut problems).map(|config| Config {
            environment: Arc::new(environment),
            cache,
            file_fingerprint,
            ..config
        });
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError(problems)),
        }
    }

    /// Loads again from the same file and environment, for a reload.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let env = self.environment.clone();
        Config::load(self.config_file.as_deref(), &|name| env.get(name).cloned())
    }

    fn from_raw(raw: &RawMap, tables: Tables, file: Option<&Path>, problems: &mut Vec<String>) -> Option<Config> {
        let mut warnings = Vec::new();
        let pacer_max_wait = {
            let mut p = parse::Parser { raw, problems, warnings: &mut warnings };
            p.optional("pacer_max_wait", "10s", parse::duration)
        };
        let prefixed = !tables.tenants.is_empty();
        let declared: Vec<String> = tables.tenants.iter().map(|t| t.name.clone()).collect();
        let tenants = if prefixed {
            let mut all = Vec::new();
            for tenant in tables.tenants {
                let merged = tenants::overlay(raw, &tenant.raw);
                let (mut own_problems, mut own_warnings) = (tenants::half_credentials(raw, &tenant.raw), Vec::new());
                let mut p = parse::Parser { raw: &merged, problems: &mut own_problems, warnings: &mut own_warnings };
                let policy = tenant.policy.unwrap_or_else(|| tables.policy.clone());
                let parsed = upstream(&mut p, Some(&tenant.name), policy, file, pacer_max_wait);
                let name = &tenant.name;
                let label = format!("tenants.{name}");
                let qualify = |m: String| if m.contains(&label) { m } else { format!("{label}: {m}") };
                problems.extend(own_problems.into_iter().map(qualify));
                warnings.extend(own_warnings.into_iter().map(qualify));
                all.extend(parsed);
            }
            problems.extend(tenants::nested_apis(&all));
            all
        } else {
            let mut p = parse::Parser { raw, problems, warnings: &mut warnings };
            upstream(&mut p, None, tables.policy, file, pacer_max_wait).into_iter().collect()
        };
        let mut p = parse::Parser { raw, problems, warnings: &mut warnings };
        let default_tenant = match p.parse("default_tenant", |s| Ok(s.trim().to_owned())) {
            Some(name) if !prefixed => {
                let shown = p.name("default_tenant");
                p.problem(format!("{shown}: names a tenant ('{name}'), but there is no [tenants] table"));
                None
            }
            Some(name) if !declared.contains(&name) => {
                let shown = p.name("default_tenant");
                let name: String = name.chars().filter(|c| c.is_ascii_graphic()).take(40).collect();
                p.problem(format!("{shown}: no tenant is named '{name}' (tenants: {})", declared.join(", ")));
                None
            }
            Some(name) => Some(name),
            // One tenant serves every path whichever way it was configured.
            None if tenants.len() == 1 => tenants.first().map(|t| t.name.clone()),
            None => None,
        };

        let listen = p.optional("listen", "127.0.0.1:8080", parse::listen);
        let tls = tls(&mut p);
        let inbound = inbound(&mut p);
        let tls_addr = tls.as_ref().and_then(|t| t.as_ref().map(|t| (t.listen, p.name("tls_listen"))));
        let tcp_addr = match &listen {
            Some(Listen::Tcp(addr)) => Some((*addr, p.name("listen"))),
            _ => None,
        };
        let tenant_addrs: Vec<(SocketAddr, String)> =
            tenants.iter().filter_map(|t| Some((t.listen?, format!("tenants.{}: listen", t.name)))).collect();
        let addrs: Vec<(SocketAddr, String)> = tcp_addr.into_iter().chain(tls_addr).chain(tenant_addrs).collect();
        for (i, (addr, name)) in addrs.iter().enumerate() {
            if let Some((_, other)) = addrs[..i].iter().find(|(a, _)| a == addr && addr.port() != 0) {
                p.problem(format!("{name}: {addr} is also {other}: each listener needs an address of its own"));
            }
        }
        for (addr, name) in addrs {
            let Some(inbound) = &inbound else { break };
            if addr.ip().is_loopback() || !inbound.allow_cidrs.is_empty() {
                continue;
            }
            p.problem(format!(
                "{name}: {addr} is not a loopback address, and UEM_PROXY_ALLOW_CIDRS is not set: a proxy that holds \
                 an admin credential must not answer any caller on the network; list the networks that may call \
                 (e.g. UEM_PROXY_ALLOW_CIDRS=10.20.0.0/16)"
            ));
        }
        let upstream_timeout = p.optional("upstream_timeout", "30s", parse::duration);
        let connect_timeout = p.optional("connect_timeout", "10s", parse::duration);
        let egress = p.optional("egress_proxy", "environment", |s| match s.trim().to_ascii_lowercase().as_str() {
            "environment" | "env" => Ok(Egress::FromEnvironment),
            "none" | "direct" => Ok(Egress::Direct),
            _ => {
                let url = Url::parse(s.trim());
                let s = hints::mask_userinfo(s);
                let url = url.map_err(|e| format!("'{s}' is not a proxy URL ({e})"))?;
                if url.scheme().starts_with("socks") {
                    return Err("SOCKS proxies are not supported: name an HTTP proxy (http:// or https://)".to_owned());
                }
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(format!("'{s}' must be like http://proxy.corp:3128, or none, or environment"));
                }
                Ok(Egress::Via(url))
            }
        });
        let ca_bundle = p.parse("ca_bundle", |s| {
            let pem = std::fs::read(s.trim()).map_err(|e| format!("cannot read '{s}': {e}{}", access::hint(&e)))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("'{s}' is not a PEM bundle: {e}"))?;
            if certs.is_empty() {
                return Err(format!("'{s}' holds no PEM certificate"));
            }
            Ok(Arc::new(certs))
        });
        let token_wait = p.optional("token_wait", "10s", parse::duration);
        let forced_refresh_interval = p.optional("forced_refresh_interval", "10s", parse::duration);
        let replay_body_limit = p.optional("replay_body_limit", "65536", parse::bytes);
        let replay_budget = p.optional("replay_budget", "33554432", parse::bytes);
        let rewrite_bodies = p.optional("rewrite_bodies", "true", parse::boolean);
        let max_pages = p.optional("max_pages", "1000", |s| match s.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("'{s}' is not a whole number of pages above zero")),
        });
        let shutdown_grace = p.optional("shutdown_grace", "30s", parse::duration);
        let log_format = p.optional("log_format", "text", parse::log_format);
        let primary = default_tenant.as_ref().and_then(|d| tenants.iter().find(|t| &t.name == d)).or(tenants.first());
        let primary = primary.cloned()?;
        let inspect_mode = p.optional("inspect", "meta", InspectMode::parse);
        let inspect_entries = p.optional("inspect_entries", "500", |s| {
            s.trim().parse::<usize>().map_err(|_| format!("'{s}' is not a whole number of exchanges"))
        });
        Some(Config {
            api_url: primary.api_url,
            auth: primary.auth,
            tenant_code: primary.tenant_code,
            listen: listen?,
            tls: tls?,
            inbound: inbound?,
            policy: primary.policy,
            upstream_timeout: upstream_timeout?,
            connect_timeout: connect_timeout?,
            egress: egress?,
            ca_bundle,
            token_wait: token_wait?,
            forced_refresh_interval: forced_refresh_interval?,
            replay_body_limit: replay_body_limit?,
            replay_budget: replay_budget?,
            rewrite_bodies: rewrite_bodies?,
            pacer: primary.pacer,
            tenants,
            prefixed,
            default_tenant,
            max_pages: max_pages?,
            cache: None,
            shutdown_grace: shutdown_grace?,
            log_format: log_format?,
            inspect: InspectSettings { mode: inspect_mode?, entries: inspect_entries? },
            config_file: file.map(Path::to_path_buf),
            warnings,
            environment: Arc::default(),
            file_fingerprint: None,
        })
    }

    /// This configuration with `tenant` as its primary tenant: what `check` checks for it.
    pub fn for_tenant(&self, tenant: &TenantConfig) -> Config {
        Config {
            api_url: tenant.api_url.clone(),
            auth: tenant.auth.clone(),
            tenant_code: tenant.tenant_code.clone(),
            policy: tenant.policy.clone(),
            pacer: tenant.pacer,
            ..self.clone()
        }
    }

    /// The effective settings as JSON, secrets masked, for `uem-proxy config`.
    pub fn summary(&self) -> serde_json::Value {
        /// The summary's fields that are a tenant's own; with `[tenants]`, the top level's are only
        /// defaults, and each tenant's are shown under `tenants`.
        const OWN: [&str; 14] = [
            "api_url",
            "auth_mode",
            "token_url",
            "fallback_token_url",
            "token_url_source",
            "client_id",
            "client_secret",
            "username",
            "password",
            "tenant_code",
            "read_only",
            "policy",
            "max_concurrent",
            "rate_limit",
        ];
        let mut summary = self.primary_summary();
        if self.prefixed
            && let Some(fields) = summary.as_object_mut()
        {
            let tenants: serde_json::Map<String, serde_json::Value> = self
                .tenants
                .iter()
                .map(|t| {
                    let mut own = self.for_tenant(t).primary_summary();
                    if let Some(own) = own.as_object_mut() {
                        own.retain(|k, _| OWN.contains(&k.as_str()));
                        own.insert("listen".to_owned(), t.listen.map(|l| l.to_string()).into());
                    }
                    (t.name.clone(), own)
                })
                .collect();
            fields.retain(|k, _| !OWN.contains(&k.as_str()));
            fields.insert("default_tenant".to_owned(), self.default_tenant.clone().into());
            fields.insert("tenants".to_owned(), tenants.into());
        }
        summary
    }

    fn primary_summary(&self) -> serde_json::Value {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        let inbound = &self.inbound;
        let mut summary = serde_json::json!({
            // Every URL masked, though only the egress proxy's may carry a password today.
            "api_url": mask_userinfo(self.api_url.as_str().trim_end_matches('/')),
            "auth_mode": self.auth.mode(),
            "token_url": self.auth.oauth().map(|o| mask_userinfo(o.token_url.as_str())),
            "fallback_token_url": self.auth.oauth().and_then(|o| o.fallback_token_url.as_ref().map(|u| mask_userinfo(u.as_str()))),
            "token_url_source": self.auth.oauth().map(|o| o.token_url_source.as_str()),
            "client_id": self.auth.oauth().map(|o| o.client_id.as_str()),
            "client_secret": self.auth.oauth().map(|o| mask(&o.client_secret)),
            "username": match &self.auth { Auth::Basic { username, .. } => Some(username.as_str()), _ => None },
            "password": match &self.auth { Auth::Basic { password, .. } => Some(mask(password)), _ => None },
            "tenant_code": self.tenant_code.as_ref().map(mask),
            "listen": self.listen.to_string(),
            "tls_listen": self.tls.as_ref().map(|t| t.listen.to_string()),
            "tls_cert": self.tls.as_ref().map(|t| t.cert_file.display().to_string()),
            "allow_cidrs": inbound.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "allowed_hosts": inbound.allowed_hosts,
            "allowed_origins": inbound.allowed_origins,
            "read_only": self.policy.read_only,
            "policy": if self.policy.is_open() { "open" } else { "restricted" },
            "upstream_timeout": human(self.upstream_timeout),
            "connect_timeout": human(self.connect_timeout),
            "egress_proxy": match &self.egress {
                Egress::FromEnvironment => "environment".to_owned(),
                Egress::Direct => "none".to_owned(),
                Egress::Via(url) => mask_userinfo(url.as_str()),
            },
            "ca_bundle_certificates": self.ca_bundle.as_ref().map(|c| c.len()),
            "header_timeout": human(inbound.header_timeout),
            "max_header_bytes": inbound.max_header_bytes,
            "max_url_bytes": inbound.max_url_bytes,
            "max_body_bytes": inbound.max_body_bytes.unwrap_or(0),
            "body_idle_timeout": human(inbound.body_idle_timeout),
            "max_connections": inbound.max_connections.unwrap_or(0),
            "token_wait": human(self.token_wait),
            "forced_refresh_interval": human(self.forced_refresh_interval),
            "replay_body_limit": self.replay_body_limit,
            "replay_budget": self.replay_budget,
            "rewrite_bodies": self.rewrite_bodies,
            "max_concurrent": self.pacer.max_concurrent.unwrap_or(0),
            "rate_limit": self.pacer.rate.unwrap_or(0),
            "pacer_max_wait": human(self.pacer.max_wait),
            "shutdown_grace": human(self.shutdown_grace),
            "log_format": match self.log_format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "config_file": self.config_file.as_ref().map(|p| p.display().to_string()),
            "warnings": self.warnings,
        });
        // Apart: one more key in the macro above passes its recursion limit.
        summary["inspect"] = self.inspect.mode.as_str().into();
        summary["inspect_entries"] = self.inspect.entries.into();
        summary["max_pages"] = self.max_pages.into();
        summary["cache"] = serde_json::json!(self.cache.as_ref().map(|c| serde_json::json!({
            "max_bytes": c.max_bytes,
            "rules": c.rules.len(),
        })));
        summary
    }
}

/// The `listen` setting of a configuration file, read alone: `uem-proxy healthcheck` needs no
/// other setting, and must not fail because a secret is unreadable.
pub fn listen_in_file(path: &Path) -> Result<Option<Listen>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{shown}: cannot read the config file: {e}{}", access::hint(&e)))?;
    let table: toml::Table =
        text.parse().map_err(|e| format!("{shown}: not valid TOML: {}", hints::toml_error(&text, &e)))?;
    match table.get("listen") {
        None => Ok(None),
        Some(toml::Value::String(s)) => parse::listen(s).map(Some).map_err(|e| format!("{shown}: listen: {e}")),
        Some(other) => Err(format!("{shown}: listen: expected a string, found {}", other.type_str())),
    }
}

/// One tenant's upstream, credentials, policy and pacing, from the settings `p` reads; `table`:
/// the name of its `[tenants.NAME]` table, `None` for the one tenant made of the top level.
fn upstream(
    p: &mut parse::Parser<'_>,
    table: Option<&str>,
    policy: PolicyFile,
    file: Option<&Path>,
    max_wait: Option<Duration>,
) -> Option<TenantConfig> {
    let api_url = p.api_url();
    let auth = auth(p);
    let tenant_code = match p.parse("tenant_code", |s| Ok(s.trim().to_owned())) {
        Some(code) if !code.is_empty() => Some(SecretString::from(code)),
        _ => None,
    };
    let read_only = p.parse("read_only", parse::boolean);
    let policy = match Policy::new(policy, read_only) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            let file = file.map(|f| f.display().to_string()).unwrap_or_default();
            errors.into_iter().for_each(|e| p.problem(format!("{file}: {e}")));
            None
        }
    };
    let max_concurrent = p.optional("max_concurrent", "0", |s| parse::bytes(s).map(|n| (n > 0).then_some(n as usize)));
    let rate_limit = p.optional("rate_limit", "0", |s| {
        s.trim()
            .parse::<u32>()
            .map(|n| (n > 0).then_some(n))
            .map_err(|_| format!("'{s}' is not a whole number of requests a second"))
    });
    // Without `[tenants]`, `listen` is the shared listener's.
    let listen = match table.is_some() && p.raw.contains_key("listen") {
        false => Some(None),
        true => p
            .parse("listen", |s| {
                s.trim().parse::<SocketAddr>().map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8081"))
            })
            .map(Some),
    };
    Some(TenantConfig {
        name: table.unwrap_or(tenants::SINGLE).to_owned(),
        api_url: api_url?,
        auth: auth?,
        tenant_code,
        policy: policy?,
        pacer: PacerSettings { max_concurrent: max_concurrent?, rate: rate_limit?, max_wait: max_wait? },
        listen: listen?,
    })
}

/// The HTTPS listener, when a certificate and key are given (both, or neither).
fn tls(p: &mut parse::Parser<'_>) -> Option<Option<Tls>> {
    let cert = p.parse("tls_cert", |s| Ok(PathBuf::from(s.trim())));
    let key = p.parse("tls_key", |s| Ok(PathBuf::from(s.trim())));
    let listen = p.optional("tls_listen", "127.0.0.1:8443", |s| {
        s.trim().parse::<SocketAddr>().map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8443"))
    });
    match (cert, key) {
        (None, None) => Some(None),
        (Some(cert), Some(key)) => {
            let server = match crate::listen::tls::server_config(&cert, &key) {
                Ok(server) => server,
                Err(e) => {
                    let (nc, nk) = (p.name("tls_cert"), p.name("tls_key"));
                    let opened = [&cert, &key].into_iter().find_map(|f| std::fs::File::open(f).err());
                    let hint = opened.map(|e| access::hint(&e)).unwrap_or_default();
                    p.problem(format!("{nc}, {nk}: {e}{hint}"));
                    return None;
                }
            };
            Some(Some(Tls { listen: listen?, server: Arc::new(server), cert_file: cert }))
        }
        (Some(_), None) | (None, Some(_)) => {
            p.problem("UEM_PROXY_TLS_CERT and UEM_PROXY_TLS_KEY go together: set both, or neither".to_owned());
            None
        }
    }
}

fn mask(secret: &SecretString) -> &'static str {
    if secret.expose_secret().is_empty() { "" } else { "***" }
}

/// The authentication mode and its settings; only the chosen mode's settings are required.
fn auth(p: &mut parse::Parser<'_>) -> Option<Auth> {
    let mode = p.optional("auth_mode", "oauth", |s| match s.trim().to_ascii_lowercase().as_str() {
        "oauth" => Ok(false),
        "basic" => Ok(true),
        _ => Err(format!("'{s}' is not one of oauth, basic")),
    })?;
    if mode {
        let username = p.required("username", "basic authentication's user name", |s| match s.trim() {
            "" => Err("is empty".to_owned()),
            name => Ok(name.to_owned()),
        });
        let password = p.secret("password", "password_file", "basic authentication's password");
        if p.raw.get("tenant_code").is_none_or(|r| r.value.trim().is_empty()) {
            p.problem("UEM_TENANT_CODE is not set: basic authentication needs the tenant's API key".to_owned());
        }
        return Some(Auth::Basic { username: username?, password: password? });
    }
    let token_url = p.token_url();
    let client_id = p.required("client_id", "the OAuth client's ID", |s| match s.trim() {
        "" => Err("is empty".to_owned()),
        id => Ok(id.to_owned()),
    });
    let client_secret = p.client_secret();
    let (token_url, token_url_source, fallback_token_url) = token_url?;
    Some(Auth::OAuth(OAuth {
        token_url,
        fallback_token_url,
        token_url_source,
        client_id: client_id?,
        client_secret: client_secret?,
    }))
}

fn inbound(p: &mut parse::Parser<'_>) -> Option<Inbound> {
    let allow_cidrs = p.optional("allow_cidrs", "", parse::cidrs);
    let allowed_hosts = p.optional("allowed_hosts", "", parse::hosts);
    let allowed_origins = p.optional("allowed_origins", "", parse::origins);
    let header_timeout = p.optional("header_timeout", "30s", parse::duration);
    let size = |min: u64| {
        move |s: &str| {
            let n = parse::bytes(s)?;
            if n < min { Err(format!("must be at least {min}")) } else { Ok(n as usize) }
        }
    };
    let max_header_bytes = p.optional("max_header_bytes", "65536", size(8192));
    let max_url_bytes = p.optional("max_url_bytes", "8192", size(256));
    let max_body_bytes = p.optional("max_body_bytes", "4294967296", |s| parse::bytes(s).map(|n| (n > 0).then_some(n)));
    let body_idle_timeout = p.optional("body_idle_timeout", "30s", parse::duration);
    let max_connections =
        p.optional("max_connections", "0", |s| parse::bytes(s).map(|n| (n > 0).then_some(n as usize)));
    Some(Inbound {
        allow_cidrs: allow_cidrs?,
        allowed_hosts: allowed_hosts?,
        allowed_origins: allowed_origins?,
        header_timeout: header_timeout?,
        max_header_bytes: max_header_bytes?,
        max_url_bytes: max_url_bytes?,
        max_body_bytes: max_body_bytes?,
        body_idle_timeout: body_idle_timeout?,
        max_connections: max_connections?,
    })
}

#[cfg(test)]
mod mistake_tests;
#[cfg(test)]
mod tests;
