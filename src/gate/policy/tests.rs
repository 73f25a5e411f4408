//! Policy decisions on canonical paths.

use http::Method;

use super::*;

fn policy(toml_text: &str) -> Policy {
    let file: PolicyFile = toml::from_str(toml_text).unwrap();
    Policy::new(file, None).unwrap()
}

fn allowed(p: &Policy, method: Method, path: &str) -> bool {
    p.decide(&method, path) == Decision::Allow
}

#[test]
fn an_empty_policy_allows_everything() {
    let p = policy("");
    assert!(p.is_open());
    assert!(allowed(&p, Method::DELETE, "/api/mdm/devices/5"));
}

#[test]
fn read_only_allows_reads_and_searches_only() {
    let p = policy("read_only = true");
    assert!(allowed(&p, Method::GET, "/api/mdm/devices/5"));
    assert!(allowed(&p, Method::POST, "/api/mdm/smartgroups/search"));
    assert!(allowed(&p, Method::GET, "/api/system/info"));
    assert!(!allowed(&p, Method::POST, "/api/mdm/devices/5/commands"));
    assert!(!allowed(&p, Method::PUT, "/api/unknown/thing"));
    let Decision::Deny { permission, reason } = p.decide(&Method::DELETE, "/api/mdm/devices/5") else { panic!() };
    assert_eq!(permission.unwrap().name, "REST API Devices Delete");
    assert!(reason.contains("read-only"));
    let env_overrides = Policy::new(toml::from_str("read_only = true").unwrap(), Some(false)).unwrap();
    assert!(allowed(&env_overrides, Method::DELETE, "/api/mdm/devices/5"));
}

#[test]
fn permission_lists_in_the_catalogues_terms() {
    let p = policy(
        r#"
        allow = ["REST API Devices Read", "REST API Devices Execute", "REST API Users Read"]
        deny = ["REST API Devices Execute"]
        "#,
    );
    assert!(allowed(&p, Method::GET, "/API/v1/mdm/devices/search"));
    assert!(allowed(&p, Method::GET, "/api/system/users/3"));
    assert!(!allowed(&p, Method::POST, "/api/mdm/devices/5/commands?command=Lock"), "deny beats allow");
    assert!(!allowed(&p, Method::GET, "/api/mam/apps/search"), "not on the allow list");
    assert!(!allowed(&p, Method::GET, "/api/system/info"), "needs no listed permission");
}

#[test]
fn rules_match_methods_and_path_patterns_first() {
    let p = policy(
        r#"
        deny = ["REST API Devices Delete"]
        [[rules]]
        action = "allow"
        methods = ["delete"]
        path = "/api/mdm/devices/*"
        [[rules]]
        action = "deny"
        path = "/api/system/**"
        "#,
    );
    assert!(allowed(&p, Method::DELETE, "/api/mdm/devices/5"), "the rule comes before the deny list");
    assert!(!allowed(&p, Method::DELETE, "/api/mdm/devices/5/notes"), "* is one segment");
    assert!(!allowed(&p, Method::GET, "/api/system/users/search"));
    assert!(!allowed(&p, Method::GET, "/API/V1/System/Info"), "case and version do not matter");
    assert!(allowed(&p, Method::GET, "/api/mdm/devices/5"));
}

#[test]
fn decisions_see_through_dot_segments_and_encoding() {
    let p = policy(
        r#"
        [[rules]]
        action = "deny"
        path = "/api/mdm/devices/**"
        "#,
    );
    for path in ["/api/mdm/devices/5", "/api/system/../mdm/devices/5", "/api/mdm/%64evices/5", "/api/v2/MDM/devices/"] {
        assert!(!allowed(&p, Method::GET, path), "{path}");
    }
}

#[test]
fn bad_policies_name_every_problem() {
    let file: PolicyFile = toml::from_str(
        r#"
        allow = ["REST API Teleport Read"]
        deny = ["REST API Devices Rea"]
        [[rules]]
        action = "maybe"
        methods = ["GE T"]
        path = "api/x"
        [[rules]]
        action = "deny"
        path = "/api/**/x"
        "#,
    )
    .unwrap();
    let problems = Policy::new(file, None).unwrap_err();
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(problems[0].contains("'REST API Teleport Read' is not a permission"));
}

