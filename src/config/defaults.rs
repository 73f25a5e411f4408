//! `UEM_PROXY_DEFAULTS`: settings beneath the configuration file and the environment, for a
//! container image or a package to state its choices (JSON logs) without outranking the user's.
//!
//! In an image, an `ENV UEM_PROXY_LOG_FORMAT=json` cannot be told apart from one the user gave,
//! so it would win over the `log_format` of a mounted file. A default only fills what neither
//! the file nor the environment sets.

use std::path::Path;

use super::source::{ALTERNATIVES, Origin, Raw, RawMap, SETTINGS};
use super::{Listen, hints, parse};

/// The variable; its value is `key=value` pairs with the file's keys, separated by white space:
/// `UEM_PROXY_DEFAULTS="log_format=json shutdown_grace=20s"`.
pub const VARIABLE: &str = "UEM_PROXY_DEFAULTS";

/// Credentials are the user's to give, never a default: a value here would sit in an image's
/// metadata for anyone to read.
const NOT_DEFAULTS: &[&str] = &["client_secret", "password", "tenant_code"];

/// The defaults in `value`, each as a raw setting; a malformed item is a problem named by its
/// position, never quoted (it may be a secret put in the wrong place).
fn read(value: &str, problems: &mut Vec<String>) -> RawMap {
    let mut defaults = RawMap::new();
    for (n, item) in value.split_whitespace().enumerate() {
        let n = n + 1;
        let Some((key, value)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            problems.push(format!("{VARIABLE}: item {n} is not key=value (like log_format=json)"));
            continue;
        };
        let Some(&(known, _)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
            problems.push(format!("{VARIABLE}: {}", hints::unknown_key(key)));
            continue;
        };
        if NOT_DEFAULTS.contains(&known) {
            problems.push(format!("{VARIABLE}: {known} cannot have a default; set it in the file or the environment"));
            continue;
        }
        defaults.insert(known, Raw { value: value.to_owned(), origin: Origin::File(VARIABLE.to_owned()) });
    }
    defaults
}

/// Gives each setting the file left unset (itself and its alternative) its default. Runs after
/// the file is read and before the environment is overlaid.
pub fn fill(env: &dyn Fn(&str) -> Option<String>, raw: &mut RawMap, problems: &mut Vec<String>) {
    let Some(value) = env(VARIABLE) else { return };
    for (key, default) in read(&value, problems) {
        let alternative = ALTERNATIVES.iter().find_map(|&(a, b)| (a == key).then_some(b).or((b == key).then_some(a)));
        if !raw.contains_key(key) && alternative.is_none_or(|other| !raw.contains_key(other)) {
            raw.insert(key, default);
        }
    }
}

/// The default `value` gives `key`, for the commands that read no file (`demo`, `sandbox`).
pub fn default_of(key: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let value = env(VARIABLE)?;
    read(&value, &mut Vec::new()).remove(key).map(|raw| raw.value)
}

