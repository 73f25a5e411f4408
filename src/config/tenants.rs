//! Several UEM environments in one proxy: the `[tenants.NAME]` tables of the configuration file.
//!
//! A tenant table takes the upstream and credential keys of the top level, its own pacing and
//! policy, and optionally a listener of its own. Whatever a table leaves out comes from the top
//! level (file or environment), so shared settings are written once. Without `[tenants]` there is
//! one tenant made of the top level, reached without a prefix, exactly as before tenants existed.

use std::net::SocketAddr;

use secrecy::SecretString;
use url::Url;

use super::Auth;
use super::source::{ALTERNATIVES, Origin, PATHS, Raw, RawMap, beside};
use crate::forward::pacer::PacerSettings;
use crate::gate::policy::{Policy, PolicyFile};

/// The name of the one tenant of a configuration without `[tenants]`.
pub const SINGLE: &str = "default";

/// The keys a `[tenants.NAME]` table may set; every other top-level key is the listener's.
pub const TENANT_KEYS: &[&str] = &[
    "api_url",
    "console_url",
    "region",
    "token_url",
    "token_domain",
    "client_id",
    "client_secret",
    "client_secret_file",
    "auth_mode",
    "username",
    "password",
    "password_file",
    "tenant_code",
    "read_only",
    "max_concurrent",
    "rate_limit",
    "listen",
];

/// One UEM environment: where its API is, how the proxy authorises itself there, and what
/// callers may do with it.
#[derive(Clone)]
pub struct TenantConfig {
    /// Lower-case letters, digits and `-`; `/t/NAME/` reaches it.
    pub name: String,
    pub api_url: Url,
    pub auth: Auth,
    /// Sent as `aw-tenant-code` in place of any a caller sends.
    pub tenant_code: Option<SecretString>,
    pub policy: Policy,
    pub pacer: PacerSettings,
    /// A listener of its own, on which every path goes to this tenant without a prefix.
    pub listen: Option<SocketAddr>,
}

/// A `[tenants.NAME]` table as read from the file, before the top level fills its gaps.
pub struct RawTenant {
    pub name: String,
    pub raw: RawMap,
    pub policy: Option<PolicyFile>,
}

/// Whether `name` may name a tenant: it is a path segment and a metrics label as it is.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads the `[tenants]` table of the file at `shown`.
pub fn read(shown: &str, file: &std::path::Path, value: toml::Value, problems: &mut Vec<String>) -> Vec<RawTenant> {
    let toml::Value::Table(tables) = value else {
        problems.push(format!("{shown}: tenants: expected tables like [tenants.prod]"));
        return Vec::new();
    };
    let mut tenants = Vec::new();
    for (name, table) in tables {
        let label: String = name.chars().filter(|c| c.is_ascii_graphic()).take(40).collect();
        if !valid_name(&name) {
            problems.push(format!(
                "{shown}: tenants.{label}: a tenant's name is 1 to 32 lower-case letters, digits and '-'"
            ));
            continue;
        }
        let toml::Value::Table(mut table) = table else {
            problems.push(format!("{shown}: tenants.{name}: expected a table like [tenants.{name}]"));
            continue;
        };
        let policy = table.remove("policy").map(|value| {
            value.try_into().unwrap_or_else(|e: toml::de::Error| {
                problems.push(format!("{shown}: tenants.{name}.policy: {}", e.message()));
                PolicyFile::default()
            })
        });
        let origin = Origin::File(format!("{shown}: tenants.{name}"));
        let mut raw = RawMap::new();
        for (key, value) in table {
            let Some(&known) = TENANT_KEYS.iter().find(|k| **k == key) else {
                let shown_key: String = key.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
                problems.push(format!(
                    "{shown}: tenants.{name}: '{shown_key}' is not a tenant setting (a tenant takes {})",
                    TENANT_KEYS.join(", ")
                ));
                continue;
            };
            let Some(value) = super::source::scalar(value) else {
                problems.push(format!("{shown}: tenants.{name}: {key}: expected a string"));
                continue;
            };
            let value = if PATHS.contains(&known) { beside(file, value) } else { value };
            raw.insert(known, Raw { value, origin: origin.clone() });
        }
        tenants.push(RawTenant { name, raw, policy });
    }
    tenants
}

