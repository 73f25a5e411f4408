//! The inspector's endpoints on real sockets: `/_proxy/requests`, `/_proxy/events`, what they
//! keep and hide, and who may read them. The page itself is tested in a browser (`browser.rs`).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{Proxy, SECRET, client, raw};

const CALLER_SECRETS: [(&str, &str); 4] = [
    ("authorization", "Bearer caller-token-1"),
    ("proxy-authorization", "Basic caller-proxy-2"),
    ("cookie", "session=caller-cookie-3"),
    ("aw-tenant-code", "caller-tenant-4"),
];

async fn requests(proxy: &Proxy, query: &str) -> serde_json::Value {
    let response = client().get(format!("{}/_proxy/requests{query}", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// `/_proxy/requests` until it holds `n` entries (a record is written once the answer's body is
/// done, just after the caller has it).
async fn wait_entries(proxy: &Proxy, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let list = requests(proxy, "").await;
        if list.as_array().unwrap().len() >= n {
            return list.as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the inspector did not list {n} exchanges");
}

#[tokio::test]
async fn requests_lists_exchanges_newest_first_with_credentials_as_stars() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_TENANT_CODE", "configured-tenant-5")]).await;
    let http = client();
    for path in ["/api/one", "/api/two?x=1", "/hop"] {
        let mut request = http.get(format!("{}{path}", proxy.url));
        for (name, value) in CALLER_SECRETS {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    let list = wait_entries(&proxy, 3).await;
    let targets: Vec<_> = list.iter().map(|e| (e["path"].as_str().unwrap(), e["query"].as_str())).collect();
    assert_eq!(targets, [("/hop", None), ("/api/two", Some("x=1")), ("/api/one", None)]);
    let seqs: Vec<_> = list.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "{seqs:?}");
    let hop = &list[0];
    assert_eq!(hop["status"], 200);
    assert_eq!(hop["method"], "GET");
    assert_eq!(hop["caller"], "loopback");
    assert_eq!(hop["tenant"], serde_json::Value::Null);
    assert!(hop["upstream_ms"].as_f64().is_some() && hop["total_ms"].as_f64().is_some());
    assert_eq!(hop["request_body"], serde_json::Value::Null, "meta keeps no body");
    let header = |list: &serde_json::Value, name: &str| -> Vec<String> {
        let pairs = list.as_array().unwrap().iter().filter(|p| p[0] == name);
        pairs.map(|p| p[1].as_str().unwrap().to_owned()).collect()
    };
    for (name, _) in CALLER_SECRETS {
        assert_eq!(header(&hop["request_headers"], name), ["***"], "{name}");
    }
    assert_eq!(header(&hop["response_headers"], "set-cookie"), ["***", "***"]);
    assert_eq!(header(&hop["response_headers"], "x-kept"), ["yes"]);
    // The upstream had the proxy's credentials; no page shows them, nor the callers'.
    let token = upstream.last().headers["authorization"].to_str().unwrap().to_owned();
    let text = serde_json::to_string(&list).unwrap();
    for secret in CALLER_SECRETS.iter().map(|(_, v)| *v).chain([token.as_str(), SECRET, "configured-tenant-5"]) {
        assert!(!text.contains(secret.split(' ').next_back().unwrap()), "{secret} in {text}");
    }

    let newest = requests(&proxy, "?limit=2").await;
    assert_eq!(newest.as_array().unwrap().len(), 2);
    assert_eq!(newest[0]["path"], "/hop");
    assert_eq!(requests(&proxy, "?limit=0").await, serde_json::json!([]));
    let bad = client().get(format!("{}/_proxy/requests?limit=many", proxy.url)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    // The proxy's own endpoints are not exchanges with the API.
    assert!(
        requests(&proxy, "")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["path"].as_str().unwrap().starts_with("/_proxy"))
    );
}

#[tokio::test]
async fn bodies_keeps_the_first_64_kib_of_each_body_and_meta_none() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "bodies")]).await;
    let body = vec![b'x'; 100 * 1024];
    let response = client().post(format!("{}/upload", proxy.url)).body(body).send().await.unwrap();
    let answer = response.text().await.unwrap();
    let entry = &wait_entries(&proxy, 1).await[0];
    assert_eq!(entry["bytes_in"], 100 * 1024);
    assert_eq!(entry["request_body"]["kept"], 64 * 1024);
    assert_eq!(entry["request_body"]["truncated"], true);
    assert_eq!(entry["request_body"]["text"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(entry["response_body"]["text"], answer.as_str());
    assert_eq!(entry["response_body"]["truncated"], false);

    // This API echoes the headers it received, the injected token among them: kept, it is hidden.
    let echo = client().get(format!("{}/api/echo", proxy.url)).send().await.unwrap().text().await.unwrap();
    let token = upstream.last().headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
    assert!(echo.contains(&token), "the mock echoes the token: {echo}");
    let entry = &wait_entries(&proxy, 2).await[0];
    let kept = entry["response_body"]["text"].as_str().unwrap();
    assert!(!kept.contains(&token) && kept.contains("Bearer ***"), "{kept}");
}

#[tokio::test]
async fn off_keeps_nothing() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "off")]).await;
    assert_eq!(client().get(format!("{}/api/one", proxy.url)).send().await.unwrap().status(), 200);
    let status: serde_json::Value =
        client().get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["inspector"]["mode"], "off");
    assert_eq!(requests(&proxy, "").await, serde_json::json!([]));
}

