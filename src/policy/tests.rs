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
