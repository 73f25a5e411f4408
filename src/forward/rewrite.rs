//! Pure header and URL rules applied between caller and upstream, in both directions.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// `Proxy-*` credentials and the non-standard `Proxy-Connection`. Never forwarded either way.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// UEM's API key header. A caller's is dropped; the proxy sends the configured one, if any.
pub const AW_TENANT_CODE: HeaderName = HeaderName::from_static("aw-tenant-code");

/// The names the rules act on: [`HOP_BY_HOP`]'s at their places, then these.
const AUTHORIZATION_AT: usize = 9;
const TENANT_CODE_AT: usize = 10;
const HOST_AT: usize = 11;
const ACCEPT_AT: usize = 12;
const LOCATION_AT: usize = 13;

/// Which of the names the rules act on a message has, found in one pass over its names: the
/// rules then remove or look up only those there (a lookup hashes the name, a pass does not).
struct Seen([bool; 14]);

impl Seen {
    fn of(headers: &HeaderMap) -> Seen {
        let mut seen = [false; 14];
        for name in headers.keys() {
            if let Some(i) = known_index(name) {
                seen[i] = true;
            }
        }
        Seen(seen)
    }

    fn any_hop(&self) -> bool {
        self.0[..HOP_BY_HOP.len()].contains(&true)
    }
}

/// Where `name` stands among the names the rules act on, if it does: told by its length first,
/// as most names have a length none of them has.
fn known_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    let (candidates, names): (&[usize], &[&str]) = match name.len() {
        2 => (&[5], &["te"]),
        4 => (&[HOST_AT], &["host"]),
        6 => (&[ACCEPT_AT], &["accept"]),
        7 => (&[6, 8], &["trailer", "upgrade"]),
        8 => (&[LOCATION_AT], &["location"]),
        10 => (&[0, 1], &["connection", "keep-alive"]),
        13 => (&[AUTHORIZATION_AT], &["authorization"]),
        14 => (&[TENANT_CODE_AT], &["aw-tenant-code"]),
        16 => (&[2], &["proxy-connection"]),
        17 => (&[7], &["transfer-encoding"]),
        18 => (&[3], &["proxy-authenticate"]),
        19 => (&[4], &["proxy-authorization"]),
        _ => return None,
    };
    candidates.iter().zip(names).find(|(_, known)| **known == name).map(|(i, _)| *i)
}

/// How many `Connection` values are held on the stack while the names they list are removed;
/// more go to a `Vec`.
const FEW_CONNECTION_VALUES: usize = 4;

/// The caller's headers as they will be sent, as far as the caller decides it: without the
/// fields its `Connection` names, and the other hop-by-hop fields. Borrowed when there is none,
/// the usual case.
pub fn as_forwarded(headers: &HeaderMap) -> std::borrow::Cow<'_, HeaderMap> {
    if !HOP_BY_HOP.iter().any(|name| headers.contains_key(name)) {
        return std::borrow::Cow::Borrowed(headers);
    }
    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped);
    std::borrow::Cow::Owned(stripped)
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let seen = Seen::of(headers);
    strip_seen(headers, &seen);
}

/// [`strip_hop_by_hop`] with the names already looked at.
fn strip_seen(headers: &mut HeaderMap, seen: &Seen) {
    // Most messages have none, or only `Connection: keep-alive`: one look at the few names
    // present, and a removal only of those there.
    if !seen.any_hop() {
        return;
    }
    // The `Connection` values are kept aside (a clone shares their bytes), so that the names
    // they list can be removed as they are read: in their order, then the table's. A removal
    // moves the last header into the gap, so this order decides the order of the headers that
    // stay.
    if seen.0[0] {
        let mut few: [Option<HeaderValue>; FEW_CONNECTION_VALUES] = Default::default();
        let mut more = Vec::new();
        for (i, value) in headers.get_all(header::CONNECTION).iter().enumerate() {
            match few.get_mut(i) {
                Some(slot) => *slot = Some(value.clone()),
                None => more.push(value.clone()),
            }
        }
        for value in few.iter().flatten().chain(&more) {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',').map(str::trim) {
                // A hop-by-hop name listed (`keep-alive`) is taken from the table, and removed
                // only if it was seen; any other is looked up as it is written, which allocates
                // nothing, and one that is not a header name removes nothing.
                match HOP_BY_HOP.iter().position(|hop| name.eq_ignore_ascii_case(hop.as_str())) {
                    Some(i) if seen.0[i] => headers.remove(&HOP_BY_HOP[i]),
                    Some(_) => None,
                    None => headers.remove(name),
                };
            }
        }
    }
    for (hop, _) in HOP_BY_HOP.iter().zip(&seen.0).filter(|(_, there)| **there) {
        headers.remove(hop);
    }
}

