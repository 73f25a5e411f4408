//! Where raw setting values come from: the TOML file and the environment, each value remembering
//! its origin so that an error can point at it.

use std::collections::BTreeMap;
use std::path::Path;

use super::tenants::RawTenant;
use crate::gate::policy::PolicyFile;

/// Each setting: its TOML key and its environment variable. The order is the documentation's.
pub const SETTINGS: &[(&str, &str)] = &[
    ("auth_mode", "UEM_AUTH_MODE"),
    ("api_url", "UEM_API_URL"),
    ("console_url", "UEM_CONSOLE_URL"),
    ("token_url", "UEM_TOKEN_URL"),
    ("region", "UEM_REGION"),
    ("token_domain", "UEM_TOKEN_DOMAIN"),
    ("client_id", "UEM_CLIENT_ID"),
    ("client_secret", "UEM_CLIENT_SECRET"),
    ("client_secret_file", "UEM_CLIENT_SECRET_FILE"),
    ("username", "UEM_USERNAME"),
    ("password", "UEM_PASSWORD"),
    ("password_file", "UEM_PASSWORD_FILE"),
    ("tenant_code", "UEM_TENANT_CODE"),
    ("listen", "UEM_PROXY_LISTEN"),
    ("tls_listen", "UEM_PROXY_TLS_LISTEN"),
    ("tls_cert", "UEM_PROXY_TLS_CERT"),
    ("tls_key", "UEM_PROXY_TLS_KEY"),
    ("allow_cidrs", "UEM_PROXY_ALLOW_CIDRS"),
    ("allowed_hosts", "UEM_PROXY_ALLOWED_HOSTS"),
    ("allowed_origins", "UEM_PROXY_ALLOWED_ORIGINS"),
    ("read_only", "UEM_PROXY_READ_ONLY"),
    ("egress_proxy", "UEM_PROXY_EGRESS_PROXY"),
    ("ca_bundle", "UEM_CA_BUNDLE"),
    ("upstream_timeout", "UEM_PROXY_UPSTREAM_TIMEOUT"),
    ("connect_timeout", "UEM_PROXY_CONNECT_TIMEOUT"),
    ("header_timeout", "UEM_PROXY_HEADER_TIMEOUT"),
    ("max_header_bytes", "UEM_PROXY_MAX_HEADER_BYTES"),
    ("max_url_bytes", "UEM_PROXY_MAX_URL_BYTES"),
    ("max_body_bytes", "UEM_PROXY_MAX_BODY_BYTES"),
    ("body_idle_timeout", "UEM_PROXY_BODY_IDLE_TIMEOUT"),
    ("max_connections", "UEM_PROXY_MAX_CONNECTIONS"),
    ("max_concurrent", "UEM_PROXY_MAX_CONCURRENT"),
    ("rate_limit", "UEM_PROXY_RATE_LIMIT"),
    ("pacer_max_wait", "UEM_PROXY_PACER_MAX_WAIT"),
    ("token_wait", "UEM_PROXY_TOKEN_WAIT"),
    ("forced_refresh_interval", "UEM_PROXY_FORCED_REFRESH_INTERVAL"),
    ("replay_body_limit", "UEM_PROXY_REPLAY_BODY_LIMIT"),
    ("replay_budget", "UEM_PROXY_REPLAY_BUDGET"),
    ("rewrite_bodies", "UEM_PROXY_REWRITE_BODIES"),
    ("max_pages", "UEM_PROXY_MAX_PAGES"),
    ("shutdown_grace", "UEM_PROXY_SHUTDOWN_GRACE"),
    ("inspect", "UEM_PROXY_INSPECT"),
    ("inspect_entries", "UEM_PROXY_INSPECT_ENTRIES"),
    ("log_format", "UEM_PROXY_LOG_FORMAT"),
    ("default_tenant", "UEM_PROXY_DEFAULT_TENANT"),
];

/// Pairs of settings of which one is used. When the environment sets either, the file's pair is
/// ignored, so `UEM_CONSOLE_URL` can override a file's `api_url` without a conflict.
pub(super) const ALTERNATIVES: &[(&str, &str)] = &[
    ("api_url", "console_url"),
    ("token_url", "region"),
    ("client_secret", "client_secret_file"),
    ("password", "password_file"),
];

/// Settings that name files. A relative path in the configuration file is taken relative to the
/// file's folder (the file and its secrets are usually shipped together); in the environment it
/// stays relative to the working directory.
pub(super) const PATHS: &[&str] = &["client_secret_file", "password_file", "ca_bundle", "tls_cert", "tls_key"];

