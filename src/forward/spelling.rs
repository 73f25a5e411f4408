//! Finding a credential however a text spells it: as is, JSON-escaped (`\u002B`, `\/`, as .NET's
//! encoder writes `+`), or percent-encoded (`%2B`), each character on its own, and in any letter
//! case. An API that echoes what it received may re-encode it, or case it (a header name is
//! lower case); a reader decodes it again, and a token of hexadecimal digits tells all in
//! either case.

/// How a spelling of a secret at one place matched.
pub enum Found {
    /// The whole secret, ending here.
    Whole(usize),
    /// This many of its characters, then the end of the text.
    Start(usize),
}

/// Whether `text` holds `secret` in any spelling.
pub fn holds(text: &[u8], secret: &[u8]) -> bool {
    let Some(&first) = secret.first() else { return false };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let starts = |b: &u8| matches!(*b, b'\\' | b'%') || *b == lower || *b == upper;
    let mut at = 0;
    while let Some(i) = text[at..].iter().position(starts).map(|i| at + i) {
        if matches!(spelled(text, i, secret), Some(Found::Whole(_))) {
            return true;
        }
        at = i + 1;
    }
    false
}

/// Whether a spelling of `secret` starts at `text[at]`.
pub fn spelled(text: &[u8], mut at: usize, secret: &[u8]) -> Option<Found> {
    for (n, &want) in secret.iter().enumerate() {
        if at >= text.len() {
            return Some(Found::Start(n));
        }
        at += one(&text[at..], want)?;
    }
    Some(Found::Whole(at))
}

/// The length of a spelling of the byte `want` at the start of `text`.
fn one(text: &[u8], want: u8) -> Option<usize> {
    let hex = |digits: &[u8]| -> Option<u32> {
        let digits = std::str::from_utf8(digits).ok()?;
        if digits.bytes().all(|b| b.is_ascii_hexdigit()) { u32::from_str_radix(digits, 16).ok() } else { None }
    };
    let is_want =
        |code: Option<u32>| code.and_then(|c| u8::try_from(c).ok()).is_some_and(|b| b.eq_ignore_ascii_case(&want));
    match text {
        [first, ..] if first.eq_ignore_ascii_case(&want) => Some(1),
        [b'\\', b'/', ..] if want == b'/' => Some(2),
        [b'\\', b'u', rest @ ..] if rest.len() >= 4 && is_want(hex(&rest[..4])) => Some(6),
        [b'%', rest @ ..] if rest.len() >= 2 && is_want(hex(&rest[..2])) => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_found_in_every_spelling_and_not_elsewhere() {
        let secret = b"a+b/c=d";
        for text in [
            "x a+b/c=d",
            r"a\u002Bb\/c\u003dd",
            "next?code=a%2bb%2Fc%3Dd&x=1",
            r"\u0061+b/c=d",
            "A+B/C=D",
            "x-a+b/c=d-lower",
            r"\u0041+b/C=d",
            "%41+b/c=d",
        ] {
            assert!(holds(text.as_bytes(), secret), "{text}");
        }
        for text in ["a+b/c=", "a b/c=d", "a%2b%2Fc=d", "", "%", r"\u00"] {
            assert!(!holds(text.as_bytes(), secret), "{text}");
        }
        assert!(!holds(b"anything", b""));
    }
}