/// Reads one SSE event's `data` line from `reader`, skipping comments and other fields.
async fn next_data(reader: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
        assert!(read.expect("an event within 5 s").unwrap() > 0, "the stream ended");
        // Chunked framing: size lines are hex digits alone; data lines start with `data: `.
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            return serde_json::from_str(data).unwrap();
        }
    }
}

#[tokio::test]
async fn events_stream_each_exchange_as_it_finishes_and_end_at_shutdown() {
    let (mut proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let mut reader = reading(proxy.addr, "/_proxy/events").await;
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).await.unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");

    let http = client();
    for path in ["/api/first", "/api/second"] {
        let response = http.get(format!("{}{path}", proxy.url)).header("cookie", "s=caller-cookie").send().await;
        response.unwrap().bytes().await.unwrap();
    }
    let first = next_data(&mut reader).await;
    let second = next_data(&mut reader).await;
    assert_eq!((first["path"].as_str(), second["path"].as_str()), (Some("/api/first"), Some("/api/second")));
    assert_eq!(second["seq"].as_u64().unwrap(), first["seq"].as_u64().unwrap() + 1);
    let cookie = first["request_headers"].as_array().unwrap().iter().find(|p| p[0] == "cookie").unwrap();
    assert_eq!(cookie[1], "***");

    // The stream does not hold the shutdown for its grace period (30 s by default).
    proxy.shutdown();
    let mut rest = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest));
    assert!(ended.await.is_ok(), "the event stream did not end at the shutdown");
    tokio::time::timeout(Duration::from_secs(5), proxy.task).await.expect("the proxy stopped").unwrap().unwrap();
}

#[tokio::test]
async fn the_inspector_is_behind_the_same_checks_as_status_and_its_page_runs_no_inline_script() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    for path in ["/_proxy/ui", "/_proxy/requests", "/_proxy/events", "/_proxy/ui/inspector.js"] {
        let other_host = format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
        assert!(raw(proxy.addr, &other_host).await.starts_with("HTTP/1.1 403"), "{path}");
        let origin = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
            proxy.addr
        );
        assert!(raw(proxy.addr, &origin).await.starts_with("HTTP/1.1 403"), "{path}");
        let cross = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n",
            proxy.addr
        );
        assert!(raw(proxy.addr, &cross).await.starts_with("HTTP/1.1 403"), "{path}");
    }
    // What a browser sends for the page's own requests passes.
    let page =
        client().get(format!("{}/_proxy/ui", proxy.url)).header("sec-fetch-site", "same-origin").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    for tag in html.split("<script").skip(1) {
        let tag = tag.split('>').next().unwrap();
        assert!(tag.contains("src=\"/_proxy/ui/"), "an inline script: <script{tag}>");
    }
    // No handler attribute (`onclick=`) either.
    let handler = html.split(" on").skip(1).find(|rest| {
        let name = rest.split('=').next().unwrap();
        rest.contains('=') && !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
    });
    assert_eq!(handler, None);
    for (file, media) in [("inspector.js", "text/javascript"), ("inspector.css", "text/css")] {
        let response = client().get(format!("{}/_proxy/ui/{file}", proxy.url)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(media));
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    // The script inserts nothing as HTML.
    let script =
        client().get(format!("{}/_proxy/ui/inspector.js", proxy.url)).send().await.unwrap().text().await.unwrap();
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
        assert!(!script.contains(sink), "{sink}");
    }
}

