//! Properties of the pure rules, on generated inputs: the canonical path, the permission mapping
//! and the body URL rewriter. Each runs 256 cases by default; `PROPTEST_CASES=100000 cargo test
//! --test properties` runs longer.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame};
use proptest::prelude::*;
use proptest::sample::select;
use uem_proxy::forward::body_rewrite::{Replacer, Rewritten};
use uem_proxy::gate::policy::{Policy, PolicyFile};
use uem_proxy::gate::target::{canonical_method, canonical_path};
use uem_proxy::uem::mapping;

// --- The canonical path ----------------------------------------------------------------------

/// Segments that make canonicalisation work: dots plain and encoded, encoded slashes, escapes of
/// unreserved and reserved bytes, malformed escapes, and characters a path may not hold.
fn segment() -> impl Strategy<Value = String> {
    let tricky = select(vec![
        "",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        ".%2e",
        "%2e%2E",
        "%2E.",
        "..%2F",
        "%2e%2e%2f",
        ".%2F",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "%2F..",
        "api",
        "API",
        "v1",
        "mdm",
        "devices",
        "5",
        "%41",
        "%7e",
        "%25",
        "%252F",
        "%2",
        "%zz",
        "%00",
        "a b",
        "é",
        "{x}",
        "?",
        "#",
        ";",
        "~",
        "*",
        "\\",
    ]);
    prop_oneof![
        3 => tricky.prop_map(str::to_owned),
        1 => "[a-zA-Z0-9%./~ -]{0,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..10).prop_map(|segments| format!("/{}", segments.join("/")))
}

proptest! {
    #[test]
    fn the_canonical_path_is_idempotent_and_stays_under_the_base(path in path()) {
        let Ok(canonical) = canonical_path(&path) else { return Ok(()) };
        let again = canonical_path(&canonical).map(|p| p.into_owned());
        prop_assert_eq!(again.as_deref(), Ok(&*canonical), "from {}", path);
        prop_assert!(canonical.starts_with('/'), "{}", canonical);
        prop_assert!(!canonical.contains("//"), "{}", canonical);
        for segment in canonical.split('/') {
            prop_assert!(segment != ".." && segment != ".", "a dot segment in {} from {}", canonical, path);
        }
        // Appended to a base path, as the upstream URL is built, and resolved the way a URL
        // parser resolves it (`%2e` is a dot there too): still under the base.
        let url = url::Url::parse(&format!("http://api.example/uem{canonical}")).unwrap();
        prop_assert!(url.path().starts_with("/uem/"), "{} leaves the base from {}", url.path(), path);
    }
}

// --- The permission mapping ------------------------------------------------------------------

fn method() -> impl Strategy<Value = Method> {
    let standard = select(vec!["GET", "get", "Post", "pUT", "delete", "DeLeTe", "PATCH", "head", "options", "trace"]);
    prop_oneof![standard.prop_map(str::to_owned), "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}",]
        .prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token is a method"))
}

/// Paths near the mapped families, and anything at all.
fn any_path() -> impl Strategy<Value = String> {
    let family = select(vec![
        "/api/mdm/devices/",
        "/API/v1/mdm/devices/5/",
        "/api/system/users/",
        "/api/mam/apps/",
        "/api/mdm/",
        "/api/",
        "/api/v2/",
        "",
        "%",
        "/%",
        "/api/%e",
    ]);
    prop_oneof![
        (family, prop::collection::vec(segment(), 0..6)).prop_map(|(f, s)| format!("{f}{}", s.join("/"))),
        any::<String>(),
        "\\PC{0,30}",
    ]
}

proptest! {
    #[test]
    fn the_permission_mapping_never_panics(method in method(), path in any_path()) {
        let required = mapping::required(&method, &path);
        // The API's server ignores the case of a method, so the mapping does too.
        prop_assert_eq!(required, mapping::required(&canonical_method(&method), &path));
        if let Ok(canonical) = canonical_path(&path) {
            let _ = mapping::required(&method, &canonical);
            let file: PolicyFile = toml::from_str("deny = [\"REST API Devices Delete\"]").unwrap();
            let policy = Policy::new(file, Some(true)).unwrap();
            // A target mapped once decides as the policy mapping it again would.
            let upper = canonical_method(&method);
            let mapped = policy.decide_mapped(&upper, &canonical, mapping::required(&upper, &canonical));
            prop_assert_eq!(policy.decide(&method, &canonical), mapped);
        }
    }
}

// --- The body URL rewriter -------------------------------------------------------------------

const FROM: &str = "https://as1.awmdm.com";
const TO: &str = "http://127.0.0.1:8080";

/// Bodies made of the base, its escaped form, their prefixes, and the bytes that decide whether
/// a match counts (`.evil`, `:8443`), between JSON punctuation and other text.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let escaped = FROM.replace('/', "\\/");
    let prefix = |s: String| (0..=s.len()).prop_map(move |n| s[..n].to_owned());
    let fragment = prop_oneof![
        2 => Just(FROM.to_owned()),
        2 => Just(escaped.clone()),
        3 => prefix(FROM.to_owned()),
        3 => prefix(escaped),
        2 => select(vec!["/api/mdm/devices/5", "\"", ",", ".evil.net", ":8443", "h", "H", "hh", "HTTPS://AS1.AWMDM.COM", "-x", " "])
            .prop_map(str::to_owned),
        1 => "[ -~]{0,8}",
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|f| f.concat().into_bytes())
}

/// A body that yields the given pieces, each as one frame.
struct Pieces(std::collections::VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
    }
}

