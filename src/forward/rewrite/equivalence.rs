//! The header rules as they were before they were made cheaper, kept as the oracle the new ones
//! are compared with, and the properties that compare them: over generated header maps, the same
//! headers stay, in the same order.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::HOP_BY_HOP;

mod oracle {
    use super::*;

    /// Removes hop-by-hop headers, including every header the `Connection` header names.
    pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
        // Most messages have none, or only `Connection: keep-alive`: one look at the few names
        // present, and a removal only of those there.
        let mut present = [false; HOP_BY_HOP.len()];
        for name in headers.keys() {
            if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
                present[i] = true;
            }
        }
        if !present.contains(&true) {
            return;
        }
        // A hop-by-hop name listed (`keep-alive`) is taken from the table, not parsed again.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter_map(|name| match HOP_BY_HOP.iter().find(|hop| name.eq_ignore_ascii_case(hop.as_str())) {
                Some(hop) => Some(hop.clone()),
                None => HeaderName::from_bytes(name.as_bytes()).ok(),
            })
            .collect();
        // The listed names first, in their order, then the table's: a removal moves the last header
        // into the gap, so this order decides the order of the headers that stay.
        for name in &named {
            headers.remove(name);
        }
        for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
            headers.remove(hop);
        }
    }

    /// Drops every response header value that holds `token` (the credential the request was sent
    /// with) in any spelling, percent-encoded or JSON-escaped too: an upstream that echoes request
    /// headers under other names, sets the token as a cookie or puts it in a `Location` query must
    /// not hand it to the caller. Other values of the same field stay.
    pub(super) fn drop_echoed_token(headers: &mut HeaderMap, token: &[u8]) {
        if token.is_empty() {
            return;
        }
        let holds = |v: &HeaderValue| crate::forward::spelling::holds(v.as_bytes(), token);
        let named = |n: &HeaderName| crate::forward::spelling::holds(n.as_str().as_bytes(), token);
        let names: Vec<HeaderName> =
            headers.iter().filter(|(n, v)| holds(v) || named(n)).map(|(n, _)| n.clone()).collect();
        for name in names {
            let kept: Vec<HeaderValue> =
                headers.get_all(&name).iter().filter(|v| !holds(v) && !named(&name)).cloned().collect();
            headers.remove(&name);
            for value in kept {
                headers.append(name.clone(), value);
            }
        }
    }

    /// Turns a caller's headers into the upstream's, except for `Authorization`, which the caller of
    /// this function sets from the current token.
    ///
    /// The caller's `Authorization` goes (legacy scripts send Basic credentials that the API must not
    /// see), so does `Host` (the client sets the upstream's from the URL). `Accept: application/json`
    /// is added only when the caller sent no `Accept`, because the API may answer XML otherwise; a
    /// caller's own `Accept`, versioned media types included, is left alone.
    pub(super) fn request_headers(headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(crate::forward::rewrite::AW_TENANT_CODE);
        headers.remove(header::HOST);
        if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
    }

    /// Turns an upstream response's headers into the caller's: hop-by-hop headers go, repeated headers
    /// such as `Set-Cookie` stay, and a `Location` pointing into the API is pointed at the proxy. An
    /// `Authorization` header, which no response should carry, goes too: an upstream that echoes
    /// request headers must not hand the token to the caller.
    pub(super) fn response_headers(headers: &mut HeaderMap, rewrite: &crate::forward::rewrite::LocationRewrite<'_>) {
        strip_hop_by_hop(headers);
        headers.remove(header::AUTHORIZATION);
        let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Some(rewritten) = crate::forward::rewrite::rewrite_location(location, rewrite)
            && let Ok(value) = HeaderValue::try_from(rewritten)
        {
            headers.insert(header::LOCATION, value);
        }
    }
}

/// A header map's fields in their order.
fn fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

/// Field names: every hop-by-hop one, names a `Connection` may list, and others.
fn name() -> impl Strategy<Value = HeaderName> {
    let mut names: Vec<&'static str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
    names.extend([
        "x-trace-hop",
        "x-other",
        "x-tok-en1",
        "set-cookie",
        "close",
        "host",
        "date",
        "server",
        "content-type",
        "content-length",
        "location",
        "x-echo",
        "user-agent",
        "authorization",
        "aw-tenant-code",
        "accept",
        "x-a",
        "accept-encoding",
        "te-x",
        "upgrade-insecure-requests",
    ]);
    prop::sample::select(names).prop_map(HeaderName::from_static)
}

/// `Connection` values: lists of names in any case, with odd white space and commas, names that
/// are not header names, and bytes that make a value no text.
fn connection_value() -> impl Strategy<Value = HeaderValue> {
    let listed = prop_oneof![
        4 => name().prop_map(|n| n.as_str().to_owned()),
        2 => prop::sample::select(vec![
            "Keep-Alive", "CLOSE", "X-Trace-Hop", "Transfer-Encoding", "TE", "Upgrade", "Connection", "Accept", "Host",
            "Authorization", "Location",
        ])
            .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", " ", "a b", "x@y", "\u{e9}"]).prop_map(str::to_owned),
    ];
    (prop::collection::vec(listed, 1..4), prop::sample::select(vec![",", ", ", " ,", ",,"]))
        .prop_map(|(names, sep)| HeaderValue::from_bytes(names.join(sep).as_bytes()).unwrap())
}