fn inspect_config(
    file: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<uem_proxy::Config, uem_proxy::config::ConfigError> {
    crate::support::config("http://127.0.0.1:9", "http://127.0.0.1:9/token", file, extra)
}

#[test]
fn the_settings_default_to_meta_and_500_come_from_file_or_environment_and_bad_ones_are_named() {
    use uem_proxy::record::inspect::{InspectMode, InspectSettings};
    let settings = |mode, entries| InspectSettings { mode, entries };
    assert_eq!(inspect_config(None, &[]).unwrap().inspect, settings(InspectMode::Meta, 500));
    let c = inspect_config(None, &[("UEM_PROXY_INSPECT", "Bodies"), ("UEM_PROXY_INSPECT_ENTRIES", "20")]).unwrap();
    assert_eq!(c.inspect, settings(InspectMode::Bodies, 20));
    assert_eq!((c.summary()["inspect"].as_str(), c.summary()["inspect_entries"].as_u64()), (Some("bodies"), Some(20)));
    let file = "inspect = \"off\"\ninspect_entries = 7\n";
    assert_eq!(inspect_config(Some(file), &[]).unwrap().inspect, settings(InspectMode::Off, 7));
    let bad = [("UEM_PROXY_INSPECT", "all"), ("UEM_PROXY_INSPECT_ENTRIES", "-1")];
    let Err(e) = inspect_config(None, &bad) else { panic!("bad settings are refused") };
    let e = e.to_string();
    assert!(e.contains("UEM_PROXY_INSPECT: 'all' is not off, meta or bodies"), "{e}");
    assert!(e.contains("UEM_PROXY_INSPECT_ENTRIES: '-1' is not a whole number of exchanges"), "{e}");
}

#[tokio::test]
async fn a_reload_changes_what_is_kept() {
    use uem_proxy::record::inspect::InspectMode;
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let api = format!("http://{}", proxy.addr);
    let config = crate::support::config(&api, &format!("{api}/token"), None, &[]).unwrap();
    let listen = uem_proxy::config::Listen::Tcp("127.0.0.1:0".parse().unwrap());
    let app = uem_proxy::app::App::new(config, listen).unwrap();
    assert_eq!(app.inspector.mode(), InspectMode::Meta);
    let off = crate::support::config(&api, &format!("{api}/token"), None, &[("UEM_PROXY_INSPECT", "off")]).unwrap();
    let changes = app.apply(off).await.unwrap();
    assert!(changes.contains(&"inspect".to_owned()), "{changes:?}");
    assert_eq!(app.inspector.mode(), InspectMode::Off);
    assert_eq!(app.status(None)["inspector"]["mode"], "off");
}

/// A caller that leaves in the middle of an answer: its exchange is listed as incomplete, with
/// what it was sent, once the proxy notices; nothing waits for the page.
#[tokio::test]
async fn a_caller_that_leaves_mid_answer_is_listed_as_incomplete() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "bodies")]).await;
    let mut reader = reading(proxy.addr, "/probe-download").await;
    let mut line = String::new();
    while !line.contains("first;") {
        line.clear();
        assert!(reader.read_line(&mut line).await.unwrap() > 0);
    }
    drop(reader);
    let entry = &wait_entries(&proxy, 1).await[0];
    assert_eq!(entry["path"], "/probe-download");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["complete"], false);
    assert_eq!(entry["response_body"]["text"], "first;");
}

/// A peer that may not call cannot write into what the page shows; a caller refused for its
/// `Host` is listed (it is one of the proxy's callers, and the refusal is worth seeing).
#[tokio::test]
async fn peers_that_may_not_call_are_not_listed() {
    use uem_proxy::listen::{Listen, Peer};
    let (tokens, upstream) = (crate::support::TokenService::default(), crate::support::Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let config = crate::support::config(&api, &token_url, None, &[("UEM_PROXY_ALLOW_CIDRS", "10.20.0.0/16")]).unwrap();
    let service = uem_proxy::service(&config, &Listen::Tcp("0.0.0.0:8080".parse().unwrap())).unwrap();
    let call = |path: &str, host: &str, peer: &str| {
        let req = http::Request::get(path).header("host", host).body(axum::body::Body::empty()).unwrap();
        service.clone().serve(req, Peer::Tcp(peer.parse().unwrap()), false)
    };
    for _ in 0..3 {
        let refused = call("/api/from-outside", "localhost", "10.21.0.9:4000").await;
        assert_eq!(refused.status(), 403);
        axum::body::to_bytes(refused.into_body(), 4096).await.unwrap();
    }
    let wrong_host = call("/api/wrong-host", "evil.example", "10.20.7.7:4000").await;
    assert_eq!(wrong_host.status(), 403);
    axum::body::to_bytes(wrong_host.into_body(), 4096).await.unwrap();
    let listed = call("/_proxy/requests", "localhost", "10.20.7.7:4000").await;
    assert_eq!(listed.status(), 200);
    let list: serde_json::Value =
        serde_json::from_slice(&axum::body::to_bytes(listed.into_body(), 1 << 20).await.unwrap()).unwrap();
    let paths: Vec<_> = list.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/api/wrong-host"]);
    assert_eq!(list[0]["caller"], serde_json::Value::Null, "refused: no reason it was let in");
}

/// A raw connection that has sent `GET path`, to read the answer line by line as it comes.
async fn reading(addr: std::net::SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    BufReader::new(stream)
}
