//! Local policy: what callers may do through this proxy, in the permission catalogue's terms and
//! by method and path. Decided on the canonical path, the same path that is forwarded.
//!
//! Order of decision, first that applies wins:
//! 1. read-only mode refuses every request that is not a read;
//! 2. the first rule whose methods and path pattern match allows or denies;
//! 3. a request needing a permission on the deny list is denied;
//! 4. with an allow list, a request is allowed only if it needs a permission on it;
//! 5. anything else is allowed.
//!
//! A method's letter case never matters (the API's server, IIS, ignores it). A path holding an
//! encoded `/` or `\` (`%2F`, `%5C`) is decided twice, with the encoded character inside its
//! segment (as it is forwarded) and as a separator (as a server behind may decode it); it passes
//! only if both readings pass, so neither reading can be used to step around a rule.
//!
//! A request may also name another method in a header (`X-HTTP-Method-Override: DELETE` on a
//! `POST`, or `X_HTTP_Method_Override`) or a query parameter of the same name, which some servers
//! honour: it must pass for each method it names as well ([`Policy::decide_overrides`]).

use http::{HeaderMap, Method};
use serde::Deserialize;

use crate::gate::target::canonical_method;
use crate::uem::mapping::{self, Kind, Required};
use crate::uem::permissions::{self, Permission};

/// The `[policy]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub read_only: Option<bool>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleFile>,
}

/// One `[[policy.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub action: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, at the end of a pattern.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// Empty: any method.
    methods: Vec<Method>,
    pattern: Vec<Segment>,
    source: String,
}

/// The validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub read_only: bool,
    allow: Vec<&'static Permission>,
    deny: Vec<&'static Permission>,
    rules: Vec<Rule>,
}

/// What the policy says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { permission: Option<&'static Permission>, reason: String },
}

impl Policy {
    /// Validates the file's policy; `read_only` from the environment overrides the file's. Every
    /// problem is reported.
    pub fn new(file: PolicyFile, read_only: Option<bool>) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let mut names = |list: &[String], which: &str| -> Vec<&'static Permission> {
            list.iter()
                .filter_map(|name| {
                    let found = permissions::find(name);
                    if found.is_none() {
                        problems.push(format!("policy.{which}: '{name}' is not a permission of the catalogue"));
                    }
                    found
                })
                .collect()
        };
        let allow = names(&file.allow, "allow");
        let deny = names(&file.deny, "deny");
        let mut rules = Vec::new();
        for (i, rule) in file.rules.iter().enumerate() {
            let at = format!("policy.rules[{i}]");
            let allow = match rule.action.to_ascii_lowercase().as_str() {
                "allow" => Some(true),
                "deny" => Some(false),
                other => {
                    problems.push(format!("{at}: action '{other}' is not allow or deny"));
                    None
                }
            };
            let methods: Vec<Method> = rule
                .methods
                .iter()
                .filter_map(|m| {
                    let parsed = Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok();
                    if parsed.is_none() {
                        problems.push(format!("{at}: '{m}' is not a method"));
                    }
                    parsed
                })
                .collect();
            let pattern = parse_pattern(&rule.path).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            if let (Some(allow), Some(pattern)) = (allow, pattern) {
                rules.push(Rule { allow, methods, pattern, source: format!("{} {}", rule.action, rule.path) });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy { read_only: read_only.or(file.read_only).unwrap_or(false), allow, deny, rules })
    }

    /// Whether a policy restricts anything at all.
    pub fn is_open(&self) -> bool {
        !self.read_only && self.allow.is_empty() && self.deny.is_empty() && self.rules.is_empty()
    }

    /// Entries that name a permission of the catalogue that no request maps to: listing them
    /// allows or denies nothing, which their author surely did not mean.
    pub fn warnings(&self) -> Vec<String> {
        let mapped = mapping::mapped_permissions();
        let unmapped = |list: &[&'static Permission], which: &str, effect: &str| {
            list.iter()
                .filter(|p| !mapped.contains(p))
                .map(|p| {
                    format!("policy.{which}: no request the proxy maps needs '{}', so this entry {effect}", p.name)
                })
                .collect::<Vec<_>>()
        };
        let mut warnings = unmapped(&self.allow, "allow", "allows nothing");
        warnings.extend(unmapped(&self.deny, "deny", "denies nothing"));
        warnings
    }

    /// Decides on `method` and the canonical `path`.
    pub fn decide(&self, method: &Method, path: &str) -> Decision {
        let method = canonical_method(method);
        let required = mapping::required(&method, path);
        self.decide_mapped(&method, path, required)
    }

    /// The same, for a canonical method and path whose permission is already known (`required`,
    /// as [`mapping::required`] gives it): a request's target is mapped once.
    pub fn decide_mapped(&self, method: &Method, path: &str, required: Option<Required>) -> Decision {
        let decision = self.decide_one(method, path, required);
        match (&decision, split_reading(path)) {
            (Decision::Allow, Some(split)) => {
                match self.decide_one(method, &split, mapping::required(method, &split)) {
                    Decision::Deny { permission, reason } => Decision::Deny {
                        permission,
                        reason: format!("{reason} (reading the encoded slash as a separator: {split})"),
                    },
                    Decision::Allow => Decision::Allow,
                }
            }
            _ => decision,
        }
    }

    fn decide_one(&self, method: &Method, path: &str, required: Option<Required>) -> Decision {
        let permission = required.map(|r| r.permission);
        let deny = |reason: String| Decision::Deny { permission, reason };
        let is_read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            || required.is_some_and(|r| r.kind == Kind::Read);
        if self.read_only && !is_read {
            return deny("the proxy is in read-only mode".to_owned());
        }
        let segments = mapping::segments(path);
        if let Some(rule) = self.rules.iter().find(|r| r.matches(method, &segments)) {
            return if rule.allow { Decision::Allow } else { deny(format!("the rule '{}' denies it", rule.source)) };
        }
        if let Some(p) = permission.filter(|p| self.deny.contains(p)) {
            return deny(format!("the policy denies '{}'", p.name));
        }
        if !self.allow.is_empty() && !permission.is_some_and(|p| self.allow.contains(&p)) {
            let reason = match permission {
                Some(p) => format!("'{}' is not on the policy's allow list", p.name),
                None => "it needs no known permission, and the policy allows only listed ones".to_owned(),
            };
            return deny(reason);
        }
        Decision::Allow
    }
}

