//! Attacks on what the inspector shows: a credential reaching `/_proxy/requests` by a spelling or
//! a place its redaction did not think of. Each test calls through the proxy to an API that
//! misbehaves on purpose, then searches the whole listing for the secret.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::StatusCode;

use crate::support::{Proxy, SECRET, TokenService, client, spawn};

/// Long enough that a piece of it means something; what the mock token service issues after it.
const TOKEN_PREFIX: &str = "long-secret-token-";
/// A tenant code as UEM issues them: base64, with `+`, `/` and `=`.
const TENANT_CODE: &str = "xM1lgZUC+yHcKUXw8z/Tc0e7oA=";

/// The bearer token the API received.
fn bearer(req: &Request) -> String {
    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    auth.strip_prefix("Bearer ").unwrap_or(&auth).to_owned()
}

/// An API that puts the credentials it received where an API might: in a `Location`, in a body
/// cut by the inspector's 64 KiB limit, JSON-escaped as .NET's encoder writes them.
async fn hostile(req: Request) -> Response {
    let token = bearer(&req);
    let code = req.headers().get("aw-tenant-code").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    match req.uri().path() {
        // The forwarder drops a header that holds a credential as it was sent; in a URL, a
        // tenant code is percent-encoded.
        "/location" => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("https://elsewhere.example/next?code={}", percent(&code)))
            .header("x-debug", format!("received {}", token.replace('-', "\\u002d")))
            .body(axum::body::Body::empty())
            .unwrap(),
        "/cut" => {
            // The token begins 10 bytes before the inspector stops keeping.
            let mut body = "a".repeat(64 * 1024 - 10);
            body.push_str(&token);
            body.push_str(&"b".repeat(100));
            body.into_response()
        }
        "/dotnet" => {
            // System.Text.Json escapes `+` (and a serialiser may escape `/`): the page's JSON.parse
            // shows the value as it was.
            let escaped = code.replace('+', "\\u002B").replace('/', "\\/");
            let token = token.replace('-', "\\u002d");
            let body = format!(r#"{{"tenantCode":"{escaped}","token":"{token}"}}"#);
            ([("content-type", "application/json")], body).into_response()
        }
        "/percent" => format!("next=%2Fx%3Fcode%3D{}", percent(&code)).into_response(),
        _ => {
            let headers: Vec<String> =
                req.headers().iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?"))).collect();
            headers.join("\n").into_response()
        }
    }
}

fn percent(code: &str) -> String {
    code.replace('+', "%2B").replace('/', "%2f").replace('=', "%3D")
}

async fn start(extra: &[(&str, &str)]) -> Proxy {
    let api = format!("http://{}", spawn(Router::new().fallback(any(hostile))).await);
    let tokens = TokenService { prefix: TOKEN_PREFIX, ..Default::default() };
    let token_url = tokens.start().await;
    let mut env = vec![("UEM_PROXY_INSPECT", "bodies"), ("UEM_TENANT_CODE", TENANT_CODE)];
    env.extend_from_slice(extra);
    Proxy::start(&api, &token_url, &env).await
}

