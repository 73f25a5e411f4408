//! `uem-proxy check` takes the route `run` takes (the egress proxy from the setting or the
//! environment) and names the hop that failed. Every host is `.invalid` or loopback: the only
//! traffic is to the local mock proxies and the sandbox.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::binary::command;

/// Reads a request head (and a body of `Content-Length` bytes, if any).
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = data[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some((head, body))
}

/// A forward proxy that answers every request with `status`, recording the heads it saw.
async fn refusing_proxy(status: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                if let Some((head, _)) = read_request(&mut stream).await {
                    heads.lock().unwrap().push(head);
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A forward proxy for plain-HTTP requests (absolute-form targets) that sends each to `target`
/// whatever host it names, one request per connection.
async fn forwarding_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut stream).await else { return };
                heads.lock().unwrap().push(head.lines().next().unwrap_or_default().to_owned());
                let mut lines = head.lines();
                let mut parts = lines.next().unwrap().split(' ');
                let (method, url) = (parts.next().unwrap(), parts.next().unwrap());
                let url = url::Url::parse(url).unwrap();
                let origin_form = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_owned(),
                };
                let mut request = format!("{method} {origin_form} HTTP/1.1\r\n");
                for line in lines.filter(|l| !l.is_empty()) {
                    let name = line.split(':').next().unwrap().to_ascii_lowercase();
                    if !["connection", "proxy-connection", "proxy-authorization"].contains(&name.as_str()) {
                        request.push_str(&format!("{line}\r\n"));
                    }
                }
                request.push_str("connection: close\r\n\r\n");
                let mut upstream = TcpStream::connect(target).await.unwrap();
                upstream.write_all(request.as_bytes()).await.unwrap();
                upstream.write_all(&body).await.unwrap();
                let _ = tokio::io::copy(&mut upstream, &mut stream).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
}

async fn check(env: Vec<(String, String)>) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let output = command(&env).arg("check").output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    })
    .await
    .unwrap()
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("UEM_API_URL", "https://uem-api.invalid"),
        ("UEM_TOKEN_URL", "https://uem-token.invalid/connect/token"),
        ("UEM_CLIENT_ID", "client"),
        ("UEM_CLIENT_SECRET", "s3cret"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_proxy_that_refuses_connect_is_named_not_the_token_host() {
    let (proxy, seen) = refusing_proxy("403 Forbidden").await;
    let setting = format!("http://bob:pa55word@{proxy}");
    let (code, text) = check(settings(&[("UEM_PROXY_EGRESS_PROXY", &setting)])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED at step \"egress proxy\""), "{text}");
    assert!(text.contains("refused CONNECT uem-token.invalid:443: it answered HTTP 403 Forbidden"), "{text}");
    assert!(!text.contains("pa55word") && !text.contains("does not resolve"), "{text}");
    let head = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("CONNECT uem-token.invalid:443 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Proxy-Authorization: Basic Ym9iOnBhNTV3b3Jk"), "the URL's credentials are sent: {head}");

    // The same proxy named by the environment, as `run` takes it.
    let https_proxy = format!("http://{proxy}");
    let (code, text) = check(settings(&[("HTTPS_PROXY", &https_proxy)])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED at step \"egress proxy\""), "{text}");
    // ... unless NO_PROXY exempts the host: then the host itself is tried, and does not resolve.
    let (code, text) = check(settings(&[("HTTPS_PROXY", &https_proxy), ("NO_PROXY", "uem-token.invalid")])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED at step \"token service\": uem-token.invalid does not resolve"), "{text}");
    // UEM_PROXY_EGRESS_PROXY=none goes straight, whatever the environment says.
    let (_, text) = check(settings(&[("HTTPS_PROXY", &https_proxy), ("UEM_PROXY_EGRESS_PROXY", "none")])).await;
    assert!(text.contains("FAILED at step \"token service\": uem-token.invalid does not resolve"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cannot_reach_the_host_blames_the_host_and_an_unreachable_proxy_itself() {
    let (proxy, _) = refusing_proxy("502 Bad Gateway").await;
    let setting = format!("http://{proxy}");
    let (code, text) = check(settings(&[("UEM_PROXY_EGRESS_PROXY", &setting)])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED at step \"token service\""), "{text}");
    assert!(text.contains("could not reach uem-token.invalid:443: it answered CONNECT with HTTP 502"), "{text}");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let setting = format!("http://bob:pa55word@{closed}");
    let (code, text) = check(settings(&[("UEM_PROXY_EGRESS_PROXY", &setting)])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("FAILED at step \"egress proxy\": the egress proxy http://{closed}/")), "{text}");
    assert!(text.contains("cannot be reached") && text.contains("refuses"), "{text}");
    assert!(!text.contains("pa55word"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_is_never_ok() {
    let (code, text) = check(settings(&[("UEM_PROXY_EGRESS_PROXY", "none"), ("UEM_PROXY_READONLY", "true")])).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("  FAIL  token service  uem-token.invalid does not resolve"), "{text}");
    assert!(
        text.contains(
            "  warn  configuration  UEM_PROXY_READONLY is not a uem-proxy setting and is ignored: did you mean"
        ),
        "check lists the warnings: {text}"
    );
    assert!(!text.lines().any(|l| l.trim_start().starts_with("ok    token service")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_through_the_egress_proxy_where_the_hosts_do_not_resolve_directly() {
    let (base, _sandbox) = crate::support::start_sandbox(crate::support::sandbox_options()).await;
    let sandbox: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let (proxy, seen) = forwarding_proxy(sandbox).await;
    let api = format!("http://uem-sandbox.invalid:{}", sandbox.port());
    let token_url = format!("{api}/connect/token");
    let setting = format!("http://{proxy}");
    let (code, text) = check(settings(&[
        ("UEM_API_URL", &api),
        ("UEM_TOKEN_URL", &token_url),
        ("UEM_CLIENT_ID", crate::support::SANDBOX_ID),
        ("UEM_CLIENT_SECRET", crate::support::SANDBOX_SECRET),
        ("UEM_PROXY_EGRESS_PROXY", &setting),
    ]))
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(text.contains(&format!("ok    token service  through the egress proxy http://{proxy}")), "{text}");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|l| l.starts_with(&format!("POST {token_url} "))), "{seen:?}");
    assert!(seen.iter().any(|l| l.starts_with(&format!("GET {api}/api/system/info "))), "{seen:?}");
}
