//! Where raw setting values come from: the TOML file and the environment, each value remembering
//! its origin so that an error can point at it.

use std::collections::BTreeMap;
use std::path::Path;

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
    ("log_format", "UEM_PROXY_LOG_FORMAT"),
];

/// Pairs of settings of which one is used. When the environment sets either, the file's pair is
/// ignored, so `UEM_CONSOLE_URL` can override a file's `api_url` without a conflict.
const ALTERNATIVES: &[(&str, &str)] = &[
    ("api_url", "console_url"),
    ("token_url", "region"),
    ("client_secret", "client_secret_file"),
    ("password", "password_file"),
];

/// Settings that name files. A relative path in the configuration file is taken relative to the
/// file's folder (the file and its secrets are usually shipped together); in the environment it
/// stays relative to the working directory.
const PATHS: &[&str] = &["client_secret_file", "password_file", "ca_bundle", "tls_cert", "tls_key"];

/// `value` as a path relative to the folder of the configuration file at `file`.
fn beside(file: &Path, value: String) -> String {
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

/// Reads the file's settings into `raw` and returns its `[policy]` table; its `[cache]` table goes
/// to `cache`.
pub fn read_file(
    path: &Path,
    raw: &mut RawMap,
    cache: &mut Option<toml::Value>,
    problems: &mut Vec<String>,
) -> PolicyFile {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(format!("{shown}: cannot read the config file: {e}"));
            return PolicyFile::default();
        }
    };
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            // Never `e.to_string()`: it quotes the line, which may hold a secret.
            problems.push(format!("{shown}: not valid TOML: {}", super::hints::toml_error(&text, &e)));
            return PolicyFile::default();
        }
    };
    let policy = match table.remove("policy") {
        None => PolicyFile::default(),
        Some(value) => value.try_into().unwrap_or_else(|e: toml::de::Error| {
            problems.push(format!("{shown}: policy: {}", e.message()));
            PolicyFile::default()
        }),
    };
    *cache = table.remove("cache");
    for (key, value) in table {
        let Some(&(known, _)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
            problems.push(format!("{shown}: {}", super::hints::unknown_key(&key)));
            continue;
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
                items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(",")
            }
            other => {
                problems.push(format!("{shown}: {key}: expected a string, found {}", other.type_str()));
                continue;
            }
        };
        let value = if PATHS.contains(&known) { beside(path, value) } else { value };
        raw.insert(known, Raw { value, origin: Origin::File(shown.clone()) });
    }
    policy
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