/// The listing once it holds `n` exchanges, as text.
async fn listing(proxy: &Proxy, n: usize) -> String {
    for _ in 0..200 {
        let response = client().get(format!("{}/_proxy/requests", proxy.url)).send().await.unwrap();
        let list: serde_json::Value = response.json().await.unwrap();
        if list.as_array().unwrap().len() >= n {
            return serde_json::to_string(&list).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the inspector did not list {n} exchanges");
}

/// Neither `secret` nor any piece of it of `piece` characters or more is in `text`.
fn assert_no_piece(text: &str, secret: &str, piece: usize) {
    for start in 0..=secret.len() - piece {
        let part = &secret[start..start + piece];
        assert!(!text.contains(part), "'{part}' of '{secret}' in {text}");
    }
}

async fn call(proxy: &Proxy, path: &str) -> String {
    let response = client().get(format!("{}{path}", proxy.url)).send().await.unwrap();
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_tenant_code_an_api_echoes_in_a_body_is_hidden() {
    let proxy = start(&[]).await;
    let echoed = call(&proxy, "/echo").await;
    assert!(echoed.contains(TENANT_CODE), "the API echoes the code: {echoed}");
    let text = listing(&proxy, 1).await;
    assert_no_piece(&text, TENANT_CODE, 8);
    assert_no_piece(&text, TOKEN_PREFIX, 8);
}

#[tokio::test]
async fn a_token_cut_by_the_body_limit_shows_no_piece_of_it() {
    let proxy = start(&[]).await;
    assert!(call(&proxy, "/cut").await.contains(TOKEN_PREFIX));
    let text = listing(&proxy, 1).await;
    assert!(text.contains("\"truncated\":true"), "{}", &text[..200]);
    assert_no_piece(&text, TOKEN_PREFIX, 4);
}

#[tokio::test]
async fn credentials_in_a_location_or_another_response_header_reach_neither_the_caller_nor_the_page() {
    let proxy = start(&[]).await;
    let response = client().get(format!("{}/location", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 302);
    // The forwarder drops a header value that holds a credential in any spelling.
    assert!(response.headers().get("location").is_none(), "{:?}", response.headers());
    assert!(response.headers().get("x-debug").is_none(), "{:?}", response.headers());
    let text = listing(&proxy, 1).await;
    assert!(!text.contains("\"location\"") && !text.contains("\"x-debug\""), "{text}");
    assert_no_piece(&text, &percent(TENANT_CODE), 8);
    assert_no_piece(&text, TOKEN_PREFIX, 8);
}

#[tokio::test]
async fn credentials_escaped_in_json_or_percent_encoded_are_hidden() {
    let proxy = start(&[]).await;
    let dotnet = call(&proxy, "/dotnet").await;
    let shown: serde_json::Value = serde_json::from_str(&dotnet).unwrap();
    assert_eq!(shown["tenantCode"], TENANT_CODE, "what the page's JSON.parse shows");
    call(&proxy, "/percent").await;
    let text = listing(&proxy, 2).await;
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    for entry in list.as_array().unwrap() {
        let body = entry["response_body"]["text"].as_str().unwrap();
        assert!(body.contains("***"), "{body}");
        // As the page shows a JSON body: parsed.
        let decoded = serde_json::from_str::<serde_json::Value>(body).map(|v| v.to_string()).unwrap_or_default();
        let decoded_percent = url::form_urlencoded::parse(body.as_bytes()).map(|(_, v)| v.into_owned()).collect();
        for form in [body.to_owned(), decoded, decoded_percent] {
            assert_no_piece(&form, TENANT_CODE, 8);
            assert_no_piece(&form, TOKEN_PREFIX, 8);
        }
    }
}

#[tokio::test]
async fn credentials_a_caller_puts_in_the_query_show_as_stars() {
    let proxy = start(&[]).await;
    let query = "?Authorization=Bearer%20caller-q-1&ACCESS_TOKEN=caller-q-2&aw%2Dtenant%2Dcode=caller-q-3\
                 &client_secret=caller-q-4&page=2";
    call(&proxy, &format!("/api/list{query}")).await;
    let text = listing(&proxy, 1).await;
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        list[0]["query"], "Authorization=***&ACCESS_TOKEN=***&aw%2Dtenant%2Dcode=***&client_secret=***&page=2",
        "{text}"
    );
    assert!(!text.contains("caller-q-"), "{text}");
}

#[tokio::test]
async fn the_client_secret_and_the_tenant_code_in_a_callers_body_are_hidden() {
    let proxy = start(&[]).await;
    let body = format!("{{\"note\":\"my config: {SECRET} {TENANT_CODE}\"}}");
    client().post(format!("{}/api/notes", proxy.url)).body(body).send().await.unwrap().text().await.unwrap();
    let text = listing(&proxy, 1).await;
    assert_no_piece(&text, SECRET, 8);
    assert_no_piece(&text, TENANT_CODE, 8);
}

/// A download that echoes its token at the end, while another request's 401 has the token
/// replaced: the listing hides the token the download was sent with, no longer the current one.
#[tokio::test]
async fn a_token_replaced_while_a_body_streams_is_still_hidden() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let api = {
        let release = release.clone();
        let handler = move |req: Request| {
            let release = release.clone();
            async move {
                let token = bearer(&req);
                match req.uri().path() {
                    "/reject-first" if token.ends_with("tok-1") => StatusCode::UNAUTHORIZED.into_response(),
                    "/slow-echo" => {
                        let pieces = futures_util::stream::unfold(0, move |step| {
                            let (release, token) = (release.clone(), token.clone());
                            async move {
                                match step {
                                    0 => Some((Ok::<_, std::io::Error>("start;".to_owned()), 1)),
                                    1 => {
                                        release.notified().await;
                                        Some((Ok(format!("sent with {token}")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        axum::body::Body::from_stream(pieces).into_response()
                    }
                    _ => "ok".into_response(),
                }
            }
        };
        format!("http://{}", spawn(Router::new().fallback(any(handler))).await)
    };
    let tokens = TokenService { prefix: TOKEN_PREFIX, ..Default::default() };
    let proxy = Proxy::start(&api, &tokens.start().await, &[("UEM_PROXY_INSPECT", "bodies")]).await;
    for _ in 0..500 {
        let ready = client().get(format!("{}/_proxy/readyz", proxy.url)).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut download = client().get(format!("{}/slow-echo", proxy.url)).send().await.unwrap();
    assert_eq!(download.chunk().await.unwrap().unwrap(), "start;");
    let rejected = client().get(format!("{}/reject-first", proxy.url)).send().await.unwrap();
    assert_eq!(rejected.status(), 200, "replayed with a new token");
    assert_eq!(tokens.grants.load(std::sync::atomic::Ordering::SeqCst), 2);
    release.notify_one();
    let rest = download.text().await.unwrap();
    assert_eq!(rest, format!("sent with {TOKEN_PREFIX}tok-1"));
    let text = listing(&proxy, 2).await;
    assert!(text.contains("start;sent with ***"), "{text}");
    assert!(!text.contains(&format!("{TOKEN_PREFIX}tok-1")), "{text}");
}

/// With several tenants, each exchange hides its own tenant's credentials.
#[tokio::test]
async fn each_tenants_credentials_are_hidden_in_its_exchanges() {
    let mut file = "inspect = \"bodies\"\n".to_owned();
    for (name, code) in [("prod", "prod-code+1/AAA="), ("uat", "uat-code+2/BBB=")] {
        let api = format!("http://{}", spawn(Router::new().fallback(any(hostile))).await);
        let prefix = if name == "prod" { "prod-secret-token-" } else { "uat-secret-token-" };
        let token_url = TokenService { prefix, ..Default::default() }.start().await;
        file.push_str(&format!(
            "[tenants.{name}]\napi_url = \"{api}\"\ntoken_url = \"{token_url}\"\nclient_id = \"{name}-client\"\n\
             client_secret = \"{name}-client-secret\"\ntenant_code = \"{code}\"\n"
        ));
    }
    let config = uem_proxy::Config::load_toml(&file, &|_| None).expect("valid config");
    let proxy = Proxy::run(config).await;
    for name in ["prod", "uat"] {
        let echoed = call(&proxy, &format!("/t/{name}/echo")).await;
        assert!(echoed.contains(&format!("{name}-code")), "{echoed}");
        call(&proxy, &format!("/t/{name}/dotnet")).await;
    }
    let text = listing(&proxy, 4).await;
    for secret in ["prod-code+1/AAA=", "uat-code+2/BBB=", "prod-secret-token-", "uat-secret-token-"] {
        assert_no_piece(&text, secret, 8);
    }
}

/// Basic authentication: the header the API echoes, and the password should it echo that.
#[tokio::test]
async fn basic_credentials_are_hidden_encoded_or_not() {
    async fn whoami(req: Request) -> Response {
        use base64::Engine;
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim_start_matches("Basic ")).unwrap();
        format!("header {auth}; decoded {}", String::from_utf8(decoded).unwrap()).into_response()
    }
    let api = format!("http://{}", spawn(Router::new().fallback(any(whoami))).await);
    let env = [
        ("UEM_AUTH_MODE", "basic"),
        ("UEM_USERNAME", "admin-user"),
        ("UEM_PASSWORD", "pa55word-VALUE"),
        ("UEM_TENANT_CODE", TENANT_CODE),
        ("UEM_PROXY_INSPECT", "bodies"),
    ];
    let proxy = Proxy::start(&api, "http://127.0.0.1:9/token", &env).await;
    let answer = call(&proxy, "/api/whoami").await;
    assert!(answer.contains("decoded admin-user:pa55word-VALUE"), "{answer}");
    let text = listing(&proxy, 1).await;
    assert!(text.contains("header Basic ***; decoded admin-user:***"), "{text}");
}

/// Every path of the inspector, read with GET or HEAD: refused for another `Host`, a `Host` with
/// user information, a foreign `Origin`, or `Sec-Fetch-Site: cross-site` in any case; the page's
/// files always carry the policy.
#[tokio::test]
async fn every_inspector_path_is_checked_and_every_page_file_carries_the_policy() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let host = proxy.addr.to_string();
    let paths =
        ["/_proxy/ui", "/_proxy/ui/inspector.js", "/_proxy/ui/inspector.css", "/_proxy/requests", "/_proxy/events"];
    for path in paths {
        for method in ["GET", "HEAD"] {
            let ask = |extra: &str| format!("{method} {path} HTTP/1.1\r\n{extra}Connection: close\r\n\r\n");
            let refusals = [
                (ask("Host: evil.example\r\n"), "403"),
                (ask(&format!("Host: 127.0.0.1.nip.io:{}\r\n", proxy.addr.port())), "403"),
                (ask(&format!("Host: user@{host}\r\n")), "400"),
                (ask(&format!("Host: {host}\r\nOrigin: http://evil.example\r\n")), "403"),
                (ask(&format!("Host: {host}\r\nOrigin: null\r\n")), "403"),
                (ask(&format!("Host: {host}\r\nSec-Fetch-Site: Cross-Site\r\n")), "403"),
            ];
            for (request, status) in refusals {
                let answer = crate::support::raw(proxy.addr, &request).await;
                assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{request}: {answer}");
            }
            if path.starts_with("/_proxy/ui") {
                let answer = crate::support::raw(proxy.addr, &ask(&format!("Host: {host}\r\n"))).await;
                let head = answer.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let policy = format!("content-security-policy: {}", uem_proxy::record::inspect::ui::POLICY);
                assert!(head.contains(&policy.to_ascii_lowercase()), "{method} {path}: {head}");
                assert!(head.contains("x-content-type-options: nosniff"), "{method} {path}: {head}");
            }
        }
    }
}

/// With `bodies`, an upload reaches the API while it is being sent, and a download arrives
/// whole: the copy of their first 64 KiB holds nothing back.
#[tokio::test]
async fn bodies_mode_streams_uploads_and_downloads() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "bodies")]).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let sending = tokio::spawn(client().post(format!("{}/probe-upload", proxy.url)).body(body).send());
    tx.send(Ok(bytes::Bytes::from(vec![b'u'; 100 * 1024]))).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), upstream.first_piece.notified());
    first.await.expect("the API has the first piece while the rest is not sent");
    tx.send(Ok(bytes::Bytes::from(vec![b'v'; 1024]))).await.unwrap();
    drop(tx);
    let answer: serde_json::Value = sending.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answer["bytes"], 101 * 1024);

    let total = 8 * 1024 * 1024;
    let download = client().get(format!("{}/download?bytes={total}", proxy.url)).send().await.unwrap();
    crate::support::expect_pattern(download, total).await;
    let text = listing(&proxy, 2).await;
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list[0]["bytes_out"], total);
    assert_eq!(list[0]["response_body"]["kept"], 64 * 1024);
    assert_eq!(list[1]["request_body"]["kept"], 64 * 1024);
    assert_eq!(list[1]["request_body"]["truncated"], true);
}

fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Pages that open the event stream and never read it: requests go on at full pace, memory stays
/// with the ring, and a page that reads gets the newest exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_slow_no_request() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (proxy, _upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "bodies"), ("UEM_PROXY_INSPECT_ENTRIES", "20")]).await;
    let subscribe = || async {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET /_proxy/events HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        while !line.starts_with("retry:") {
            line.clear();
            assert!(reader.read_line(&mut line).await.unwrap() > 0);
        }
        reader
    };
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(subscribe().await);
    }
    let mut reading = subscribe().await;
    let http = client();
    let started = std::time::Instant::now();
    for i in 0..200 {
        let body = format!("{i:04}{}", "a".repeat(60 * 1024));
        let response = http.post(format!("{}/api/big/{i}", proxy.url)).body(body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "200 requests took {took:?} beside stalled pages");
    // The reading page skips what it missed and reaches the last exchange.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    loop {
        assert!(std::time::Instant::now() < deadline, "the reading page never saw the last exchange");
        line.clear();
        assert!(reading.read_line(&mut line).await.unwrap() > 0, "the stream ended");
        if line.starts_with("data: ") && line.contains("\"path\":\"/api/big/199\"") {
            break;
        }
    }
    drop(stalled);
}