fn headers(values: impl Strategy<Value = HeaderValue> + Clone) -> impl Strategy<Value = HeaderMap> {
    let field = prop_oneof![
        3 => (name(), values),
        1 => (Just(header::CONNECTION), connection_value()),
    ];
    prop::collection::vec(field, 0..12).prop_map(|fields| {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(name, value);
        }
        headers
    })
}

/// Values of any visible bytes, some holding the token in one of its spellings.
fn value() -> BoxedStrategy<HeaderValue> {
    prop_oneof![
        3 => "[ -~]{0,12}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
        1 => prop::sample::select(vec![
            "https://as1.awmdm.com/uem/api/x", "/uem/api/x?y=1", "/api/x", "//evil.example/x", "https://evil.example/",
        ])
        .prop_map(HeaderValue::from_static),
        1 => prop::sample::select(vec![
            "tok+en/1", "x tok+en/1 y", "tok%2Ben%2F1", "tok\\u002Ben\\/1", "tok+en/", "tok+en", "Bearer tok+en/1",
            "a=tok%2ben/1&b", "%", "\\u00", "TOK+EN/1", "t%4Fk+En/1", "tok-en1",
        ])
        .prop_map(HeaderValue::from_static),
        1 => prop::collection::vec(0x80u8..=0xff, 1..4).prop_map(|v| HeaderValue::from_bytes(&v).unwrap()),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(1024), ..ProptestConfig::default() })]

    #[test]
    fn stripping_agrees_with_the_oracle(headers in headers(value())) {
        let (mut new, mut old) = (headers.clone(), headers);
        super::strip_hop_by_hop(&mut new);
        oracle::strip_hop_by_hop(&mut old);
        prop_assert_eq!(fields(&new), fields(&old));
    }

    #[test]
    fn request_headers_agree_with_the_oracle(headers in headers(value())) {
        let (mut new, mut old) = (headers.clone(), headers);
        super::request_headers(&mut new);
        oracle::request_headers(&mut old);
        prop_assert_eq!(fields(&new), fields(&old));
    }

    #[test]
    fn response_headers_agree_with_the_oracle(headers in headers(value()), prefixed in any::<bool>()) {
        let rewrite = super::LocationRewrite {
            upstream_base: "https://as1.awmdm.com/uem",
            proxy_base: "http://127.0.0.1:8080/t/uat",
            prefix: if prefixed { "/t/uat" } else { "" },
            upstream_path: "/uem",
        };
        let (mut new, mut old) = (headers.clone(), headers);
        super::response_headers(&mut new, &rewrite);
        oracle::response_headers(&mut old, &rewrite);
        prop_assert_eq!(fields(&new), fields(&old));
    }

    #[test]
    fn dropping_an_echoed_token_agrees_with_the_oracle(
        headers in headers(value()),
        token in prop::sample::select(vec!["tok+en/1", "tok+en", "t", "x", "tok+en/1 y", "TOK-EN1", "-en1"]),
    ) {
        let (mut new, mut old) = (headers.clone(), headers);
        super::drop_echoed_token(&mut new, token.as_bytes());
        oracle::drop_echoed_token(&mut old, token.as_bytes());
        prop_assert_eq!(fields(&new), fields(&old));
    }
}

/// Every name the rules act on is found at its place, and no other name is.
#[test]
fn the_known_index_finds_each_name_the_rules_act_on_and_no_other() {
    let mut known: Vec<HeaderName> = HOP_BY_HOP.to_vec();
    known.extend([header::AUTHORIZATION, super::AW_TENANT_CODE, header::HOST, header::ACCEPT, header::LOCATION]);
    for (i, name) in known.iter().enumerate() {
        assert_eq!(super::known_index(name), Some(i), "{name}");
    }
    for name in header_names() {
        assert_eq!(super::known_index(&name), known.iter().position(|k| *k == name), "{name}");
    }
}

/// The standard header names `http` knows, and some custom ones of every hop-by-hop length.
fn header_names() -> Vec<HeaderName> {
    let mut names = vec![
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::COOKIE,
        header::DATE,
        header::ETAG,
        header::HOST,
        header::LOCATION,
        header::ORIGIN,
        header::PRAGMA,
        header::RANGE,
        header::REFERER,
        header::SERVER,
        header::SET_COOKIE,
        header::USER_AGENT,
        header::VARY,
        header::VIA,
        header::WARNING,
        header::AGE,
        header::ALLOW,
        header::CONTENT_ENCODING,
        header::EXPIRES,
        header::IF_MATCH,
        header::LINK,
        header::RETRY_AFTER,
    ];
    for len in [2, 4, 6, 7, 8, 10, 13, 14, 16, 17, 18, 19] {
        names.push(HeaderName::from_bytes("x".repeat(len).as_bytes()).unwrap());
    }
    names
}
