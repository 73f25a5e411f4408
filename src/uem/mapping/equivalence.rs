//! The quick way against the long way: over paths built from the table's own segments and odd
//! ones, in any case, and every method, a path the quick way takes gets the answer the long way
//! gives it (`PROPTEST_CASES=100000 cargo test --lib mapping::equivalence` runs it longer).

use http::Method;
use proptest::prelude::*;

use super::{ACTIONS, Collection, Kind, lookup, permission_for, quick, required, the_long_way};

/// Mixes the letter case of `s` byte by byte.
fn mixed_case(s: &str) -> impl Strategy<Value = String> + use<> {
    let s = s.to_owned();
    prop::collection::vec(prop::bool::weighted(0.2), s.len())
        .prop_map(move |upper| s.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect())
}

/// One of `names`, in mixed case, sometimes with one character percent-encoded.
fn one_of(names: Vec<&'static str>) -> BoxedStrategy<String> {
    let plain = prop::sample::select(names).prop_flat_map(mixed_case);
    (plain, prop::option::weighted(0.15, (any::<prop::sample::Index>(), any::<bool>())))
        .prop_map(|(name, encode)| match encode {
            Some((at, upper)) if !name.is_empty() => {
                let at = at.index(name.len());
                let hex = if upper {
                    format!("%{:02X}", name.as_bytes()[at])
                } else {
                    format!("%{:02x}", name.as_bytes()[at])
                };
                format!("{}{hex}{}", &name[..at], &name[at + 1..])
            }
            _ => name,
        })
        .boxed()
}

/// Segments the long way handles (dots, percent-encoding) or that only look like others.
fn odd_segment() -> BoxedStrategy<String> {
    prop::sample::select(vec![
        "",
        ".",
        "..",
        ".",
        "..",
        "apix",
        "mdm2",
        "devicesx",
        "searchx",
        "commandsx",
        "%2F",
        "%2f",
        "%5C",
        "%2e%2e",
        "%2E",
        "%61pi",
        "%6Ddm",
        "de%76ices",
        "%",
        "%zz",
        "a.b",
        "...",
        "\u{e9}",
        "\u{130}",
        "\u{212a}",
        "api\u{0}",
        " ",
        "+",
        "v",
        "vx",
        "v1a",
        "V",
        "x",
        "v1",
        "V2",
    ])
    .prop_map(str::to_owned)
    .boxed()
}

/// The segments of a path shaped as the table's: `api`, a version, a family, a collection, then
/// sub-resources, ids and actions; some replaced or joined by odd segments.
fn segments() -> impl Strategy<Value = Vec<String>> {
    let mut rest: Vec<&'static str> = vec![
        "1",
        "5",
        "v1",
        "search",
        "apps",
        "profiles",
        "smartgroups",
        "compliance",
        "customattributes",
        "customattribute",
    ];
    rest.extend(ACTIONS);
    let version = prop_oneof![
        6 => Just(vec![]),
        3 => one_of(vec!["v1", "v2", "v10"]).prop_map(|v| vec![v]),
        1 => prop::collection::vec(one_of(vec!["v1", "v2", "v10"]), 2..3),
    ];
    // A family and a collection the table maps, often; any pair, sometimes.
    let mapped = prop::sample::select(vec![
        ("system", "admins"),
        ("system", "groups"),
        ("system", "users"),
        ("system", "usergroups"),
        ("mdm", "devices"),
        ("mdm", "devices"),
        ("mdm", "tags"),
        ("mdm", "smartgroups"),
        ("mdm", "profiles"),
        ("mdm", "products"),
        ("mdm", "compliancepolicy"),
        ("mdm", "compliancepolicies"),
        ("mam", "apps"),
        ("mam", "blobs"),
    ])
    .prop_flat_map(|(family, name)| (one_of(vec![family]), one_of(vec![name])));
    let any_pair = (
        prop_oneof![8 => one_of(vec!["mdm", "mam", "system"]), 1 => odd_segment()],
        prop_oneof![
            8 => one_of(vec![
                "devices", "admins", "groups", "users", "usergroups", "tags", "smartgroups", "profiles", "products",
                "compliancepolicy", "compliancepolicies", "apps", "blobs",
            ]),
            1 => odd_segment(),
        ],
    );
    (
        prop_oneof![8 => one_of(vec!["api"]), 1 => odd_segment()],
        version.clone(),
        prop_oneof![3 => mapped, 1 => any_pair],
        version,
        prop::collection::vec(prop_oneof![6 => one_of(rest), 1 => odd_segment()], 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), odd_segment()), 0..3),
        prop_oneof![8 => Just(vec![]), 1 => Just(vec!["x", ".."]), 1 => Just(vec!["x", "y", "..", ".."])],
    )
        .prop_map(|(api, v1, (family, name), v2, rest, inserted, climbed)| {
            // `/x/../api/…`: not under `/api` until the `..`.
            let mut all: Vec<String> = climbed.into_iter().map(str::to_owned).collect();
            all.push(api);
            all.extend(v1);
            all.push(family);
            all.extend(v2);
            all.push(name);
            all.extend(rest);
            for (at, segment) in inserted {
                all.insert(at.index(all.len() + 1), segment);
            }
            all
        })
}

