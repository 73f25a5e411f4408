//! Turning raw strings into typed values, recording every problem instead of stopping at the
//! first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use url::Url;

use super::source::{RawMap, SETTINGS, env_name};
use super::{Listen, LogFormat};
use crate::uem::regions::{Region, TokenDomain, api_url_from_console};

pub struct Parser<'a> {
    pub raw: &'a RawMap,
    pub problems: &'a mut Vec<String>,
    /// What loads, but is probably not what the user meant.
    pub warnings: &'a mut Vec<String>,
}

impl Parser<'_> {
    pub fn name(&self, key: &str) -> String {
        match self.raw.get(key) {
            Some(r) => r.origin.describe(key),
            None => env_name(key).to_owned(),
        }
    }

    pub fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    pub fn warning(&mut self, message: String) {
        self.warnings.push(message);
    }

    pub fn parse<T>(&mut self, key: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let raw = self.raw.get(key)?;
        match f(&raw.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{}: {e}", raw.origin.describe(key)));
                None
            }
        }
    }

    pub fn required<T>(&mut self, key: &str, what: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        if !self.raw.contains_key(key) {
            self.problems.push(format!("{} is not set: {what} is required", env_name(key)));
            return None;
        }
        self.parse(key, f)
    }

    pub fn optional<T>(&mut self, key: &str, default: &str, f: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        if self.raw.contains_key(key) { self.parse(key, f) } else { Some(f(default).expect("defaults are valid")) }
    }

    /// Exactly one of two alternative settings.
    fn one_of(&mut self, a: &str, b: &str, what: &str) -> Option<&'static str> {
        let key = |k: &str| SETTINGS.iter().find(|(s, _)| *s == k).map(|(s, _)| *s);
        match (self.raw.contains_key(a), self.raw.contains_key(b)) {
            (true, true) => {
                let (na, nb) = (self.name(a), self.name(b));
                self.problems.push(format!("{na} and {nb} are both set: set only one"));
                None
            }
            (false, false) => {
                let (na, nb) = (env_name(a), env_name(b));
                self.problems.push(format!("neither {na} nor {nb} is set: {what} is required"));
                None
            }
            (true, false) => key(a),
            (false, true) => key(b),
        }
    }

    pub fn api_url(&mut self) -> Option<Url> {
        match self.one_of("api_url", "console_url", "the tenant's API host")? {
            "api_url" => {
                let mut url = self.parse("api_url", |s| base_url(s, true))?;
                let name = self.name("api_url");
                if let Some(stripped) = without_api_suffix(&url) {
                    self.warning(format!(
                        "{name}: ends with /api, which every request path already starts with (requests would go \
                         to /api/api/...): using {}",
                        stripped.as_str().trim_end_matches('/')
                    ));
                    url = stripped;
                }
                if let Some(host) = url.host_str().filter(|h| is_console_host(h))
                    && let Ok(api) = api_url_from_console(host)
                {
                    self.warning(format!(
                        "{name}: {host} looks like a console host; the REST API is usually at {api}: set \
                         UEM_API_URL={api}, or UEM_CONSOLE_URL={host} to derive it"
                    ));
                }
                Some(url)
            }
            _ => self.parse("console_url", |s| api_url_from_console(s).and_then(|u| base_url(&u, true))),
        }
    }

    /// The token URL, how it was chosen, and in region mode the other public domain's URL to
    /// fall back on when the first cannot be reached.
    pub fn token_url(&mut self) -> Option<(Url, String, Option<Url>)> {
        let domain = self.optional("token_domain", "workspaceone", |s| {
            TokenDomain::parse(s).ok_or_else(|| format!("'{s}' is not one of workspaceone, vmwservices"))
        });
        match self.one_of("token_url", "region", "the token service")? {
            "token_url" => self.parse("token_url", |s| base_url(s, false)).map(|u| (u, "explicit".to_owned(), None)),
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
                let other = Url::parse(&region.token_url(domain.other())).expect("region URLs are valid");
                Some((url, format!("region {region} ({}), domain {}", region.location(), domain.name()), Some(other)))
            }
        }
    }

    pub fn client_secret(&mut self) -> Option<SecretString> {
        self.secret("client_secret", "client_secret_file", "the OAuth client's secret")
    }

    /// A secret given directly or in a file. A file's byte-order mark and surrounding white space
    /// are dropped (editors add them; the token service would refuse the secret as
    /// `invalid_client`), with a warning unless only one trailing newline went.
    pub fn secret(&mut self, direct: &str, file: &str, what: &str) -> Option<SecretString> {
        if self.one_of(direct, file, what)? == direct {
            return self.parse(direct, |s| non_empty_secret(s.to_owned()));
        }
        let mut trimmed = false;
        let secret = self.parse(file, |s| {
            let text = std::fs::read_to_string(s.trim())
                .map_err(|e| format!("cannot read '{s}': {e}{}", super::access::hint(&e)))?;
            let (secret, changed) = secret_from_file(&text);
            trimmed = changed;
            non_empty_secret(secret.to_owned())
        })?;
        if trimmed {
            let name = self.name(file);
            self.warning(format!(
                "{name}: the file's byte-order mark, spaces or line breaks around the secret were removed; \
                 write the secret alone on one line to silence this"
            ));
        }
        Some(secret)
    }
}

