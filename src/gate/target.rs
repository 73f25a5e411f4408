//! What a request targets, as every check and the upstream see it: the method in one spelling,
//! the canonical path, and the permission the catalogue says it needs, worked out once per
//! request and shared by the policy, the metrics and the 403 hint.

use std::borrow::Cow;

use http::Method;

use crate::uem::mapping::{self, Required};

/// Paths the proxy answers itself and never forwards.
pub fn is_own(path: &str) -> bool {
    path.strip_prefix("/_proxy").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether the API, which ignores case, would read `path` as one of the proxy's own.
pub fn names_own(path: &str) -> bool {
    let path = path.as_bytes();
    path.get(..7).is_some_and(|start| start.eq_ignore_ascii_case(b"/_proxy"))
        && matches!(path.get(7), None | Some(b'/'))
}

/// A request's target, decided on and forwarded as it is here.
#[derive(Debug)]
pub struct Target<'a> {
    /// The canonical path: borrowed from the request when it already was canonical.
    pub path: Cow<'a, str>,
    /// What the request needs, when the path is in a family the catalogue maps.
    pub required: Option<Required>,
}

impl Target<'_> {
    /// The target of `method path`, or why the path cannot be forwarded.
    pub fn of<'a>(method: &Method, path: &'a str) -> Result<Target<'a>, &'static str> {
        if method == Method::CONNECT {
            return Err("CONNECT is not supported");
        }
        let path = canonical_path(path)?;
        let required = mapping::required(method, &path);
        Ok(Target { path, required })
    }

    /// The permission category for the metrics: `unknown` outside the mapped families.
    pub fn category(&self) -> &'static str {
        self.required.map_or("unknown", |r| r.permission.category)
    }
}

/// The methods of RFC 9110 (and `PATCH`), which callers sometimes spell in lower or mixed case.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The method as every check and the upstream see it: a standard method in any letter case
/// becomes upper case (`delete`, `Delete` → `DELETE`), because the API's server (IIS) ignores the
/// case and a check that did not would be spelt around. Any other method stays as it is.
pub fn canonical_method(method: &Method) -> Method {
    STANDARD_METHODS.iter().find(|m| m.as_str().eq_ignore_ascii_case(method.as_str())).unwrap_or(method).clone()
}

/// The path as it is forwarded and as policy decides on it: `.` and `..` segments resolved (also
/// when percent-encoded), empty segments dropped, percent-encoded unreserved characters decoded,
/// and bytes that may not stand in a path percent-encoded. An encoded `/` or `\` (`%2F`, `%5C`,
/// either case) is kept exactly as sent, as an ordinary character of its segment: it never splits
/// a segment and never makes one a dot segment. Refused: control characters, encoded or not,
/// malformed percent-encoding, and a literal `\`, which other parsers read as `/`.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    rebuilt(path).map(Cow::Owned)
}

/// The canonical path, built segment by segment.
fn rebuilt(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with /");
    }
    if path.contains('\\') {
        return Err("the path contains a backslash");
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let segment = canonical_segment(raw)?;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // As RFC 3986 resolves dots: a path ending in `/`, `/.` or `/..` names a directory.
    let last = path.rsplit('/').next().map(canonical_segment).transpose()?;
    if out.is_empty() || matches!(last.as_deref(), Some("" | "." | "..")) {
        out.push('/');
    }
    Ok(out)
}

/// True when `path` is already what [`canonical_path`] makes of it: segments of unreserved and
/// sub-delimiter characters only (no `%`, so nothing to decode or check), none empty except a
/// final one, none `.` or `..`. Most API paths are; they are then borrowed, not rebuilt. One
/// pass over the bytes, each looked up in [`PCHAR`].
fn is_canonical(path: &str) -> bool {
    let [b'/', rest @ ..] = path.as_bytes() else { return false };
    let mut start = 0;
    for end in 0..=rest.len() {
        if end < rest.len() {
            if rest[end] == b'/' {
                if let b"" | b"." | b".." = &rest[start..end] {
                    return false;
                }
                start = end + 1;
            } else if !PCHAR[usize::from(rest[end])] {
                return false;
            }
        } else if let b"." | b".." = &rest[start..] {
            return false;
        }
    }
    true
}

/// The bytes a path segment may hold as they are (RFC 3986 `pchar` without `%`).
const PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