/// Turns a caller's headers into the upstream's, except for `Authorization`, which the caller of
/// this function sets from the current token.
///
/// The caller's `Authorization` goes (legacy scripts send Basic credentials that the API must not
/// see), so does `Host` (the client sets the upstream's from the URL). `Accept: application/json`
/// is added only when the caller sent no `Accept`, because the API may answer XML otherwise; a
/// caller's own `Accept`, versioned media types included, is left alone.
pub fn request_headers(headers: &mut HeaderMap) {
    // A name not seen before stripping is not there after it; one seen may be gone (a
    // `Connection` may list it).
    let seen = Seen::of(headers);
    strip_seen(headers, &seen);
    for (at, name) in
        [(AUTHORIZATION_AT, header::AUTHORIZATION), (TENANT_CODE_AT, AW_TENANT_CODE), (HOST_AT, header::HOST)]
    {
        if seen.0[at] {
            headers.remove(name);
        }
    }
    if !seen.0[ACCEPT_AT] || !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
}

/// The proxy's own base URL as the caller addressed it (`http://127.0.0.1:8080`, or with the
/// tenant prefix the caller used, `http://127.0.0.1:8080/t/uat`), kept in parts and made into
/// text only for an answer that needs it: one with a `Location`, or a body holding the API's URL.
#[derive(Clone, Debug)]
pub struct ProxyBase {
    pub https: bool,
    /// The caller's `Host`, or the listener's own `host:port` for callers that send none.
    pub host: HeaderValue,
    /// The tenant prefix the caller used (`/t/uat`), or `""`.
    pub prefix: String,
}

impl ProxyBase {
    pub fn text(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = self.host.to_str().unwrap_or("localhost");
        format!("{scheme}://{host}{}", self.prefix)
    }
}

/// Where redirects the upstream sends should point instead: the upstream's base and the address
/// the caller used to reach the proxy.
pub struct LocationRewrite<'a> {
    /// The API base URL as configured, without a trailing slash (`https://as1.awmdm.com`).
    pub upstream_base: &'a str,
    /// The proxy's own base as the caller addressed it (`http://127.0.0.1:8080`, or with the
    /// tenant prefix the caller used, `http://127.0.0.1:8080/t/uat`).
    pub proxy_base: &'a str,
    /// The tenant prefix alone (`/t/uat`), or `""`: a path-absolute `Location` gets it, so that
    /// a redirect from one tenant's API never leads to another tenant.
    pub prefix: &'a str,
    /// The API base's path (`/uem`), or `""`.
    pub upstream_path: &'a str,
}

/// Turns an upstream response's headers into the caller's: hop-by-hop headers go, repeated headers
/// such as `Set-Cookie` stay, and a `Location` pointing into the API is pointed at the proxy. An
/// `Authorization` header, which no response should carry, goes too: an upstream that echoes
/// request headers must not hand the token to the caller.
pub fn response_headers(headers: &mut HeaderMap, rewrite: &LocationRewrite<'_>) {
    let seen = Seen::of(headers);
    strip_seen(headers, &seen);
    if seen.0[AUTHORIZATION_AT] {
        headers.remove(header::AUTHORIZATION);
    }
    if !seen.0[LOCATION_AT] {
        return;
    }
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(rewritten) = rewrite_location(location, rewrite)
        && let Ok(value) = HeaderValue::try_from(rewritten)
    {
        headers.insert(header::LOCATION, value);
    }
}

/// Whether `text` holds `secret` in any spelling (see [`spelling`](super::spelling)).
pub fn holds_secret(text: &[u8], secret: &[u8]) -> bool {
    // Every spelling of a byte is at least one byte long: a text shorter than the secret (most
    // are, beside a long credential) cannot hold it, and is not searched.
    !secret.is_empty() && text.len() >= secret.len() && super::spelling::holds(text, secret)
}

