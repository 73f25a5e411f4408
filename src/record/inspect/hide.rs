//! Finding a secret in text the inspector keeps, whatever its spelling: as is, JSON-escaped
//! (`\u002B`, `\/`, as .NET's encoder writes `+`), or percent-encoded (`%2B`), each character on
//! its own; and the start of one where a kept body was cut. The page decodes JSON and a reader
//! decodes URLs: a secret hidden only as written would show.

use std::borrow::Cow;

use super::REDACTED;
use crate::forward::spelling::{Found, spelled};

/// The fewest characters of a secret, cut at the end of a kept body, that are hidden: fewer tell
/// nothing of it, and would hide innocent text.
pub const PIECE: usize = 4;

/// `text` with every spelling of each of `secrets` shown as [`REDACTED`]; with `cut` (the text
/// is the start of something longer), also a start of one at its end.
pub fn hide<'a, S: AsRef<[u8]>>(text: &'a str, secrets: &[S], cut: bool) -> Cow<'a, str> {
    let mut text = Cow::Borrowed(text);
    for secret in secrets {
        let secret = secret.as_ref();
        if secret.is_empty() {
            continue;
        }
        if let Some(hidden) = hide_one(&text, secret, cut) {
            text = Cow::Owned(hidden);
        }
    }
    text
}

/// Query parameters whose values are credentials, by name (any case, `_` or `-`, percent-encoded
/// or not): the credential headers' names and the usual names of tokens and passwords.
const QUERY_CREDENTIALS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "aw-tenant-code",
    "access-token",
    "token",
    "client-secret",
    "password",
    "api-key",
    "apikey",
];

/// The query with the value of each credential parameter shown as [`REDACTED`], every other
/// byte as sent.
pub fn query(query: &str) -> Cow<'_, str> {
    let credential = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let name = url::form_urlencoded::parse(name.as_bytes()).next().map(|(name, _)| name).unwrap_or_default();
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        pair.contains('=') && QUERY_CREDENTIALS.contains(&name.as_str())
    };
    if !query.split('&').any(credential) {
        return Cow::Borrowed(query);
    }
    let pairs = query.split('&').map(|pair| match pair.split_once('=') {
        Some((name, _)) if credential(pair) => Cow::Owned(format!("{name}={REDACTED}")),
        _ => Cow::Borrowed(pair),
    });
    Cow::Owned(pairs.collect::<Vec<_>>().join("&"))
}

fn hide_one(text: &str, secret: &[u8], cut: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(i) = memchr::memchr3(secret[0], b'\\', b'%', &bytes[at..]).map(|i| at + i) {
        let hidden_to = match spelled(bytes, i, secret) {
            Some(Found::Whole(end)) => end,
            Some(Found::Start(n)) if cut && n >= PIECE.min(secret.len()) => bytes.len(),
            _ => {
                at = i + 1;
                continue;
            }
        };
        let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
        // Every spelling starts and ends at an ASCII byte or with the secret's own bytes:
        // character boundaries.
        out.push_str(&text[copied..i]);
        out.push_str(REDACTED);
        copied = hidden_to;
        at = hidden_to;
        if at >= bytes.len() {
            break;
        }
    }
    let mut out = out?;
    out.push_str(&text[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_hidden_and_other_text_kept() {
        let secrets = ["a+b/c=d"];
        let cases = [
            ("x a+b/c=d y", "x *** y"),
            (r"x a\u002Bb\/c\u003dd y", "x *** y"),
            ("x a%2bb%2Fc%3Dd y", "x *** y"),
            (r"\u0061\u002b\u0062\u002f\u0063\u003d\u0064", "***"),
            ("a+b/c=da+b/c=d", "******"),
            ("a+b/c=x \\ % ü a+b", "a+b/c=x \\ % ü a+b"),
        ];
        for (text, shown) in cases {
            assert_eq!(hide(text, &secrets, false), shown, "{text}");
        }
    }

    #[test]
    fn credential_parameters_of_a_query_show_as_stars() {
        let shown = query("Authorization=Bearer%20x&ACCESS_TOKEN=y&aw%2Dtenant%2Dcode=z&page=2&token&apikey=");
        assert_eq!(shown, "Authorization=***&ACCESS_TOKEN=***&aw%2Dtenant%2Dcode=***&page=2&token&apikey=***");
        assert!(matches!(query("page=2&size=10"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_start_of_a_secret_is_hidden_only_at_the_end_of_a_cut_text() {
        let secrets = ["secret-token"];
        assert_eq!(hide("body secr", &secrets, true), "body ***");
        assert_eq!(hide("body secr", &secrets, false), "body secr");
        assert_eq!(hide("body sec", &secrets, true), "body sec", "three characters tell nothing");
        assert_eq!(hide("secr body", &secrets, true), "secr body");
    }
}