/// `value` as a path relative to the folder of the configuration file at `file`.
pub(super) fn beside(file: &Path, value: String) -> String {
    let trimmed = value.trim();
    match file.parent() {
        Some(folder) if !trimmed.is_empty() && Path::new(trimmed).is_relative() => {
            folder.join(trimmed).display().to_string()
        }
        _ => value,
    }
}

/// Where a raw value came from.
#[derive(Clone)]
pub enum Origin {
    File(String),
    Env(&'static str),
}

#[derive(Clone)]
pub struct Raw {
    pub value: String,
    pub origin: Origin,
}

impl Origin {
    /// How an error names the setting: `UEM_API_URL`, or `file.toml: api_url`.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Origin::File(path) => format!("{path}: {key}"),
            Origin::Env(var) => (*var).to_owned(),
        }
    }
}

pub type RawMap = BTreeMap<&'static str, Raw>;

pub fn env_name(key: &str) -> &'static str {
    SETTINGS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or("?")
}

/// The tables of the configuration file that are not settings.
#[derive(Default)]
pub struct Tables {
    pub policy: PolicyFile,
    pub tenants: Vec<RawTenant>,
    /// The `[cache]` table, read by [`super::cache`].
    pub cache: Option<toml::Value>,
    /// A hash of the file's content as read, for the reloader to compare with.
    pub fingerprint: Option<u64>,
}

/// A hash of a configuration file's content.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// A setting's value from the file as the environment would give it: lists comma-separated.
pub(super) fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
            Some(items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(","))
        }
        _ => None,
    }
}

/// Reads the file's settings into `raw` and returns its `[policy]`, `[tenants]` and `[cache]` tables.
pub fn read_file(path: &Path, raw: &mut RawMap, problems: &mut Vec<String>) -> Tables {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Tables { fingerprint: Some(fingerprint(text.as_bytes())), ..read_text(&shown, path, &text, raw, problems) }
        }
        Err(e) => {
            problems.push(format!("{shown}: cannot read the config file: {e}{}", super::access::hint(&e)));
            Tables::default()
        }
    }
}

/// Reads the settings of TOML `text`, called `shown` in messages; relative paths in it are
/// taken from the folder of `path`.
pub fn read_text(shown: &str, path: &Path, text: &str, raw: &mut RawMap, problems: &mut Vec<String>) -> Tables {
    let shown = shown.to_owned();
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            // Never `e.to_string()`: it quotes the line, which may hold a secret.
            problems.push(format!("{shown}: not valid TOML: {}", super::hints::toml_error(text, &e)));
            return Tables::default();
        }
    };
    let policy = match table.remove("policy") {
        None => PolicyFile::default(),
        Some(value) => value.try_into().unwrap_or_else(|e: toml::de::Error| {
            problems.push(format!("{shown}: policy: {}", e.message()));
            PolicyFile::default()
        }),
    };
    let tenants = table.remove("tenants").map(|t| super::tenants::read(&shown, path, t, problems)).unwrap_or_default();
    let cache = table.remove("cache");
    for (key, value) in table {
        let Some(&(known, _)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
            problems.push(format!("{shown}: {}", super::hints::unknown_key(&key)));
            continue;
        };
        let type_str = value.type_str();
        let Some(value) = scalar(value) else {
            problems.push(format!("{shown}: {key}: expected a string, found {type_str}"));
            continue;
        };
        let value = if PATHS.contains(&known) { beside(path, value) } else { value };
        raw.insert(known, Raw { value, origin: Origin::File(shown.clone()) });
    }
    Tables { policy, tenants, cache, fingerprint: None }
}

/// Overlays the environment's settings; an empty variable counts as unset.
pub fn overlay_env(env: &dyn Fn(&str) -> Option<String>, raw: &mut RawMap) {
    let from_env: Vec<(&'static str, &'static str, String)> = SETTINGS
        .iter()
        .filter_map(|&(key, var)| env(var).filter(|v| !v.trim().is_empty()).map(|v| (key, var, v)))
        .collect();
    for &(a, b) in ALTERNATIVES {
        if from_env.iter().any(|(k, _, _)| *k == a || *k == b) {
            raw.remove(a);
            raw.remove(b);
        }
    }
    for (key, var, value) in from_env {
        raw.insert(key, Raw { value, origin: Origin::Env(var) });
    }
}