/// Where `run` listens under this file and environment, found without the other settings:
/// `uem-proxy healthcheck` must probe that very address, and must not fail because a secret is
/// unreadable. The order is `run`'s: the environment, the file, the defaults, `127.0.0.1:8080`.
pub fn listen_for_probe(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Listen, String> {
    if let Some(value) = env("UEM_PROXY_LISTEN").filter(|v| !v.trim().is_empty()) {
        return parse::listen(&value).map_err(|e| format!("UEM_PROXY_LISTEN: {e}"));
    }
    if let Some(listen) = file.map(super::listen_in_file).transpose()?.flatten() {
        return Ok(listen);
    }
    let mut problems = Vec::new();
    let defaults = env(VARIABLE).map(|value| read(&value, &mut problems)).unwrap_or_default();
    match defaults.get("listen") {
        Some(raw) => parse::listen(&raw.value).map_err(|e| format!("{VARIABLE}: listen: {e}")),
        None => parse::listen("127.0.0.1:8080"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LogFormat};

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs = pairs.to_vec();
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn raw(pairs: &[(&'static str, &str)]) -> RawMap {
        let file = || Origin::File("f.toml".to_owned());
        pairs.iter().map(|&(k, v)| (k, Raw { value: v.to_owned(), origin: file() })).collect()
    }

    #[test]
    fn defaults_fill_only_what_the_file_leaves_unset() {
        let mut map = raw(&[("log_format", "text"), ("console_url", "cn1.awmdm.com")]);
        let mut problems = Vec::new();
        let defaults = env(&[(VARIABLE, " log_format=json  api_url=https://as9.awmdm.com shutdown_grace=20s ")]);
        fill(&defaults, &mut map, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(map["log_format"].value, "text", "the file wins");
        assert!(!map.contains_key("api_url"), "the file set its alternative");
        assert_eq!(map["shutdown_grace"].value, "20s");
        assert_eq!(map["shutdown_grace"].origin.describe("shutdown_grace"), "UEM_PROXY_DEFAULTS: shutdown_grace");
    }

    #[test]
    fn a_loaded_configuration_ranks_environment_file_defaults() {
        let dir = std::env::temp_dir().join(format!("uem-proxy-defaults-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.toml");
        std::fs::write(&file, "log_format = \"text\"\nclient_id = \"c\"\nclient_secret = \"s\"\n").unwrap();
        let base = [
            ("UEM_API_URL", "https://as1.awmdm.com"),
            ("UEM_TOKEN_URL", "https://na.uemauth.workspaceone.com/connect/token"),
            (VARIABLE, "log_format=json shutdown_grace=20s"),
        ];
        let config = Config::load(Some(&file), &env(&base)).unwrap();
        assert_eq!(config.log_format, LogFormat::Text, "the file outranks a default");
        assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(20), "a default fills a gap");
        assert_eq!(config.reload().unwrap().shutdown_grace, std::time::Duration::from_secs(20), "and again on reload");
        let with_env = [base[0], base[1], base[2], ("UEM_PROXY_LOG_FORMAT", "json")];
        assert_eq!(Config::load(Some(&file), &env(&with_env)).unwrap().log_format, LogFormat::Json);
        let without_file = [base[0], base[1], base[2], ("UEM_CLIENT_ID", "c"), ("UEM_CLIENT_SECRET", "s")];
        assert_eq!(Config::load(None, &env(&without_file)).unwrap().log_format, LogFormat::Json);
        let bad = [base[0], base[1], (VARIABLE, "log_format=xml")];
        assert!(Config::load(Some(&file), &env(&bad)).is_ok(), "a default the file overrides is never parsed");
        let bad = [without_file[0], without_file[1], bad[2], without_file[3], without_file[4]];
        let problems = Config::load(None, &env(&bad)).err().unwrap().0;
        assert!(problems[0].starts_with("UEM_PROXY_DEFAULTS: log_format: 'xml'"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_defaults_are_problems_that_quote_no_value() {
        let mut problems = Vec::new();
        let defaults = read("hunter2 log_formt=json client_secret=hunter3 =x", &mut problems);
        assert!(defaults.is_empty());
        assert_eq!(
            problems,
            [
                "UEM_PROXY_DEFAULTS: item 1 is not key=value (like log_format=json)",
                "UEM_PROXY_DEFAULTS: unknown setting 'log_formt': did you mean log_format?",
                "UEM_PROXY_DEFAULTS: client_secret cannot have a default; set it in the file or the environment",
                "UEM_PROXY_DEFAULTS: item 4 is not key=value (like log_format=json)",
            ]
        );
    }

    #[test]
    fn the_probe_looks_where_run_listens() {
        let dir = std::env::temp_dir().join(format!("uem-proxy-probe-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7001\"\nclient_secret_file = \"/unreadable\"\n").unwrap();
        let none = dir.join("none.toml");
        std::fs::write(&none, "log_format = \"json\"\n").unwrap();
        fn probe(file: Option<&Path>, pairs: &[(&'static str, &'static str)]) -> Result<String, String> {
            listen_for_probe(file, &env(pairs)).map(|l| l.to_string())
        }
        let defaults = (VARIABLE, "listen=127.0.0.1:7002");
        assert_eq!(probe(None, &[]).unwrap(), "127.0.0.1:8080");
        assert_eq!(probe(None, &[defaults]).unwrap(), "127.0.0.1:7002");
        assert_eq!(probe(Some(&none), &[defaults]).unwrap(), "127.0.0.1:7002");
        assert_eq!(probe(Some(&file), &[defaults]).unwrap(), "127.0.0.1:7001", "the file outranks defaults");
        let listen = ("UEM_PROXY_LISTEN", "unix:/run/p.sock");
        assert_eq!(probe(Some(&file), &[defaults, listen]).unwrap(), "unix:/run/p.sock");
        assert_eq!(probe(Some(&file), &[("UEM_PROXY_LISTEN", " ")]).unwrap(), "127.0.0.1:7001", "blank is unset");
        assert!(probe(None, &[("UEM_PROXY_LISTEN", "nowhere")]).unwrap_err().starts_with("UEM_PROXY_LISTEN: "));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