/// A path of such segments, joined by `/` or `//`, with or without a trailing slash, a query
/// or a fragment (which may hold slashes and segments too).
fn path() -> impl Strategy<Value = String> {
    (
        segments(),
        prop::collection::vec(prop_oneof![8 => Just("/"), 1 => Just("//")], 24),
        prop::sample::select(vec!["", "", "", "/", "?", "?q=/api/mdm/devices", "#/x", "?a#b", "/?x=1"]),
    )
        .prop_map(|(segments, separators, end)| {
            let mut path = String::new();
            for (segment, separator) in segments.iter().zip(separators) {
                path.push_str(separator);
                path.push_str(segment);
            }
            path.push_str(end);
            path
        })
}

/// Every standard method in several spellings, and methods that are not standard.
fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        "GET", "get", "Get", "HEAD", "head", "OPTIONS", "options", "POST", "post", "Post", "PUT", "put", "PATCH",
        "patch", "DELETE", "delete", "dElEtE", "TRACE", "trace", "CONNECT", "PROPFIND", "FOO", "search", "GETX",
    ])
    .prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(2048), ..ProptestConfig::default() })]

    #[test]
    fn the_quick_way_agrees_with_the_long_way(method in method(), path in path()) {
        prop_assert_eq!(required(&method, &path), the_long_way(&method, &path), "{} {}", method, path);
    }

    /// Any printable path at all.
    #[test]
    fn the_quick_way_agrees_with_the_long_way_on_any_path(method in method(), path in "/[ -~\u{e9}]{0,40}") {
        prop_assert_eq!(required(&method, &path), the_long_way(&method, &path), "{} {}", method, path);
    }
}

/// The kept table is indexed by a collection's place in `ALL`, which must be its declaration's.
#[test]
fn every_collection_stands_at_its_own_place_in_all() {
    for (i, collection) in Collection::ALL.into_iter().enumerate() {
        assert_eq!(collection as usize, i, "{collection:?}");
        for kind in [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete] {
            assert_eq!(permission_for(collection, kind), lookup(collection, kind));
        }
    }
}

/// The comparison means something only where the quick way answers: it does for plain paths in
/// any case, and leaves the others to the long way.
#[test]
fn the_quick_way_answers_for_plain_paths_only() {
    for path in ["/api/mdm/devices/1", "/API/MDM/Devices/1/apps", "/api/v1/system/users/search?x=1", "/other"] {
        assert!(quick::required(&Method::GET, path).is_some(), "{path}");
    }
    for path in ["/api/mdm/%64evices", "/api/x/../mdm/devices", "/api/./mdm"] {
        assert!(quick::required(&Method::GET, path).is_none(), "{path}");
    }
}