fn canonical_segment(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
            let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err("the path has a malformed percent-encoding");
            };
            let decoded = (h * 16 + l) as u8;
            match decoded {
                // Byte for byte: a server behind may tell `%2f` from `%2F`, and the caller's
                // bytes are what it should see.
                b'/' | b'\\' => out.push_str(&raw[i..i + 3]),
                0..=0x1f | 0x7f => return Err("the path has an encoded control character"),
                c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => out.push(c as char),
                c => out.push_str(&format!("%{c:02X}")),
            }
            i += 3;
            continue;
        }
        let pchar = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if pchar {
            out.push(b as char);
        } else if b < 0x20 || b == 0x7f {
            return Err("the path has a control character");
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod oracle {
    /// [`super::is_canonical`] as it was before its one-pass form.
    pub fn is_canonical(path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else { return false };
        if rest.is_empty() {
            return true;
        }
        let mut segments = rest.split('/').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            let plain = segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b));
            if !plain || (segment.is_empty() && !last) || segment == "." || segment == ".." {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_resolve_dots_and_encoding_and_refuse_ambiguity() {
        let cases = [
            ("/api/mdm/devices/5", "/api/mdm/devices/5"),
            ("/API/v1/mdm/devices/search", "/API/v1/mdm/devices/search"),
            ("/api/system/users/", "/api/system/users/"),
            ("/api/mdm/../system/./info", "/api/system/info"),
            ("/api/%2e%2e/x", "/x"),
            ("/api/%2E./x/", "/x/"),
            ("//evil.example/steal", "/evil.example/steal"),
            ("/api//mdm///devices", "/api/mdm/devices"),
            ("/api/%6Ddm/%7Euser", "/api/mdm/~user"),
            ("/api/a%20b/%c3%a9", "/api/a%20b/%C3%A9"),
            ("/api/{x}", "/api/%7Bx%7D"),
            ("/../../etc", "/etc"),
            ("/", "/"),
            ("/api/x/..", "/api/"),
            ("/api/x/.", "/api/x/"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical_path(input).as_deref(), Ok(expected), "{input}");
        }
        for bad in ["/\\evil.example/", "/api/%00", "/api/%zz", "/api/%2", "/api/a\tb", "api/x", "*"] {
            assert!(canonical_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoded_slashes_stay_as_sent_inside_their_segment() {
        let cases = [
            ("/api/mdm/devices/serialnumber/AB%2FCD", "/api/mdm/devices/serialnumber/AB%2FCD"),
            ("/api/mdm/devices/serialnumber/ab%2fcd", "/api/mdm/devices/serialnumber/ab%2fcd"),
            ("/api/system/users/DOMAIN%5Cjdoe", "/api/system/users/DOMAIN%5Cjdoe"),
            ("/api/system/users/domain%5cjdoe/", "/api/system/users/domain%5cjdoe/"),
            ("/api/mdm/devices%2F5", "/api/mdm/devices%2F5"),
            // Never a dot segment, so never a climb.
            ("/api/mdm/devices/..%2F..%2Fsystem", "/api/mdm/devices/..%2F..%2Fsystem"),
            ("/api/mdm/%2E%2E%2F/x", "/api/mdm/..%2F/x"),
            ("/api/.%2f/x", "/api/.%2f/x"),
            ("/api/%2F/..", "/api/"),
            ("/api/%5c%5C/", "/api/%5c%5C/"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical_path(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn standard_methods_in_any_case_become_upper_case_and_others_stay() {
        let method = |m: &str| Method::from_bytes(m.as_bytes()).unwrap();
        for (sent, expected) in [
            ("delete", "DELETE"),
            ("Delete", "DELETE"),
            ("dElEtE", "DELETE"),
            ("get", "GET"),
            ("pAtCh", "PATCH"),
            ("trace", "TRACE"),
            ("connect", "CONNECT"),
            ("options", "OPTIONS"),
            ("head", "HEAD"),
            ("POST", "POST"),
            ("propfind", "propfind"),
            ("FOO", "FOO"),
            ("deletex", "deletex"),
        ] {
            assert_eq!(canonical_method(&method(sent)).as_str(), expected, "{sent}");
        }
        assert_eq!(canonical_method(&method("put")), Method::PUT);
    }

    #[test]
    fn canonical_paths_are_borrowed_and_others_rebuilt() {
        for same in ["/", "/api/mdm/devices/1", "/api/mdm/devices/", "/a/b;c=d", "/api/v1/x~y"] {
            assert!(matches!(canonical_path(same), Ok(Cow::Borrowed(_))), "{same}");
        }
        for rebuilt in ["//x", "/a//b", "/a/./b", "/a/..", "/a/%41", "/a b", "x"] {
            assert!(!is_canonical(rebuilt), "{rebuilt}");
        }
    }

    #[test]
    fn the_pchar_table_is_rfc_3986_s() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
            assert_eq!(PCHAR[usize::from(b)], rfc, "byte {b:#04x}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: proptest::prelude::ProptestConfig::default().cases.max(2048), ..Default::default() })]

        /// The one-pass check says what the old one said, so the same paths are borrowed and the
        /// same rebuilt: over API paths, dot segments, empty segments, every printable byte.
        #[test]
        fn the_canonical_check_agrees_with_the_oracle(
            path in "/?(/?(api|mdm|devices|1|v1|\\.|\\.\\.|\\.\\.\\.|[ -~]|é|%2[eEfF]|%41){0,3}){0,6}/?"
        ) {
            proptest::prop_assert_eq!(is_canonical(&path), oracle::is_canonical(&path), "{}", path);
        }

        /// The shortcut never lets through a path that rebuilding would change.
        #[test]
        fn a_borrowed_path_is_what_rebuilding_makes_of_it(path in "(/([a-z.%2F~;]|\\.\\.){0,4}){0,5}/?") {
            if is_canonical(&path) {
                let rebuilt = rebuilt(&path);
                proptest::prop_assert_eq!(rebuilt.as_deref(), Ok(path.as_str()));
            }
        }

        /// The same over every printable ASCII byte, encoded dots and slashes, and a byte
        /// outside ASCII, in segments that are often empty or dots.
        #[test]
        fn no_printable_path_is_borrowed_that_rebuilding_would_change(
            path in "(/([ -~]|é|\\.|\\.\\.|%2[eEfF]|%5[cC]|%41){0,5}){0,6}/?"
        ) {
            if is_canonical(&path) {
                let rebuilt = rebuilt(&path);
                proptest::prop_assert_eq!(rebuilt.as_deref(), Ok(path.as_str()));
            }
        }
    }
}
