//! The mistakes a new user makes: each loads with a warning or fails with a pointed message, and
//! no message holds a secret.

use std::collections::HashMap;

use super::*;

const LEAK: &str = "Zq9-very-secret-value";

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A folder of its own, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Folder {
        let dir = std::env::temp_dir().join(format!("uem-proxy-mistakes-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Folder(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BASE: &[(&str, &str)] = &[
    ("UEM_API_URL", "https://as1234.awmdm.com"),
    ("UEM_TOKEN_URL", "https://na.uemauth.workspaceone.com/connect/token"),
    ("UEM_CLIENT_ID", "client"),
];

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env_of(pairs);
    Config::load(None, &|name| env.get(name).cloned())
}

fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = BASE.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pairs
}

fn load_with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let pairs = with(extra);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    load_env(&refs)
}

#[test]
fn a_toml_typo_on_the_secrets_line_names_place_and_key_but_not_the_secret() {
    let folder = Folder::new();
    for text in [
        format!("client_id = \"c\"\nclient_secret = \"{LEAK}\napi_url = \"https://as1.awmdm.com\"\n"),
        format!("client_secret = '{LEAK}\n"),
        format!("client_secret = \"\"\"{LEAK}\n"),
        format!("client_secret = {LEAK}\n"),
        format!("client_secret = \"{LEAK}\" x\n"),
        format!("[policy]\ndeny = [\"{LEAK}\n"),
    ] {
        let file = folder.write("uem-proxy.toml", text.as_bytes());
        let env = env_of(BASE);
        let error = Config::load(Some(&file), &|name| env.get(name).cloned()).unwrap_err().to_string();
        assert!(error.contains("uem-proxy.toml: not valid TOML: line "), "{error}");
        assert!(!error.contains("Zq9") && !error.contains("secret-value"), "{text:?} gave {error}");
        // The reload path reports the same problems.
        assert!(!format!("{:?}", error).contains("Zq9"));
    }
    let file = folder.write("uem-proxy.toml", format!("client_id = \"c\"\nclient_secret = \"{LEAK}\n").as_bytes());
    let env = env_of(BASE);
    let error = Config::load(Some(&file), &|name| env.get(name).cloned()).unwrap_err().to_string();
    assert!(error.contains("line 2, column ") && error.contains("key client_secret"), "{error}");
}

#[test]
fn bad_urls_never_echo_a_password() {
    for (var, value) in [
        ("UEM_PROXY_EGRESS_PROXY", "http://bob:pa55word@proxy corp:3128"),
        ("UEM_PROXY_EGRESS_PROXY", "ftp://bob:pa55word@proxy.corp"),
        ("UEM_PROXY_EGRESS_PROXY", "bob:pa55word@proxy.corp:3128"),
        ("UEM_PROXY_EGRESS_PROXY", "//bob:pa55word@proxy.corp:3128"),
        ("UEM_API_URL", "bob:pa55word@as1.awmdm.com"),
        ("UEM_PROXY_EGRESS_PROXY", "http://bob:pa55/word@proxy.corp:bad"),
        ("UEM_API_URL", "https://bob:pa55word@as1.awmdm.com"),
        ("UEM_API_URL", "https://bob:pa55word@as1 .awmdm.com"),
        ("UEM_TOKEN_URL", "ftp://bob:pa55word@na.uemauth.workspaceone.com"),
        ("UEM_TOKEN_URL", "https://bob:pa55word@na.uemauth.workspaceone.com/connect/token?x=1"),
    ] {
        let error = load_with(&[(var, value), ("UEM_CLIENT_SECRET", "s")]).unwrap_err().to_string();
        assert!(error.contains(var), "{error}");
        assert!(!error.contains("pa55"), "{value} gave {error}");
    }
}

#[test]
fn the_egress_proxys_password_is_masked_in_the_printed_configuration() {
    let c = load_with(&[("UEM_CLIENT_SECRET", "s"), ("UEM_PROXY_EGRESS_PROXY", "http://bob:pa55word@proxy.corp:3128")])
        .unwrap();
    assert_eq!(c.summary()["egress_proxy"], "http://bob:***@proxy.corp:3128/");
    assert!(!c.summary().to_string().contains("pa55"));
    assert!(matches!(&c.egress, Egress::Via(url) if url.password() == Some("pa55word")), "still used as given");
}

#[test]
fn a_trailing_api_segment_is_dropped_with_a_warning() {
    for (given, kept) in [
        ("https://as1234.awmdm.com/api", "https://as1234.awmdm.com/"),
        ("https://as1234.awmdm.com/API/", "https://as1234.awmdm.com/"),
        ("https://uem.corp.example/uem/api", "https://uem.corp.example/uem"),
        ("https://as1234.awmdm.com/Api//", "https://as1234.awmdm.com/"),
    ] {
        let c = load_with(&[("UEM_API_URL", given), ("UEM_CLIENT_SECRET", "s")]).unwrap();
        assert_eq!(c.api_url.as_str(), kept, "{given}");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("UEM_API_URL: ends with /api"), "{}", c.warnings[0]);
    }
    for fine in ["https://as1234.awmdm.com", "https://uem.corp.example/apis", "https://uem.corp.example/myapi"] {
        let c = load_with(&[("UEM_API_URL", fine), ("UEM_CLIENT_SECRET", "s")]).unwrap();
        assert!(c.warnings.is_empty(), "{fine}: {:?}", c.warnings);
    }
}