/// Headers by which web frameworks let a request be taken as another method (a `POST` to be run
/// as a `DELETE`, for clients that can send only `GET` and `POST`).
pub const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The override name `name` stands for, if it is one: compared without regard to case, and with
/// `_` read as `-` (IIS hands `X_HTTP_Method_Override` to applications as it does the other).
fn override_name(name: &str) -> Option<&'static str> {
    let spelt = name.trim().to_ascii_lowercase().replace('_', "-");
    METHOD_OVERRIDES.into_iter().find(|known| *known == spelt)
}

impl Policy {
    /// Decides on each method the request's override headers and query parameters name, as the
    /// server behind may take the request as that method (ASP.NET MVC reads
    /// `X-HTTP-Method-Override` from the query too): the first refusal, naming where the
    /// override was, or `Allow`.
    pub fn decide_overrides(&self, headers: &HeaderMap, query: Option<&str>, path: &str) -> Decision {
        let in_headers = headers
            .iter()
            .filter(|(name, _)| override_name(name.as_str()).is_some())
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()));
        let in_query = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(name, _)| override_name(name).is_some())
            .map(|(name, value)| (format!("the query's {name}"), value.into_owned().into_bytes()));
        for (source, value) in in_headers.chain(in_query) {
            let named = value.split(|&b| b == b',').filter_map(|m| Method::from_bytes(m.trim_ascii()).ok());
            for method in named {
                if let Decision::Deny { permission, reason } = self.decide(&method, path) {
                    let method = canonical_method(&method);
                    let reason = format!("{reason} (the request asks to be taken as {method} in {source})");
                    return Decision::Deny { permission, reason };
                }
            }
        }
        Decision::Allow
    }
}

impl Rule {
    fn matches(&self, method: &Method, segments: &[String]) -> bool {
        let method_matches = |m: &Method| m.as_str().eq_ignore_ascii_case(method.as_str());
        (self.methods.is_empty() || self.methods.iter().any(method_matches)) && matches_pattern(&self.pattern, segments)
    }
}

/// The path with every encoded `/` and `\` read as `/`, when it has any.
fn split_reading(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut found = false;
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i..i + 3).filter(|e| e[0] == b'%');
        if let Some(e) = escape
            && (e[1..].eq_ignore_ascii_case(b"2f") || e[1..].eq_ignore_ascii_case(b"5c"))
        {
            out.push('/');
            found = true;
            i += 3;
        } else {
            let len = path[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&path[i..i + len]);
            i += len;
        }
    }
    found.then_some(out)
}

/// A path pattern in the rules' syntax (`*` one segment, `**` the rest), for other settings that
/// pick paths the way policy rules do (the cache's rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(Vec<Segment>);

impl PathPattern {
    pub fn parse(path: &str) -> Result<PathPattern, String> {
        parse_pattern(path).map(PathPattern)
    }

    /// Whether the canonical `path` matches, as a rule's pattern would.
    pub fn matches(&self, path: &str) -> bool {
        matches_pattern(&self.0, &mapping::segments(path))
    }
}

fn parse_pattern(path: &str) -> Result<Vec<Segment>, String> {
    if !path.starts_with('/') {
        return Err(format!("path pattern '{path}' must start with /"));
    }
    let segments = mapping::segments(path);
    let last = segments.len().saturating_sub(1);
    segments
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s.as_str() {
            "**" if i == last => Ok(Segment::Rest),
            "**" => Err(format!("in '{path}', ** may only end a pattern")),
            "*" => Ok(Segment::One),
            _ if s.contains('*') => Err(format!("in '{path}', * stands for a whole segment only")),
            _ => Ok(Segment::Literal(s)),
        })
        .collect()
}

fn matches_pattern(pattern: &[Segment], segments: &[String]) -> bool {
    match (pattern.first(), segments.first()) {
        (Some(Segment::Rest), _) => true,
        (None, None) => true,
        (Some(Segment::One), Some(_)) => matches_pattern(&pattern[1..], &segments[1..]),
        (Some(Segment::Literal(l)), Some(s)) if l == s => matches_pattern(&pattern[1..], &segments[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