/// Everything `Rewritten` yields for the input cut at `cuts`.
fn streamed(input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
    cuts.extend([0, input.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    let pieces = cuts.windows(2).map(|w| Bytes::copy_from_slice(&input[w[0]..w[1]])).collect();
    let mut body = pin!(Rewritten::new(Pieces(pieces), Replacer::new(FROM, TO)));
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    // The pieces are all there: every poll is ready, and each takes at least one piece or ends.
    for _ in 0..=input.len() + 2 {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => out.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("a body of ready pieces is never pending"),
        }
    }
    panic!("the rewritten body did not end")
}

/// The rule, written as plainly as it can be: at each byte, a base (plain or escaped) not followed
/// by a byte that would continue its host is replaced; anything else is kept.
fn reference(input: &[u8]) -> Vec<u8> {
    let escape = |s: &str| s.replace('/', "\\/");
    let pairs = [(FROM.to_owned(), TO.to_owned()), (escape(FROM), escape(TO))];
    let continues_host = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':';
    let (mut out, mut i) = (Vec::new(), 0);
    while i < input.len() {
        let rest = &input[i..];
        let hit = pairs.iter().find(|(from, _)| {
            rest.starts_with(from.as_bytes()) && !rest.get(from.len()).is_some_and(|&b| continues_host(b))
        });
        match hit {
            Some((from, to)) => {
                out.extend_from_slice(to.as_bytes());
                i += from.len();
            }
            None => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn the_rewritten_body_is_what_the_plain_rule_gives(
        input in body(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (streamed, expected) = (streamed(&input, &cuts), reference(&input));
        prop_assert_eq!(
            String::from_utf8_lossy(&streamed),
            String::from_utf8_lossy(&expected),
            "input {:?} cut at {:?}", String::from_utf8_lossy(&input), cuts
        );
    }

    #[test]
    fn the_rewritten_body_does_not_depend_on_where_it_is_split(
        input in body(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = Replacer::new(FROM, TO).rewrite_whole(Bytes::from(input.clone()));
        let streamed = streamed(&input, &cuts);
        prop_assert_eq!(
            String::from_utf8_lossy(&streamed),
            String::from_utf8_lossy(&whole),
            "input {:?} cut at {:?}", String::from_utf8_lossy(&input), cuts
        );
    }
}

// --- The access line's numbers ------------------------------------------------------------------

proptest! {
    /// Milliseconds to the microsecond are written as `Debug` writes the `f64`, without it.
    #[test]
    fn thousandths_are_written_as_debug_writes_them(n in prop_oneof![0u64..10_000, 0u64..1_000_000_000_000_000]) {
        let value = n as f64 / 1e3;
        let mut ours = String::new();
        match uem_proxy::record::line::whole_thousandths(value) {
            Some(micros) => uem_proxy::record::line::push_thousandths(&mut ours, micros),
            None => {
                prop_assert!(value >= 1e12, "{value} has no fast text");
                return Ok(());
            }
        }
        prop_assert_eq!(ours, format!("{value:?}"));
    }

    /// Any other value is left to `Debug`.
    #[test]
    fn only_whole_thousandths_take_the_fast_way(value in any::<f64>()) {
        if let Some(n) = uem_proxy::record::line::whole_thousandths(value) {
            prop_assert_eq!(n as f64 / 1e3, value);
            let mut ours = String::new();
            uem_proxy::record::line::push_thousandths(&mut ours, n);
            prop_assert_eq!(ours, format!("{value:?}"));
        }
    }

    /// A peer's address is written as `SocketAddrV4` displays it.
    #[test]
    fn ipv4_peers_are_written_as_displayed(ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let addr = std::net::SocketAddrV4::new(ip.into(), port);
        let text = uem_proxy::listen::ipv4_text(&addr);
        prop_assert_eq!(text.as_str(), addr.to_string());
    }
}

// --- Hop-by-hop headers -------------------------------------------------------------------------

/// The rule as first written: every header `Connection` names, then the nine, removed.
fn strip_by_the_book(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let nine = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    for name in named {
        headers.remove(name);
    }
    for name in nine {
        headers.remove(name);
    }
}

fn header_name() -> impl Strategy<Value = String> {
    select(vec![
        "Connection",
        "connection",
        "Keep-Alive",
        "proxy-connection",
        "Proxy-Authenticate",
        "proxy-authorization",
        "TE",
        "trailer",
        "Transfer-Encoding",
        "upgrade",
        "x-a",
        "X-B",
        "close",
        "content-type",
        "accept",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    /// The fast way removes exactly what the rule says, whatever `Connection` lists, in any case
    /// and spacing, and leaves the rest in the order the rule leaves them.
    #[test]
    fn hop_by_hop_headers_go_as_the_rule_says(
        fields in proptest::collection::vec((header_name(), "[a-z]{0,3}"), 0..8),
        listed in proptest::collection::vec((header_name(), select(vec!["", " ", "\t", "  "])), 0..4),
    ) {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &fields {
            headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        if !listed.is_empty() {
            let value: Vec<String> = listed.iter().map(|(name, pad)| format!("{pad}{name}{pad}")).collect();
            headers.append(http::header::CONNECTION, value.join(",").parse().unwrap());
        }
        let mut expected = headers.clone();
        strip_by_the_book(&mut expected);
        uem_proxy::forward::rewrite::strip_hop_by_hop(&mut headers);
        // In the same order too: `HeaderMap`'s `==` ignores it, the wire does not.
        let in_order = |map: &http::HeaderMap| map.iter().map(|(n, v)| (n.clone(), v.clone())).collect::<Vec<_>>();
        prop_assert_eq!(in_order(&headers), in_order(&expected));
    }
}