#[test]
fn the_readme_example_behaves_as_documented() {
    let p = policy(
        r#"
        allow = ["REST API Devices Read", "REST API Devices Execute", "REST API Users Read"]
        deny = ["REST API Devices Execute"]
        [[rules]]
        action = "allow"
        methods = ["POST"]
        path = "/api/mdm/devices/*/commands"
        "#,
    );
    assert!(allowed(&p, Method::GET, "/api/mdm/devices/search"));
    assert!(allowed(&p, Method::POST, "/api/mdm/devices/5/commands"));
    assert!(!allowed(&p, Method::POST, "/api/mdm/devices/5/enterprisewipe"));
    assert!(!allowed(&p, Method::GET, "/api/mam/apps/search"));
}

#[test]
fn every_rule_kind_holds_whatever_the_case_of_the_method() {
    let p = policy(
        r#"
        deny = ["REST API Devices Delete"]
        [[rules]]
        action = "deny"
        methods = ["DELETE"]
        path = "/api/system/**"
        "#,
    );
    let allow_list = policy(r#"allow = ["REST API Devices Read"]"#);
    let read_only = policy("read_only = true");
    let rule_in_lower_case = policy(
        r#"
        [[rules]]
        action = "deny"
        methods = ["delete", "propfind"]
        path = "/api/**"
        "#,
    );
    for spelling in ["DELETE", "delete", "Delete", "dElEtE"] {
        let m = Method::from_bytes(spelling.as_bytes()).unwrap();
        assert!(!allowed(&p, m.clone(), "/api/mdm/devices/5"), "{spelling}: deny list");
        assert!(!allowed(&p, m.clone(), "/api/system/users/5"), "{spelling}: rule by method");
        assert!(!allowed(&allow_list, m.clone(), "/api/mdm/devices/5"), "{spelling}: allow list");
        assert!(!allowed(&read_only, m.clone(), "/api/mdm/devices/5"), "{spelling}: read-only");
        assert!(!allowed(&rule_in_lower_case, m, "/api/mdm/devices/5"), "{spelling}: a rule spelt in lower case");
    }
    for spelling in ["get", "Get", "GET"] {
        let m = Method::from_bytes(spelling.as_bytes()).unwrap();
        assert!(allowed(&allow_list, m.clone(), "/api/mdm/devices/5"), "{spelling}");
        assert!(allowed(&read_only, m.clone(), "/api/mdm/devices/5"), "{spelling}");
        assert!(allowed(&read_only, m, "/api/system/info"), "{spelling}: a read of an unmapped path");
    }
    let propfind = Method::from_bytes(b"PropFind").unwrap();
    assert!(!allowed(&rule_in_lower_case, propfind, "/api/x"), "other methods match rules in any case too");
}

#[test]
fn an_unknown_method_is_never_a_read_and_needs_a_write_permission() {
    let read_only = policy("read_only = true");
    let deny_write = policy(r#"deny = ["REST API Devices Write"]"#);
    let allow_read = policy(r#"allow = ["REST API Devices Read"]"#);
    for m in ["PROPFIND", "FOO", "foo", "MKCOL"] {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        for path in ["/api/mdm/devices/5", "/api/mdm/devices/search", "/api/system/info"] {
            assert!(!allowed(&read_only, m.clone(), path), "{m} {path}: read-only");
            assert!(!allowed(&allow_read, m.clone(), path), "{m} {path}: allow list");
        }
        assert!(!allowed(&deny_write, m.clone(), "/api/mdm/devices/search"), "{m}: deny list");
    }
}

#[test]
fn an_encoded_slash_steps_around_no_rule_in_either_reading() {
    let p = policy(
        r#"
        deny = ["REST API Users Read"]
        [[rules]]
        action = "deny"
        methods = ["DELETE"]
        path = "/api/mdm/devices/*"
        "#,
    );
    let deny = |m: Method, path: &str| {
        let decision = p.decide(&m, path);
        assert!(decision != Decision::Allow, "{m} {path}");
        decision
    };
    // Forwarded as one segment, but a server that decodes %2F would see /api/mdm/devices/5.
    let Decision::Deny { reason, .. } = deny(Method::DELETE, "/api/mdm/devices%2F5") else { unreachable!() };
    assert!(reason.contains("as a separator"), "{reason}");
    deny(Method::DELETE, "/api/mdm/devices%2f5");
    deny(Method::DELETE, "/api/mdm%5Cdevices%5c5");
    // `..%2F` climbs in neither reading unnoticed.
    deny(Method::GET, "/api/mdm/devices/..%2F..%2Fsystem/users/5");
    deny(Method::GET, "/api/mdm/devices/..%5c..%5csystem/users");
    // A serial number with a slash is an ordinary read of a device.
    assert!(allowed(&p, Method::GET, "/api/mdm/devices/serialnumber/AB%2FCD"));
    assert!(allowed(&p, Method::DELETE, "/api/mdm/devices/serialnumber/AB%2FCD"), "not one segment under devices");
    let allow_list = policy(r#"allow = ["REST API Devices Read"]"#);
    assert!(allowed(&allow_list, Method::GET, "/api/mdm/devices/serialnumber/AB%2FCD"));
    assert!(!allowed(&allow_list, Method::GET, "/api/mdm/devices%2F..%2F..%2Fsystem/users"));
}

#[test]
fn entries_no_request_maps_to_are_named_in_warnings() {
    let p = policy(
        r#"
        allow = ["REST API Devices Read", "REST API MDM Devices"]
        deny = ["REST API Devices Advanced", "REST API Devices Delete"]
        "#,
    );
    let warnings = p.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("policy.allow") && warnings[0].contains("'REST API MDM Devices'"), "{warnings:?}");
    assert!(warnings[1].contains("policy.deny") && warnings[1].contains("'REST API Devices Advanced'"));
    assert!(warnings[1].contains("denies nothing"));
    assert!(policy(r#"allow = ["REST API Devices Read"]"#).warnings().is_empty());
    assert!(policy("").warnings().is_empty());
}

#[test]
fn a_method_named_in_an_override_header_must_pass_too() {
    let p = policy(
        r#"
        deny = ["REST API Devices Delete"]
        [[rules]]
        action = "deny"
        methods = ["PUT"]
        path = "/api/system/**"
        "#,
    );
    let headers = |pairs: &[(&str, &str)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    };
    let denied =
        |pairs: &[(&str, &str)], path: &str| p.decide_overrides(&headers(pairs), None, path) != Decision::Allow;
    assert!(denied(&[("X-HTTP-Method-Override", "DELETE")], "/api/mdm/devices/5"));
    assert!(denied(&[("x-http-method", "delete")], "/api/mdm/devices/5"));
    assert!(denied(&[("X-Method-Override", " Delete ")], "/api/mdm/devices/5"));
    assert!(denied(&[("X-HTTP-Method-Override", "GET, DELETE")], "/api/mdm/devices/5"));
    assert!(denied(&[("X-HTTP-Method-Override", "GET"), ("X-HTTP-Method-Override", "DELETE")], "/api/mdm/devices/5"));
    assert!(denied(&[("X-HTTP-Method-Override", "put")], "/api/system/users/5"));
    assert!(!denied(&[("X-HTTP-Method-Override", "GET")], "/api/mdm/devices/5"));
    assert!(!denied(&[("X-HTTP-Method-Override", "DELETE")], "/api/system/users/5"));
    assert!(!denied(&[], "/api/mdm/devices/5"));
    let Decision::Deny { permission, reason } =
        p.decide_overrides(&headers(&[("x-http-method", "delete")]), None, "/api/mdm/devices/5")
    else {
        unreachable!()
    };
    assert_eq!(permission.unwrap().name, "REST API Devices Delete");
    assert!(reason.contains("DELETE in x-http-method"), "{reason}");
}
