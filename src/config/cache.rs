//! The `[cache]` table: which reads may be answered from memory, for how long, and how much
//! memory that may take.

use std::time::Duration;

use serde::Deserialize;

use crate::cache::{CacheRule, CacheSettings};
use crate::gate::policy::PathPattern;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    max_bytes: Option<toml::Value>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    path: String,
    ttl: String,
    stale_if_error: Option<String>,
}

/// Reads the `[cache]` table, reporting every problem.
pub fn parse(value: toml::Value) -> Result<CacheSettings, Vec<String>> {
    let file: CacheFile = value.try_into().map_err(|e: toml::de::Error| vec![format!("cache: {}", e.message())])?;
    let mut problems = Vec::new();
    let max_bytes = match file.max_bytes {
        None => Ok(64 * 1024 * 1024),
        Some(toml::Value::Integer(n)) => u64::try_from(n).map_err(|_| "must be more than zero".to_owned()),
        Some(toml::Value::String(s)) => size(&s),
        Some(_) => Err("expected a size like \"64MiB\"".to_owned()),
    };
    let max_bytes = match max_bytes {
        Ok(0) => Err("must be more than zero".to_owned()),
        other => other,
    };
    let max_bytes = max_bytes.map_err(|e| problems.push(format!("cache.max_bytes: {e}"))).ok();
    let mut rules = Vec::new();
    for (i, rule) in file.rules.into_iter().enumerate() {
        let at = format!("cache.rules[{i}]");
        let path = PathPattern::parse(&rule.path).map_err(|e| problems.push(format!("{at}: {e}")));
        let ttl = super::parse::duration(&rule.ttl).map_err(|e| problems.push(format!("{at}: ttl: {e}")));
        let stale = match rule.stale_if_error {
            None => Ok(Duration::ZERO),
            Some(s) => super::parse::duration(&s).map_err(|e| problems.push(format!("{at}: stale_if_error: {e}"))),
        };
        if let (Ok(path), Ok(ttl), Ok(stale_if_error)) = (path, ttl, stale) {
            rules.push(CacheRule { path, ttl, stale_if_error });
        }
    }
    match max_bytes {
        Some(max_bytes) if problems.is_empty() => Ok(CacheSettings { max_bytes, rules }),
        _ => Err(problems),
    }
}

/// A size: a number of bytes, or a number with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("'{s}' is not a size like 64MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("'{s}' has an unknown unit (KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size(" 10 kb"), Ok(10_000));
        assert_eq!(size("512"), Ok(512));
        assert!(size("MiB").is_err());
        assert!(size("5 parsecs").is_err());
        assert!(size("99999999999999GiB").is_err());
    }

    #[test]
    fn the_table_reads_rules_and_reports_every_problem() {
        let table: toml::Table = r#"
            max_bytes = "1MiB"
            [[rules]]
            path = "/api/system/info"
            ttl = "10m"
            [[rules]]
            path = "/api/mdm/devices/*"
            ttl = "60s"
            stale_if_error = "10m"
        "#
        .parse()
        .unwrap();
        let cache = parse(toml::Value::Table(table)).unwrap();
        assert_eq!(cache.max_bytes, 1 << 20);
        assert_eq!(cache.rule("/api/mdm/devices/search").unwrap().stale_if_error, Duration::from_secs(600));
        assert_eq!(cache.rule("/api/system/info").unwrap().ttl, Duration::from_secs(600));
        assert!(cache.rule("/api/mdm/devices/1/apps").is_none());

        let bad: toml::Table = r#"
            max_bytes = "lots"
            [[rules]]
            path = "api/x"
            ttl = "0s"
        "#
        .parse()
        .unwrap();
        let problems = parse(toml::Value::Table(bad)).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