/// Drops every response header value that holds `token` (the credential the request was sent
/// with) in any spelling, percent-encoded, JSON-escaped or in another letter case too, and
/// every field whose name holds it: an upstream that echoes request headers under other names,
/// sets the token as a cookie or puts it in a `Location` query must not hand it to the caller.
/// Other values of the same field stay.
pub fn drop_echoed_token(headers: &mut HeaderMap, token: &[u8]) {
    let named = |n: &HeaderName| holds_secret(n.as_str().as_bytes(), token);
    let holds = |v: &HeaderValue| holds_secret(v.as_bytes(), token);
    if !headers.iter().any(|(n, v)| holds(v) || named(n)) {
        return;
    }
    let names: Vec<HeaderName> = headers.iter().filter(|(n, v)| holds(v) || named(n)).map(|(n, _)| n.clone()).collect();
    for name in names {
        let kept: Vec<HeaderValue> = match named(&name) {
            true => Vec::new(),
            false => headers.get_all(&name).iter().filter(|v| !holds(v)).cloned().collect(),
        };
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
}

/// The rewritten `Location`, or `None` when it points elsewhere and is left as it is.
pub fn rewrite_location(location: &str, rewrite: &LocationRewrite<'_>) -> Option<String> {
    if !rewrite.prefix.is_empty() && location.starts_with('/') && !location.starts_with("//") {
        let rest = strip_prefix_ignore_case(location, rewrite.upstream_path)
            .filter(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
            .unwrap_or(location);
        return Some(format!("{}{rest}", rewrite.prefix));
    }
    let base = rewrite.upstream_base;
    let head = location.get(..base.len())?;
    if !head.eq_ignore_ascii_case(base) {
        return None;
    }
    let rest = &location[base.len()..];
    // `https://as1.awmdm.com.evil.net/` or `https://as1.awmdm.com:8443/` share the prefix only.
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None;
    }
    Some(format!("{}{rest}", rewrite.proxy_base))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_rules_act_on_is_found_at_its_own_place() {
        let others = [
            (AUTHORIZATION_AT, header::AUTHORIZATION),
            (TENANT_CODE_AT, AW_TENANT_CODE),
            (HOST_AT, header::HOST),
            (ACCEPT_AT, header::ACCEPT),
            (LOCATION_AT, header::LOCATION),
        ];
        let places = HOP_BY_HOP.iter().cloned().enumerate().chain(others);
        for (at, name) in places {
            assert_eq!(known_index(&name), Some(at), "{name}");
        }
        for name in ["tee", "hosts", "x-connection", "cookie", "content-length", "proxy-authorizatio"] {
            assert_eq!(known_index(&HeaderName::from_static(name)), None, "{name}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("x-other", "2"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn request_loses_credentials_and_host_and_gains_accept_only_when_absent() {
        let mut h = map(&[("authorization", "Basic dXNlcjpwYXNz"), ("host", "127.0.0.1:8080"), ("aw-x", "1")]);
        request_headers(&mut h);
        assert!(h.get("authorization").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h["accept"], "application/json");

        let mut h = map(&[("accept", "application/json;version=2")]);
        request_headers(&mut h);
        assert_eq!(h["accept"], "application/json;version=2");
    }

    #[test]
    fn an_authorization_header_from_upstream_never_reaches_the_caller() {
        let mut h = map(&[("authorization", "Bearer tok-1"), ("x-kept", "1")]);
        let rw = LocationRewrite {
            upstream_base: "https://as1.awmdm.com",
            proxy_base: "http://localhost:8080",
            prefix: "",
            upstream_path: "",
        };
        response_headers(&mut h, &rw);
        assert!(h.get("authorization").is_none());
    }

    #[test]
    fn repeated_response_headers_survive() {
        let mut h = map(&[("set-cookie", "a=1"), ("set-cookie", "b=2"), ("connection", "close")]);
        let rw = LocationRewrite {
            upstream_base: "https://as1.awmdm.com",
            proxy_base: "http://localhost:8080",
            prefix: "",
            upstream_path: "",
        };
        response_headers(&mut h, &rw);
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn locations_into_the_api_point_at_the_proxy_and_others_stay() {
        let rw = LocationRewrite {
            upstream_base: "https://as1.awmdm.com",
            proxy_base: "http://localhost:8080",
            prefix: "",
            upstream_path: "",
        };
        let cases = [
            ("https://as1.awmdm.com/api/mdm/devices/5", Some("http://localhost:8080/api/mdm/devices/5")),
            ("HTTPS://AS1.AWMDM.COM/api/x?y=1", Some("http://localhost:8080/api/x?y=1")),
            ("https://as1.awmdm.com", Some("http://localhost:8080")),
            ("https://as1.awmdm.com.evil.net/api", None),
            ("https://as1.awmdm.com:8443/api", None),
            ("https://cn1.awmdm.com/AirWatch", None),
            ("/api/relative", None),
        ];
        for (location, expected) in cases {
            assert_eq!(rewrite_location(location, &rw).as_deref(), expected, "{location}");
        }
        let prefixed = LocationRewrite {
            upstream_base: "http://10.0.0.5:81/uem",
            proxy_base: "http://[::1]:8080",
            prefix: "",
            upstream_path: "",
        };
        assert_eq!(
            rewrite_location("http://10.0.0.5:81/uem/api/x", &prefixed).as_deref(),
            Some("http://[::1]:8080/api/x")
        );
        assert_eq!(rewrite_location("http://10.0.0.5:81/uemx", &prefixed), None);
    }

    #[test]
    fn a_tenants_redirects_keep_its_prefix_however_they_are_written() {
        let rw = LocationRewrite {
            upstream_base: "https://uem.corp/uem",
            proxy_base: "http://localhost:8080/t/uat",
            prefix: "/t/uat",
            upstream_path: "/uem",
        };
        for (location, expected) in [
            ("https://uem.corp/uem/api/mdm/devices/5", Some("http://localhost:8080/t/uat/api/mdm/devices/5")),
            ("/uem/api/mdm/devices/5?x=1", Some("/t/uat/api/mdm/devices/5?x=1")),
            ("/UEM/api/x", Some("/t/uat/api/x")),
            ("/uemx/api", Some("/t/uat/uemx/api")),
            ("/api/x", Some("/t/uat/api/x")),
            ("//evil.example/api", None),
            ("https://evil.example/api", None),
        ] {
            assert_eq!(rewrite_location(location, &rw).as_deref(), expected, "{location}");
        }
    }
}

#[cfg(test)]
mod equivalence;