#[test]
fn a_console_host_as_api_url_gets_a_hint_naming_the_api_host() {
    let c = load_with(&[("UEM_API_URL", "https://cn1234.awmdm.com"), ("UEM_CLIENT_SECRET", "s")]).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(w.contains("cn1234.awmdm.com looks like a console host"), "{w}");
    assert!(w.contains("UEM_API_URL=https://as1234.awmdm.com"), "{w}");
    assert!(w.contains("UEM_CONSOLE_URL="), "{w}");
    let c = load_with(&[("UEM_API_URL", "https://cnx.corp.example"), ("UEM_CLIENT_SECRET", "s")]).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn secret_files_lose_bom_and_surrounding_space_with_a_warning_only_when_more_than_a_newline_went() {
    let folder = Folder::new();
    let cases: &[(&[u8], bool)] = &[
        (b"s3cret\n", false),
        (b"s3cret\r\n", false),
        (b"s3cret", false),
        (b"\xef\xbb\xbfs3cret\n", true),
        (b"\xef\xbb\xbfs3cret\r\n", true),
        (b"  s3cret  \n", true),
        (b"s3cret\n\n", true),
        (b"\ts3cret\r\n\r\n", true),
    ];
    for (bytes, warned) in cases {
        let path = folder.write("secret", bytes);
        let shown = path.display().to_string();
        let c = load_with(&[("UEM_CLIENT_SECRET_FILE", &shown)]).unwrap();
        assert_eq!(c.auth.oauth().unwrap().client_secret.expose_secret(), "s3cret", "{bytes:?}");
        assert_eq!(!c.warnings.is_empty(), *warned, "{bytes:?}: {:?}", c.warnings);
        for w in &c.warnings {
            assert!(w.starts_with("UEM_CLIENT_SECRET_FILE: "), "{w}");
            assert!(!w.contains("s3cret"), "{w}");
        }
    }
    // The same for basic authentication's password file.
    let path = folder.write("password", b"\xef\xbb\xbfpa55 \r\n");
    let shown = path.display().to_string();
    let c = load_env(&[
        ("UEM_AUTH_MODE", "basic"),
        ("UEM_API_URL", "https://uem.corp.example"),
        ("UEM_USERNAME", "admin"),
        ("UEM_PASSWORD_FILE", &shown),
        ("UEM_TENANT_CODE", "T"),
    ])
    .unwrap();
    assert!(matches!(&c.auth, Auth::Basic { password, .. } if password.expose_secret() == "pa55"));
    assert_eq!(c.warnings.len(), 1);
    let path = folder.write("blank", b"\xef\xbb\xbf \r\n");
    let shown = path.display().to_string();
    let e = load_with(&[("UEM_CLIENT_SECRET_FILE", &shown)]).unwrap_err().to_string();
    assert!(e.contains("the secret is empty"), "{e}");
}

#[test]
fn relative_paths_in_the_file_resolve_against_its_folder_and_in_the_environment_against_the_working_directory() {
    let folder = Folder::new();
    std::fs::create_dir_all(folder.0.join("secrets")).unwrap();
    folder.write("secrets/client_secret", b"from-beside-the-file\n");
    let file = folder.write(
        "uem-proxy.toml",
        b"api_url = \"https://as1.awmdm.com\"\nregion = \"na\"\nclient_id = \"c\"\nclient_secret_file = \"secrets/client_secret\"\n",
    );
    // Loaded from any working directory: the test's is the crate's, not the folder.
    let c = Config::load(Some(&file), &|_| None).unwrap();
    assert_eq!(c.auth.oauth().unwrap().client_secret.expose_secret(), "from-beside-the-file");

    let env = env_of(&[("UEM_CLIENT_SECRET_FILE", "secrets/client_secret")]);
    let e = Config::load(Some(&file), &|name| env.get(name).cloned()).unwrap_err().to_string();
    assert!(e.contains("UEM_CLIENT_SECRET_FILE: cannot read 'secrets/client_secret'"), "{e}");

    // A PEM bundle, a certificate and a key, relative too.
    let file = folder.write(
        "tls.toml",
        b"api_url = \"https://as1.awmdm.com\"\nregion = \"na\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
          ca_bundle = \"missing-ca.pem\"\ntls_cert = \"missing-cert.pem\"\ntls_key = \"missing-key.pem\"\n",
    );
    let e = Config::load(Some(&file), &|_| None).unwrap_err().to_string();
    let beside = folder.0.join("missing-ca.pem").display().to_string();
    assert!(e.contains(&format!("cannot read '{beside}'")), "{e}");
    assert!(e.contains(&folder.0.join("missing-cert.pem").display().to_string()), "{e}");
}

#[test]
fn unknown_keys_in_the_file_are_refused_with_the_nearest_key() {
    let folder = Folder::new();
    let file = folder.write("uem-proxy.toml", b"readonly = true\n");
    let env =
        env_of(&with(&[("UEM_CLIENT_SECRET", "s")]).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
    let e = Config::load(Some(&file), &|name| env.get(name).cloned()).unwrap_err().to_string();
    assert!(e.contains("uem-proxy.toml: unknown setting 'readonly': did you mean read_only?"), "{e}");
}
