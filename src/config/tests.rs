//! Loading from a map standing in for the environment, and from files.

use std::collections::HashMap;

use super::*;

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::load(None, &|name| env.get(name).cloned())
}

fn load_file(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("uem-proxy-config-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("uem-proxy.toml");
    std::fs::write(&path, text).unwrap();
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let result = Config::load(Some(&path), &|name| env.get(name).cloned());
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

const MINIMAL: &[(&str, &str)] = &[
    ("UEM_API_URL", "https://as1234.awmdm.com/"),
    ("UEM_TOKEN_URL", "https://na.uemauth.workspaceone.com/connect/token"),
    ("UEM_CLIENT_ID", "client"),
    ("UEM_CLIENT_SECRET", "s3cr3t"),
];

#[test]
fn minimal_environment_gives_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.api_url.as_str(), "https://as1234.awmdm.com/");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.upstream_timeout, Duration::from_secs(30));
    assert_eq!(c.replay_body_limit, 65536);
    assert_eq!(c.log_format, LogFormat::Text);
    let summary = c.summary().to_string();
    assert!(summary.contains(r#""client_secret":"***""#), "{summary}");
    assert!(!summary.contains("s3cr3t"));
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn console_url_and_region_resolve() {
    let c = load(&[
        ("UEM_CONSOLE_URL", "cn135.awmdm.com"),
        ("UEM_REGION", "germany"),
        ("UEM_TOKEN_DOMAIN", "vmwservices"),
        ("UEM_CLIENT_ID", "client"),
        ("UEM_CLIENT_SECRET", "s"),
    ])
    .unwrap();
    assert_eq!(c.api_url.as_str(), "https://as135.awmdm.com/");
    let oauth = c.auth.oauth().unwrap();
    assert_eq!(oauth.token_url.as_str(), "https://emea.uemauth.vmwservices.com/connect/token");
    assert_eq!(
        oauth.fallback_token_url.as_ref().map(Url::as_str),
        Some("https://emea.uemauth.workspaceone.com/connect/token"),
        "the other public domain is the fallback"
    );
    assert!(oauth.token_url_source.contains("emea"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = load(&[
        ("UEM_API_URL", "ftp://as1.awmdm.com"),
        ("UEM_REGION", "mars"),
        ("UEM_CLIENT_SECRET", "s"),
        ("UEM_CLIENT_SECRET_FILE", "/nonexistent"),
        ("UEM_PROXY_LISTEN", "localhost"),
        ("UEM_PROXY_UPSTREAM_TIMEOUT", "soon"),
        ("UEM_PROXY_LOG_FORMAT", "xml"),
    ])
    .unwrap_err();
    let text = e.to_string();
    for needle in [
        "UEM_API_URL: 'ftp://as1.awmdm.com' must start with https://",
        "UEM_REGION: 'mars' is not a region",
        "UEM_CLIENT_ID is not set",
        "UEM_CLIENT_SECRET and UEM_CLIENT_SECRET_FILE are both set",
        "UEM_PROXY_LISTEN: 'localhost' is not an address",
        "UEM_PROXY_UPSTREAM_TIMEOUT: 'soon' is not a duration",
        "UEM_PROXY_LOG_FORMAT: 'xml' is not one of text, json",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(e.0.len(), 7, "{text}");
}

#[test]
fn nothing_set_names_each_missing_setting() {
    let text = load(&[]).unwrap_err().to_string();
    assert!(text.contains("neither UEM_API_URL nor UEM_CONSOLE_URL is set"), "{text}");
    assert!(text.contains("neither UEM_TOKEN_URL nor UEM_REGION is set"), "{text}");
    assert!(text.contains("UEM_CLIENT_ID is not set"), "{text}");
    assert!(text.contains("neither UEM_CLIENT_SECRET nor UEM_CLIENT_SECRET_FILE is set"), "{text}");
}

#[test]
fn secret_file_is_read_and_its_newline_dropped() {
    let path = std::env::temp_dir().join(format!("uem-secret-{}", fastrand::u64(..)));
    std::fs::write(&path, "from-file\n").unwrap();
    let mut env = MINIMAL[..3].to_vec();
    let shown = path.display().to_string();
    env.push(("UEM_CLIENT_SECRET_FILE", &shown));
    let c = load(&env).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(c.auth.oauth().unwrap().client_secret.expose_secret(), "from-file");
}

#[test]
fn the_environment_overrides_the_file_including_alternatives() {
    let file = r#"
        api_url = "https://as1.awmdm.com"
        region = "na"
        client_id = "file-client"
        client_secret = "file-secret"
        upstream_timeout = "5s"
    "#;
    let c = load_file(file, &[("UEM_CONSOLE_URL", "cn2.awmdm.com"), ("UEM_CLIENT_ID", "env-client")]).unwrap();
    assert_eq!(c.api_url.host_str(), Some("as2.awmdm.com"), "console URL from env replaces the file's api_url");
    assert_eq!(c.auth.principal(), "env-client");
    assert_eq!(c.upstream_timeout, Duration::from_secs(5));
    assert_eq!(c.auth.oauth().unwrap().token_url.as_str(), "https://na.uemauth.workspaceone.com/connect/token");
}

#[test]
fn file_errors_name_the_file_and_key() {
    let e = load_file("api_url = 5.5\nbogus = \"x\"\nclient_id = \"c\"\n", &MINIMAL[1..]).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("uem-proxy.toml: api_url: expected a string, found float"), "{text}");
    assert!(text.contains("uem-proxy.toml: unknown setting 'bogus'"), "{text}");
    let e = load_file("api_url = [", MINIMAL).unwrap_err();
    assert!(e.to_string().contains("not valid TOML"));
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let mut env = MINIMAL.to_vec();
    env.push(("UEM_CONSOLE_URL", ""));
    assert!(load(&env).is_ok());
}

#[test]
fn the_example_config_file_is_valid_and_complete() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/uem-proxy.example.toml");
    let dir = std::env::temp_dir().join(format!("uem-example-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "s\n").unwrap();
    let shown = secret.display().to_string();
    let env: HashMap<String, String> = [("UEM_CLIENT_SECRET_FILE".to_owned(), shown)].into();
    let c = Config::load(Some(&path), &|name| env.get(name).cloned()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.api_url.host_str(), Some("as1234.awmdm.com"));
    let text = std::fs::read_to_string(&path).unwrap();
    for (key, var) in SETTINGS {
        assert!(text.contains(&format!("{key} =")), "the example lacks {key}");
        assert!(text.contains(&format!("[{var}]")), "the example lacks {var}");
    }
}

#[test]
fn basic_mode_needs_user_password_and_tenant_code_but_no_token_service() {
    let c = load(&[
        ("UEM_AUTH_MODE", "basic"),
        ("UEM_API_URL", "https://uem.corp.example"),
        ("UEM_USERNAME", "apiadmin"),
        ("UEM_PASSWORD", "pa55"),
        ("UEM_TENANT_CODE", "TENANTKEY"),
    ])
    .unwrap();
    assert!(matches!(c.auth, Auth::Basic { ref username, .. } if username == "apiadmin"));
    let summary = c.summary().to_string();
    assert!(!summary.contains("pa55") && !summary.contains("TENANTKEY"), "{summary}");
    assert!(summary.contains(r#""auth_mode":"basic""#), "{summary}");

    let text =
        load(&[("UEM_AUTH_MODE", "basic"), ("UEM_API_URL", "https://uem.corp.example")]).unwrap_err().to_string();
    for needle in
        ["UEM_USERNAME is not set", "neither UEM_PASSWORD nor UEM_PASSWORD_FILE", "UEM_TENANT_CODE is not set"]
    {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    assert!(!text.contains("UEM_CLIENT_ID"), "no OAuth settings are asked for: {text}");
    assert!(load(&[("UEM_AUTH_MODE", "kerberos")]).unwrap_err().to_string().contains("not one of oauth, basic"));
}

#[test]
fn an_egress_proxy_is_an_http_proxy_and_a_socks_one_is_refused_without_its_password() {
    for url in ["socks5://user:pw-SOCKS@proxy.corp:1080", "socks5h://proxy.corp", "SOCKS4://proxy.corp"] {
        let problems = load(&[MINIMAL, &[("UEM_PROXY_EGRESS_PROXY", url)]].concat()).err().unwrap().0.join("\n");
        assert!(problems.contains("UEM_PROXY_EGRESS_PROXY") && problems.contains("SOCKS"), "{problems}");
        assert!(!problems.contains("pw-SOCKS"), "{problems}");
    }
    for url in ["http://proxy.corp:3128", "https://user:pw@proxy.corp"] {
        let config = load(&[MINIMAL, &[("UEM_PROXY_EGRESS_PROXY", url)]].concat()).unwrap();
        assert!(matches!(config.egress, Egress::Via(_)), "{url}");
    }
}

#[test]
fn a_ca_bundle_is_read_as_pem_certificates() {
    let dir = std::env::temp_dir().join(format!("uem-proxy-ca-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap().cert;
    let (one, two, none) = (dir.join("one.pem"), dir.join("two.pem"), dir.join("none.pem"));
    std::fs::write(&one, cert.pem()).unwrap();
    std::fs::write(&two, format!("{}{}", cert.pem(), cert.pem())).unwrap();
    std::fs::write(&none, "not a certificate\n").unwrap();
    let count = |path: &std::path::Path| {
        let env = [MINIMAL, &[("UEM_CA_BUNDLE", path.to_str().unwrap())]].concat();
        load(&env).map(|c| c.ca_bundle.map_or(0, |b| b.len())).map_err(|e| e.0.join("\n"))
    };
    assert_eq!(count(&one), Ok(1));
    assert_eq!(count(&two), Ok(2));
    let refused = count(&none).unwrap_err();
    assert!(refused.contains("holds no PEM certificate"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}
