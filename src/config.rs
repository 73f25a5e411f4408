//! Settings from a TOML file and the environment, parsed once into a typed, validated [`Config`].
//!
//! Every setting has one TOML key and one environment variable; the environment wins. Loading
//! reports every problem at once, naming where each bad value came from, so a user fixes a broken
//! deployment in one round. Nothing downstream re-checks a string: what leaves here is typed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::uem::regions::{Region, TokenDomain, api_url_from_console};

/// Each setting: its TOML key and its environment variable. The order is the documentation's.
pub const SETTINGS: &[(&str, &str)] = &[
    ("api_url", "UEM_API_URL"),
    ("console_url", "UEM_CONSOLE_URL"),
    ("token_url", "UEM_TOKEN_URL"),
    ("region", "UEM_REGION"),
    ("token_domain", "UEM_TOKEN_DOMAIN"),
    ("client_id", "UEM_CLIENT_ID"),
    ("client_secret", "UEM_CLIENT_SECRET"),
    ("client_secret_file", "UEM_CLIENT_SECRET_FILE"),
    ("listen", "UEM_PROXY_LISTEN"),
    ("upstream_timeout", "UEM_PROXY_UPSTREAM_TIMEOUT"),
    ("connect_timeout", "UEM_PROXY_CONNECT_TIMEOUT"),
    ("token_wait", "UEM_PROXY_TOKEN_WAIT"),
    ("forced_refresh_interval", "UEM_PROXY_FORCED_REFRESH_INTERVAL"),
    ("replay_body_limit", "UEM_PROXY_REPLAY_BODY_LIMIT"),
    ("shutdown_grace", "UEM_PROXY_SHUTDOWN_GRACE"),
    ("log_format", "UEM_PROXY_LOG_FORMAT"),
];

/// Pairs of settings of which one is used. When the environment sets either, the file's pair is
/// ignored, so `UEM_CONSOLE_URL` can override a file's `api_url` without a conflict.
const ALTERNATIVES: &[(&str, &str)] = &[
    ("api_url", "console_url"),
    ("token_url", "region"),
    ("client_secret", "client_secret_file"),
];

/// The validated settings the proxy runs with. There is deliberately no `Default`: a proxy that
/// holds an admin credential must not start from guessed values.
#[derive(Clone)]
pub struct Config {
    /// The API base: scheme, host, optional port and an optional path prefix without a trailing
    /// slash. Request paths are appended to it as they are.
    pub api_url: Url,
    pub token_url: Url,
    /// How the token URL was chosen, for `uem-proxy config` and the start-up log.
    pub token_url_source: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub listen: SocketAddr,
    /// How long the upstream may take to send response headers once the request is sent, and
    /// the longest pause allowed between two pieces of a response body.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a request waits for a token when none is valid before it gets 503.
    pub token_wait: Duration,
    /// The least time between two refreshes forced by upstream 401s.
    pub forced_refresh_interval: Duration,
    /// Request bodies up to this size are kept so the request can be replayed after a 401.
    pub replay_body_limit: u64,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub config_file: Option<PathBuf>,
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
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
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
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Where a raw value came from, so an error can point at it.
#[derive(Clone)]
enum Origin {
    File(String),
    Env(&'static str),
}

struct Raw {
    value: String,
    origin: Origin,
}

impl Origin {
    fn describe(&self, key: &str) -> String {
        match self {
            Origin::File(path) => format!("{path}: {key}"),
            Origin::Env(var) => (*var).to_owned(),
        }
    }
}

impl Config {
    /// Loads the file (if any), overlays the environment as seen through `env`, and validates.
    ///
    /// `env` is a parameter so tests never touch the process environment.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut raw: BTreeMap<&'static str, Raw> = BTreeMap::new();
        if let Some(path) = file {
            read_file(path, &mut raw, &mut problems);
        }
        overlay_env(env, &mut raw);
        let config = Self::from_raw(&raw, file, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError(problems)),
        }
    }

