//! Answers to the mistakes a new user makes: a misspelt variable or key, a TOML typo on a secret's
//! line, credentials inside a URL. Pure functions, so each rule is tested without a process.

use super::source::SETTINGS;

/// Variables the command reads besides the settings' own.
const OTHER_VARIABLES: &[&str] = &["UEM_PROXY_CONFIG", super::defaults::VARIABLE];

/// A name's letters and digits only, upper case, without the `UEM_` and `PROXY_` prefixes:
/// `UEM_PROXY_READONLY`, `uem_read_only` and `UEM_READ_ONLY` all become `READONLY`.
fn squash(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let rest = upper.strip_prefix("UEM_").unwrap_or(&upper);
    let rest = rest.strip_prefix("PROXY_").unwrap_or(rest);
    rest.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// The edit distance between two short strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The known name nearest to `name`, if one is near enough to be a likely misspelling.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = squash(name);
    let (best, d) = known.into_iter().map(|k| (k, distance(&wanted, &squash(k)))).min_by_key(|(_, d)| *d)?;
    let allowed = match wanted.len() {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    };
    (d <= allowed).then_some(best)
}

/// Warnings for variables named `UEM_*` that no setting reads, each with the nearest known name.
/// The names come from [`SETTINGS`], so a new setting is known here without a second list.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known = || SETTINGS.iter().map(|(_, var)| *var).chain(OTHER_VARIABLES.iter().copied());
    let mut unknown: Vec<&str> =
        names.into_iter().filter(|n| n.to_ascii_uppercase().starts_with("UEM_") && !known().any(|k| k == *n)).collect();
    unknown.sort_unstable();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|name| match nearest(name, known()) {
            Some(near) => format!("{name} is not a uem-proxy setting and is ignored: did you mean {near}?"),
            None => format!("{name} is not a uem-proxy setting and is ignored"),
        })
        .collect()
}

/// The problem for a key of the configuration file that no setting has.
pub fn unknown_key(key: &str) -> String {
    let shown: String = key.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    match nearest(key, SETTINGS.iter().map(|(k, _)| *k).chain(["policy", "tenants"])) {
        Some(near) => format!("unknown setting '{shown}': did you mean {near}?"),
        None => format!("unknown setting '{shown}'"),
    }
}

/// Says where a TOML syntax error is: line, column and, when the line starts with a setting's
/// key, that key. Never the line's text, which may hold a secret (an unterminated string runs on
/// into whatever follows).
pub fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else { return error.message().to_owned() };
    let start = span.start.min(text.len());
    let before = &text.as_bytes()[..start];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    let key = key_of_line(text, line_start);
    let at = match key {
        Some(key) => format!("line {line}, column {column}, key {key}"),
        None => format!("line {line}, column {column}"),
    };
    format!("{at}: {}", error.message())
}

/// The key a line assigns, when it is a known setting's (or a `[policy]` entry's) bare key.
/// Any other text before `=` is not shown: it could be part of a value.
fn key_of_line(text: &str, line_start: usize) -> Option<&'static str> {
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    SETTINGS.iter().map(|(k, _)| *k).chain(["allow", "deny", "read_only"]).find(|k| *k == key)
}