/// The settings a tenant runs with: the top level's, with the tenant's table laid over them. A
/// tenant that names one of two alternatives (say `console_url`) replaces the top level's pair.
pub fn overlay(top: &RawMap, tenant: &RawMap) -> RawMap {
    let mut merged: RawMap = top.iter().map(|(k, r)| (*k, r.clone())).collect();
    // The top level's `listen` is the shared listener's, never a tenant's.
    merged.remove("listen");
    for &(a, b) in ALTERNATIVES {
        if tenant.contains_key(a) || tenant.contains_key(b) {
            merged.remove(a);
            merged.remove(b);
        }
    }
    merged.extend(tenant.iter().map(|(k, r)| (*k, r.clone())));
    merged
}

/// Credentials whose parts go together, with the keys that say where they are sent: a client ID
/// and its secret to the token service; an account and its password to the API.
const CREDENTIALS: &[(&str, &[&str], &[&str], bool)] = &[
    ("client_id", &["client_secret", "client_secret_file"], &["token_url", "region", "token_domain"], false),
    ("username", &["password", "password_file"], &["api_url", "console_url"], true),
];

/// Why a tenant's table must not take part of a credential from the top level (the file's top
/// or the environment, often another tenant's): the top level's secret would go with this
/// tenant's ID, or to this tenant's own server. Names keys, never values.
pub fn half_credentials(top: &RawMap, tenant: &RawMap) -> Vec<String> {
    let merged = overlay(top, tenant);
    let basic = merged.get("auth_mode").is_some_and(|r| r.value.trim().eq_ignore_ascii_case("basic"));
    let mut problems = Vec::new();
    for &(id, secrets, servers, for_basic) in CREDENTIALS {
        if basic != for_basic {
            continue;
        }
        let secret = secrets[0];
        let (own_id, own_secret) = (tenant.contains_key(id), secrets.iter().any(|k| tenant.contains_key(k)));
        let (top_id, top_secret) = (top.contains_key(id), secrets.iter().any(|k| top.contains_key(k)));
        let both = format!("set {id} and {secret} (or {}) here too", secrets[1]);
        if own_id && !own_secret && top_secret {
            problems.push(format!("{id} is set here, but not {secret}: the top level's would go with it; {both}"));
        } else if own_secret && !own_id && top_id {
            problems.push(format!("{secret} is set here, but not {id}: it would go with the top level's; {both}"));
        } else if let Some(server) = servers.iter().find(|k| tenant.contains_key(**k))
            && !own_id
            && !own_secret
            && (top_id || top_secret)
        {
            problems.push(format!(
                "{server} is set here, but not {id} and {secret}: the top level's would be sent there; {both}"
            ));
        }
    }
    problems
}

/// Why tenants' APIs must not nest: with `https://uem.corp` and `https://uem.corp/uat`, a caller
/// asking the first for `/uat/…` would carry its token to the second's API. The same API for two
/// tenants (two policies over one environment) is no such case.
pub fn nested_apis(tenants: &[TenantConfig]) -> Vec<String> {
    let path = |url: &Url| url.path().trim_end_matches('/').to_ascii_lowercase();
    let mut problems = Vec::new();
    for inner in tenants {
        for outer in tenants {
            let (i, o) = (path(&inner.api_url), path(&outer.api_url));
            let same_origin = inner.api_url.origin() == outer.api_url.origin();
            if same_origin && i.len() > o.len() && i.starts_with(&o) && i.as_bytes()[o.len()] == b'/' {
                problems.push(format!(
                    "tenants.{}: api_url {} is inside tenants.{}'s ({}): {}'s callers could reach it with {}'s \
                     token; give each tenant an API of its own",
                    inner.name,
                    inner.api_url.as_str().trim_end_matches('/'),
                    outer.name,
                    outer.api_url.as_str().trim_end_matches('/'),
                    outer.name,
                    outer.name,
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lower_case_path_segments() {
        for good in ["prod", "uat", "customer-42", "a", &"x".repeat(32)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Prod", "u_at", "a/b", "..", "a b", "é", &"x".repeat(33), "%70"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_tenant_naming_one_alternative_replaces_the_top_levels_pair() {
        let raw = |pairs: &[(&'static str, &str)]| -> RawMap {
            pairs.iter().map(|(k, v)| (*k, Raw { value: v.to_string(), origin: Origin::Env("X") })).collect()
        };
        let top = raw(&[("api_url", "https://as1.example"), ("client_id", "top"), ("listen", "127.0.0.1:1")]);
        let merged = overlay(&top, &raw(&[("console_url", "cn2.example")]));
        assert!(!merged.contains_key("api_url"));
        assert_eq!(merged["console_url"].value, "cn2.example");
        assert_eq!(merged["client_id"].value, "top");
        assert!(!merged.contains_key("listen"));
    }
}