    fn from_raw(raw: &BTreeMap<&'static str, Raw>, file: Option<&Path>, problems: &mut Vec<String>) -> Option<Config> {
        let mut p = Parser { raw, problems };
        let api_url = p.api_url();
        let (token_url, token_url_source) = p.token_url().unzip();
        let client_id = p.required("client_id", "the OAuth client's ID", |s| {
            Ok(s.trim().to_owned()).and_then(|s| {
                if s.is_empty() {
                    Err("is empty".to_owned())
                } else {
                    Ok(s)
                }
            })
        });
        let client_secret = p.client_secret();
        let listen = p.optional("listen", "127.0.0.1:8080", |s| {
            s.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080"))
        });
        let upstream_timeout = p.optional("upstream_timeout", "30s", parse_duration);
        let connect_timeout = p.optional("connect_timeout", "10s", parse_duration);
        let token_wait = p.optional("token_wait", "10s", parse_duration);
        let forced_refresh_interval = p.optional("forced_refresh_interval", "10s", parse_duration);
        let replay_body_limit = p.optional("replay_body_limit", "65536", |s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{s}' is not a number of bytes"))
        });
        let shutdown_grace = p.optional("shutdown_grace", "30s", parse_duration);
        let log_format = p.optional("log_format", "text", |s| match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("'{s}' is not one of text, json")),
        });
        Some(Config {
            api_url: api_url?,
            token_url: token_url?,
            token_url_source: token_url_source?,
            client_id: client_id?,
            client_secret: client_secret?,
            listen: listen?,
            upstream_timeout: upstream_timeout?,
            connect_timeout: connect_timeout?,
            token_wait: token_wait?,
            forced_refresh_interval: forced_refresh_interval?,
            replay_body_limit: replay_body_limit?,
            shutdown_grace: shutdown_grace?,
            log_format: log_format?,
            config_file: file.map(Path::to_path_buf),
        })
    }

    /// The effective settings as JSON, secrets masked, for `uem-proxy config`.
    pub fn summary(&self) -> serde_json::Value {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        serde_json::json!({
            "api_url": self.api_url.as_str().trim_end_matches('/'),
            "token_url": self.token_url.as_str(),
            "token_url_source": self.token_url_source,
            "client_id": self.client_id,
            "client_secret": if self.client_secret.expose_secret().is_empty() { "" } else { "***" },
            "listen": self.listen.to_string(),
            "upstream_timeout": human(self.upstream_timeout),
            "connect_timeout": human(self.connect_timeout),
            "token_wait": human(self.token_wait),
            "forced_refresh_interval": human(self.forced_refresh_interval),
            "replay_body_limit": self.replay_body_limit,
            "shutdown_grace": human(self.shutdown_grace),
            "log_format": match self.log_format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "config_file": self.config_file.as_ref().map(|p| p.display().to_string()),
        })
    }
}

fn read_file(path: &Path, raw: &mut BTreeMap<&'static str, Raw>, problems: &mut Vec<String>) {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return problems.push(format!("{shown}: cannot read the config file: {e}")),
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            return problems.push(format!("{shown}: not valid TOML: {}", e.to_string().trim()));
        }
    };
    for (key, value) in table {
        let Some(&(known, _)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
            problems.push(format!("{shown}: unknown setting '{key}'"));
            continue;
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            other => {
                problems.push(format!("{shown}: {key}: expected a string, found {}", other.type_str()));
                continue;
            }
        };
        raw.insert(
            known,
            Raw {
                value,
                origin: Origin::File(shown.clone()),
            },
        );
    }
}

fn overlay_env(env: &dyn Fn(&str) -> Option<String>, raw: &mut BTreeMap<&'static str, Raw>) {
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
        raw.insert(
            key,
            Raw {
                value,
                origin: Origin::Env(var),
            },
        );
    }
}