/// A listing read slowly holds no exchange the ring has let go since: what it has not yet sent of
/// those is left out, so that memory stays bounded by the ring, however many read at once.
#[tokio::test]
async fn a_listing_read_slowly_holds_nothing_the_ring_let_go() {
    use http_body_util::BodyExt;
    use uem_proxy::listen::{Listen, Peer};
    let (tokens, upstream) = (TokenService::default(), crate::support::Upstream::default());
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let config = crate::support::config(&api, &token_url, None, &[("UEM_PROXY_INSPECT_ENTRIES", "2")]).unwrap();
    let service = uem_proxy::service(&config, &Listen::Tcp("127.0.0.1:8080".parse().unwrap())).unwrap();
    let call = |path: &str| {
        let req = http::Request::get(path).header("host", "localhost").body(axum::body::Body::empty()).unwrap();
        service.clone().serve(req, Peer::Tcp("127.0.0.1:4000".parse().unwrap()), false)
    };
    for path in ["/api/a", "/api/b"] {
        let response = call(path).await;
        response.into_body().collect().await.unwrap();
    }
    let mut listing = call("/_proxy/requests").await.into_body();
    let first = listing.frame().await.unwrap().unwrap().into_data().unwrap();
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    for path in ["/api/c", "/api/d"] {
        let response = call(path).await;
        response.into_body().collect().await.unwrap();
    }
    while let Some(frame) = listing.frame().await {
        text.push_str(std::str::from_utf8(&frame.unwrap().into_data().unwrap()).unwrap());
    }
    let list: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let paths: Vec<_> = list.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/api/b"], "sent before the ring let it go; /api/a was not");
}