/// A setting's raw value with any password in a URL's userinfo replaced by `***`, for error
/// messages and the printed configuration. Works on values that do not parse as URLs too (an
/// error message shows exactly those), so the userinfo ends at the value's last `@`: a password
/// may hold `/` or `#`, which would end a parsed authority early.
pub fn mask_userinfo(value: &str) -> String {
    // Without a scheme (`bob:pa55@proxy.corp:3128`), the userinfo starts the value.
    let start = value.find("://").map_or(0, |i| i + 3);
    let Some(at) = value[start..].rfind('@').map(|i| start + i) else { return value.to_owned() };
    let userinfo = &value[start..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{}{user}{}", &value[..start], &value[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_variables_get_the_nearest_name() {
        let warnings = unknown_variables([
            "UEM_PROXY_READONLY",
            "UEM_CLIENTID",
            "UEM_READ_ONLY",
            "uem_proxy_listen",
            "UEM_API_URL",
            "UEM_PROXY_CONFIG",
            "UEM_SOMETHING_ELSE_ENTIRELY",
            "PATH",
            "HOME_UEM_X",
        ]);
        assert_eq!(
            warnings,
            [
                "UEM_CLIENTID is not a uem-proxy setting and is ignored: did you mean UEM_CLIENT_ID?",
                "UEM_PROXY_READONLY is not a uem-proxy setting and is ignored: did you mean UEM_PROXY_READ_ONLY?",
                "UEM_READ_ONLY is not a uem-proxy setting and is ignored: did you mean UEM_PROXY_READ_ONLY?",
                "UEM_SOMETHING_ELSE_ENTIRELY is not a uem-proxy setting and is ignored",
                "uem_proxy_listen is not a uem-proxy setting and is ignored: did you mean UEM_PROXY_LISTEN?",
            ]
        );
    }

    #[test]
    fn every_setting_is_known_and_its_own_nearest() {
        for (key, var) in SETTINGS {
            assert!(unknown_variables([*var]).is_empty(), "{var}");
            assert_eq!(nearest(var, SETTINGS.iter().map(|(_, v)| *v)), Some(*var));
            assert_eq!(nearest(key, SETTINGS.iter().map(|(k, _)| *k)), Some(*key));
        }
    }

    #[test]
    fn unknown_keys_get_the_nearest_key() {
        assert_eq!(unknown_key("readonly"), "unknown setting 'readonly': did you mean read_only?");
        assert_eq!(unknown_key("clientsecret"), "unknown setting 'clientsecret': did you mean client_secret?");
        assert_eq!(unknown_key("bogus"), "unknown setting 'bogus'");
    }

    #[test]
    fn a_toml_error_names_line_column_and_key_but_not_the_text() {
        let text = "api_url = \"https://as1.awmdm.com\"\nclient_secret = \"Zq9-leaky-secret\nclient_id = \"c\"\n";
        let error = text.parse::<toml::Table>().unwrap_err();
        let shown = toml_error(text, &error);
        assert!(shown.starts_with("line 2, column "), "{shown}");
        assert!(shown.contains("key client_secret"), "{shown}");
        for leak in ["Zq9", "leaky", "secret\"", "client_id"] {
            assert!(!shown.contains(leak), "{leak} in {shown}");
        }
        // A line that is not a known key's names no key: the text before '=' may be a value.
        let text = "client_secret = \"\"\"\nhunter2 = x\n";
        let error = text.parse::<toml::Table>().unwrap_err();
        let shown = toml_error(text, &error);
        assert!(!shown.contains("hunter2"), "{shown}");
        // Multi-byte characters count as one column.
        let error = "é = =".parse::<toml::Table>().unwrap_err();
        assert!(toml_error("é = =", &error).starts_with("line 1, column 5"), "{}", toml_error("é = =", &error));
    }

    #[test]
    fn passwords_in_urls_are_masked_wherever_they_stand() {
        assert_eq!(mask_userinfo("http://bob:pa55@proxy.corp:3128"), "http://bob:***@proxy.corp:3128");
        assert_eq!(mask_userinfo("http://bob:p@ss@proxy.corp/"), "http://bob:***@proxy.corp/");
        assert_eq!(mask_userinfo("http://bob:pa/s#s@proxy"), "http://bob:***@proxy");
        assert_eq!(mask_userinfo("http://bob@proxy.corp"), "http://bob@proxy.corp");
        assert_eq!(mask_userinfo("https://as1.awmdm.com/api"), "https://as1.awmdm.com/api");
        assert_eq!(mask_userinfo("proxy.corp:3128"), "proxy.corp:3128");
        assert_eq!(mask_userinfo("bob:pa55@proxy.corp:3128"), "bob:***@proxy.corp:3128");
    }
}