/// The secret in a secret file's text, and whether more than one trailing newline was removed to
/// get it: a UTF-8 byte-order mark, and white space (CR and LF included) at either end.
pub fn secret_from_file(text: &str) -> (&str, bool) {
    let secret = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    let expected = text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(text);
    (secret, secret != expected)
}

/// The API base without a trailing `/api` segment (any letter case), when it has one.
fn without_api_suffix(url: &Url) -> Option<Url> {
    let path = url.path().trim_end_matches('/');
    let cut = path.len().checked_sub(4)?;
    if !path[cut..].eq_ignore_ascii_case("/api") {
        return None;
    }
    let mut url = url.clone();
    let kept = path[..cut].to_owned();
    url.set_path(&kept);
    Some(url)
}

/// A SaaS console host: a first label `cn` followed by digits (`cn1234.awmdm.com`).
fn is_console_host(host: &str) -> bool {
    let first = host.split('.').next().unwrap_or_default();
    first.len() > 2 && first[..2].eq_ignore_ascii_case("cn") && first[2..].bytes().all(|b| b.is_ascii_digit())
}

fn non_empty_secret(s: String) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(SecretString::from(s))
}

pub fn listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(format!("'{s}' must name an absolute path, like unix:/run/uem-proxy/proxy.sock"));
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    s.parse::<SocketAddr>()
        .map(Listen::Tcp)
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080 or unix:/path/to.sock"))
}

/// The longest duration a setting may have.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600 + 25 * 24 * 3600);

pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration like 30s ({e})"))?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    // Timeouts are added to the clock; a sum past its end would panic on every connection.
    if d > MAX_DURATION {
        return Err(format!("'{s}' is too long: at most 100 years"));
    }
    Ok(d)
}

pub fn bytes(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("'{s}' is not a number of bytes"))
}

pub fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not true or false")),
    }
}

/// A comma-separated list; empty items are dropped.
pub fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty()).map(str::to_owned).collect()
}

/// Networks in CIDR notation; a bare address is a network of one.
pub fn cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    let mut bad = Vec::new();
    let nets = list(s)
        .into_iter()
        .filter_map(|item| {
            let parsed = item.parse::<IpNet>().ok().or_else(|| item.parse::<std::net::IpAddr>().ok().map(IpNet::from));
            if parsed.is_none() {
                bad.push(item);
            }
            parsed
        })
        .collect();
    if bad.is_empty() { Ok(nets) } else { Err(format!("not networks like 10.0.0.0/8: {}", bad.join(", "))) }
}

/// Host names: letters, digits, `-` and `.`, optionally led by `*.` for any subdomain.
pub fn hosts(s: &str) -> Result<Vec<String>, String> {
    let items = list(s);
    let bad: Vec<&String> = items
        .iter()
        .filter(|h| {
            let name = h.strip_prefix("*.").unwrap_or(h);
            name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .collect();
    if !bad.is_empty() {
        let bad: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
        return Err(format!("not host names: {} (names only, without scheme or port)", bad.join(", ")));
    }
    Ok(items.into_iter().map(|h| h.to_ascii_lowercase()).collect())
}

/// Web origins: `scheme://host[:port]`, nothing after.
pub fn origins(s: &str) -> Result<Vec<String>, String> {
    let items = list(s);
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for item in items {
        match Url::parse(&item) {
            Ok(u) if u.origin().is_tuple() && u.path() == "/" && !item.trim_end_matches('/').contains(['?', '#']) => {
                out.push(u.origin().ascii_serialization())
            }
            _ => bad.push(item),
        }
    }
    if bad.is_empty() { Ok(out) } else { Err(format!("not origins like http://localhost:3000: {}", bad.join(", "))) }
}

/// An http(s) URL with a host and no credentials, query or fragment. For the API base, the path
/// (a prefix) loses its trailing slash so request paths append cleanly.
pub fn base_url(raw: &str, is_api: bool) -> Result<Url, String> {
    let s = &super::hints::mask_userinfo(raw);
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("'{s}' is not a URL ({e})"))?;
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

pub fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("'{s}' is not one of text, json")),
    }
}
