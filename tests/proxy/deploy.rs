//! The Kubernetes examples say what they mean: one namespace that the `Host` allow-list names,
//! and a sidecar whose job starts only once the proxy holds a token. Read with a reader of the
//! plain YAML subset the examples use (block mappings and sequences, flow values kept as text),
//! so no YAML crate is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::binary::{BIN, Running, base_env};
use crate::support::{Reply, TokenService, Upstream};

/// One YAML document as `path -> value`: `spec.template.spec.containers[0].image`.
pub type Document = BTreeMap<String, String>;

pub fn documents(text: &str) -> Vec<Document> {
    let mut docs = vec![Document::new()];
    // (indent, segment) of the open mappings and sequence items above the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut items: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let content = line.trim();
        if content == "---" {
            docs.push(Document::new());
            stack.clear();
            items.clear();
            continue;
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - line.trim_start().len();
        let mut rest = content;
        stack.retain(|(i, _)| *i < indent);
        let path = |stack: &[(usize, String)]| {
            stack.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join(".").replace(".[", "[")
        };
        if let Some(item) = rest.strip_prefix("- ") {
            let parent = path(&stack);
            let n = items.entry(parent).or_default();
            stack.push((indent, format!("[{n}]")));
            *n += 1;
            indent += 2;
            rest = item.trim();
            if !rest.contains(": ") && !rest.ends_with(':') || rest.starts_with('{') {
                docs.last_mut().unwrap().insert(path(&stack), rest.to_owned());
                continue;
            }
        }
        let (key, value) = match rest.split_once(": ") {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (rest.trim_end_matches(':'), ""),
        };
        stack.push((indent, key.to_owned()));
        if !value.is_empty() {
            docs.last_mut().unwrap().insert(path(&stack), value.trim_matches('"').to_owned());
            stack.pop();
        }
    }
    docs.retain(|d| !d.is_empty());
    docs
}

fn manifest(name: &str) -> Vec<Document> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(name);
    documents(&std::fs::read_to_string(path).unwrap())
}

/// The value of an `env` entry `{ name: NAME, value: V }` of a container.
fn env_value(doc: &Document, container: &str, name: &str) -> Option<String> {
    doc.iter()
        .filter(|(k, _)| k.starts_with(&format!("{container}.env[")))
        .find(|(_, v)| v.contains(&format!("name: {name},")))
        .and_then(|(_, v)| {
            v.split_once("value: ").map(|(_, v)| v.trim_end_matches('}').trim().trim_matches('"').to_owned())
        })
}

#[test]
fn the_reader_reads_the_subset_it_claims() {
    let docs = documents("a:\n  b: 1\n  c:\n    - { x: 1 }\n    - name: n\n      d: \"2\"\n# note\n---\ne: f\n");
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["a.b"], "1");
    assert_eq!(docs[0]["a.c[0]"], "{ x: 1 }");
    assert_eq!(docs[0]["a.c[1].name"], "n");
    assert_eq!(docs[0]["a.c[1].d"], "2");
    assert_eq!(docs[1]["e"], "f");
}

#[test]
fn every_object_lives_in_the_namespace_the_host_allow_list_names() {
    let mut kinds = Vec::new();
    for file in ["deployment.yaml", "secret.yaml", "sidecar.yaml"] {
        for doc in manifest(file) {
            kinds.push(doc["kind"].clone());
            assert_eq!(doc.get("metadata.namespace").map(String::as_str), Some("uem"), "{file}: {}", doc["kind"]);
        }
    }
    assert_eq!(kinds, ["Deployment", "Service", "Secret", "CronJob"]);
    let deployment = &manifest("deployment.yaml")[0];
    let service = &manifest("deployment.yaml")[1];
    let container = "spec.template.spec.containers[0]";
    let hosts = env_value(deployment, container, "UEM_PROXY_ALLOWED_HOSTS").expect("an allow-list");
    let (name, namespace) = (&service["metadata.name"], &service["metadata.namespace"]);
    for host in hosts.split(',') {
        let mut labels = host.split('.');
        assert_eq!(labels.next(), Some(name.as_str()), "{host} names the Service");
        if let Some(ns) = labels.next() {
            assert_eq!(ns, namespace, "{host} names the Service's namespace");
        }
    }
    assert_eq!(deployment[&format!("{container}.readinessProbe.httpGet")], "{ path: /_proxy/readyz, port: http }");
}

#[test]
fn the_sidecar_lets_its_job_start_only_once_a_token_is_held() {
    let cronjob = &manifest("sidecar.yaml")[0];
    let sidecar = "spec.jobTemplate.spec.template.spec.initContainers[0]";
    assert_eq!(cronjob[&format!("{sidecar}.restartPolicy")], "Always", "a native sidecar");
    for probe in ["startupProbe", "readinessProbe"] {
        let exec = &cronjob[&format!("{sidecar}.{probe}.exec")];
        assert_eq!(exec, r#"{ command: ["uem-proxy", "healthcheck", "--ready"] }"#, "{probe}");
    }
}

/// The probes' command against a real proxy: `healthcheck` passes as soon as the process
/// answers, `healthcheck --ready` only once it holds a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_ready_passes_only_while_a_token_is_held() {
    let refusal = || Reply::Raw(401, "application/json", r#"{"error":"invalid_client"}"#.to_owned());
    let refusing = TokenService::script(&(0..64).map(|_| refusal()).collect::<Vec<_>>());
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, refusing.start().await);
    let mut proxy = tokio::task::spawn_blocking(move || Running::start(&base_env(&api, &token_url))).await.unwrap();
    let addr = proxy.addr().to_string();
    let probe = |args: &[&str]| {
        Command::new(BIN).env_clear().args(["healthcheck", "--addr", &addr]).args(args).output().unwrap()
    };
    assert!(probe(&[]).status.success(), "alive");
    let ready = probe(&["--ready"]);
    assert_eq!(ready.status.code(), Some(1), "no token, not ready");
    assert!(String::from_utf8_lossy(&ready.stderr).contains("503"), "{}", String::from_utf8_lossy(&ready.stderr));
    proxy.terminate();

    let tokens = TokenService::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let mut proxy = tokio::task::spawn_blocking(move || Running::start(&base_env(&api, &token_url))).await.unwrap();
    let addr = proxy.addr().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready =
            Command::new(BIN).env_clear().args(["healthcheck", "--ready", "--addr", &addr]).output().unwrap().status;
        if ready.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ready once the token is held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.terminate();
}