/// Turns raw strings into typed values, recording every problem instead of stopping at the first.
struct Parser<'a> {
    raw: &'a BTreeMap<&'static str, Raw>,
    problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn name(&self, key: &str) -> String {
        match self.raw.get(key) {
            Some(r) => r.origin.describe(key),
            None => env_name(key).to_owned(),
        }
    }

    fn parse<T>(&mut self, key: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let raw = self.raw.get(key)?;
        match f(&raw.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{}: {e}", raw.origin.describe(key)));
                None
            }
        }
    }

    fn required<T>(&mut self, key: &str, what: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        if !self.raw.contains_key(key) {
            self.problems
                .push(format!("{} is not set: {what} is required", env_name(key)));
            return None;
        }
        self.parse(key, f)
    }

    fn optional<T>(&mut self, key: &str, default: &str, f: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        if self.raw.contains_key(key) {
            self.parse(key, f)
        } else {
            Some(f(default).expect("defaults are valid"))
        }
    }

    /// Exactly one of two alternative settings, each from the same source.
    fn one_of(&mut self, a: &str, b: &str, what: &str) -> Option<&'static str> {
        match (self.raw.contains_key(a), self.raw.contains_key(b)) {
            (true, true) => {
                let (na, nb) = (self.name(a), self.name(b));
                self.problems.push(format!("{na} and {nb} are both set: set only one"));
                None
            }
            (false, false) => {
                let (na, nb) = (env_name(a), env_name(b));
                self.problems
                    .push(format!("neither {na} nor {nb} is set: {what} is required"));
                None
            }
            (true, false) => SETTINGS.iter().find(|(k, _)| *k == a).map(|(k, _)| *k),
            (false, true) => SETTINGS.iter().find(|(k, _)| *k == b).map(|(k, _)| *k),
        }
    }

    fn api_url(&mut self) -> Option<Url> {
        match self.one_of("api_url", "console_url", "the tenant's API host")? {
            "api_url" => self.parse("api_url", |s| base_url(s, true)),
            _ => self.parse("console_url", |s| {
                api_url_from_console(s).and_then(|u| base_url(&u, true))
            }),
        }
    }

    fn token_url(&mut self) -> Option<(Url, String)> {
        let domain = self.optional("token_domain", "workspaceone", |s| {
            TokenDomain::parse(s).ok_or_else(|| format!("'{s}' is not one of workspaceone, vmwservices"))
        });
        match self.one_of("token_url", "region", "the token service")? {
            "token_url" => self
                .parse("token_url", |s| base_url(s, false))
                .map(|u| (u, "explicit".to_owned())),
            _ => {
                let region = self.parse("region", |s| {
                    Region::parse(s).ok_or_else(|| {
                        format!(
                            "'{s}' is not a region (uat, na, emea, apac) nor a data centre (united-states, canada, \
                             united-kingdom, germany, india, japan, singapore, australia, hong-kong)"
                        )
                    })
                })?;
                let domain = domain?;
                let url = Url::parse(&region.token_url(domain)).expect("region URLs are valid");
                Some((
                    url,
                    format!("region {region} ({}), domain {}", region.location(), domain.name()),
                ))
            }
        }
    }

    fn client_secret(&mut self) -> Option<SecretString> {
        match self.one_of("client_secret", "client_secret_file", "the OAuth client's secret")? {
            "client_secret" => self.parse("client_secret", |s| non_empty_secret(s.to_owned())),
            _ => self.parse("client_secret_file", |s| {
                let text = std::fs::read_to_string(s.trim()).map_err(|e| format!("cannot read '{s}': {e}"))?;
                non_empty_secret(text.trim_end_matches(['\r', '\n']).to_owned())
            }),
        }
    }
}

fn non_empty_secret(s: String) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(SecretString::from(s))
}

fn env_name(key: &str) -> &'static str {
    SETTINGS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or("?")
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration like 30s ({e})"))?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

/// An http(s) URL with a host and no credentials, query or fragment. For the API base, the path
/// (a prefix) loses its trailing slash so request paths append cleanly.
fn base_url(s: &str, is_api: bool) -> Result<Url, String> {
    let mut url = Url::parse(s.trim()).map_err(|e| format!("'{s}' is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{s}' must start with https:// (or http:// for labs)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{s}' has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials in the URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{s}' must not have a query or fragment"));
    }
    if is_api {
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests;
