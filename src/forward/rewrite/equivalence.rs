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
        let names: Vec<HeaderName> = headers.iter().filter(|(_, v)| holds(v)).map(|(n, _)| n.clone()).collect();
        for name in names {
            let kept: Vec<HeaderValue> = headers.get_all(&name).iter().filter(|v| !holds(v)).cloned().collect();
            headers.remove(&name);
            for value in kept {
                headers.append(name.clone(), value);
            }
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
        2 => prop::sample::select(vec!["Keep-Alive", "CLOSE", "X-Trace-Hop", "Transfer-Encoding", "TE", "Upgrade", "Connection"])
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
            "tok+en/1", "x tok+en/1 y", "tok%2Ben%2F1", "tok\\u002Ben\\/1", "tok+en/", "tok+en", "Bearer tok+en/1",
            "a=tok%2ben/1&b", "%", "\\u00",
        ])
        .prop_map(HeaderValue::from_static),
        1 => prop::collection::vec(0x80u8..=0xff, 1..4).prop_map(|v| HeaderValue::from_bytes(&v).unwrap()),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn stripping_agrees_with_the_oracle(headers in headers(value())) {
        let (mut new, mut old) = (headers.clone(), headers);
        super::strip_hop_by_hop(&mut new);
        oracle::strip_hop_by_hop(&mut old);
        prop_assert_eq!(fields(&new), fields(&old));
    }

    #[test]
    fn dropping_an_echoed_token_agrees_with_the_oracle(
        headers in headers(value()),
        token in prop::sample::select(vec!["tok+en/1", "tok+en", "t", "x", "tok+en/1 y"]),
    ) {
        let (mut new, mut old) = (headers.clone(), headers);
        super::drop_echoed_token(&mut new, token.as_bytes());
        oracle::drop_echoed_token(&mut old, token.as_bytes());
        prop_assert_eq!(fields(&new), fields(&old));
    }
}

/// Every hop-by-hop name is found at its place in the table, and no other name is.
#[test]
fn the_hop_index_finds_each_name_of_the_table_and_no_other() {
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        assert_eq!(super::hop_index(hop), Some(i), "{hop}");
    }
    for other in ["host", "date", "connections", "keep-alivE", "tE", "trailers", "upgrade-x", "x-upgrade"] {
        if let Ok(name) = HeaderName::from_bytes(other.as_bytes()) {
            assert_eq!(super::hop_index(&name), HOP_BY_HOP.iter().position(|h| *h == name), "{other}");
        }
    }
    for name in header_names() {
        assert_eq!(super::hop_index(&name), HOP_BY_HOP.iter().position(|h| *h == name), "{name}");
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
    for len in [2, 7, 10, 16, 17, 18, 19] {
        names.push(HeaderName::from_bytes("x".repeat(len).as_bytes()).unwrap());
    }
    names
}
