//! The one service every request goes through, against what it replaced: the access line as
//! the log has always written it, the metrics' labels, and the header timeout's clock.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::binary::{base_env, command};
use crate::support::{Proxy, TokenService, Upstream, client, raw};

/// The proxy binary writing text lines; its address (from its `listening` line) and its log.
struct TextRunning {
    child: std::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl TextRunning {
    fn start(api: &str, token_url: &str) -> TextRunning {
        let mut env = base_env(api, token_url);
        env.retain(|(k, _)| *k != "UEM_PROXY_LOG_FORMAT");
        env.push(("UEM_PROXY_LOG_FORMAT", "text"));
        let mut child = command(&env).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" listening ") || line.ends_with(": listening") || line.contains(": listening ") {
                    let listen = line.split(' ').find_map(|f| f.strip_prefix("listen=")).map(str::to_owned);
                    if let Some(listen) = listen {
                        let _ = tx.send(listen);
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let listen = rx.recv_timeout(Duration::from_secs(20)).expect("the proxy logs where it listens");
        TextRunning { child, addr: listen.parse().unwrap(), log }
    }

    /// The access line of the request to `path`, once it is written.
    async fn access(&self, path: &str) -> String {
        for _ in 0..500 {
            let found = self.log.lock().unwrap().iter().find(|l| l.contains(&format!(" path={path} "))).cloned();
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no access line for {path}: {:?}", self.log.lock().unwrap());
    }
}

impl Drop for TextRunning {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_access_line_quotes_the_caller_as_it_always_has() {
    // `caller="loopback"`: the field is a string, and scripts that read the text log match it
    // with its quotes. Written as a displayed value instead, it lost them.
    let tokens = TokenService::default();
    let upstream = Upstream::default();
    let (api, token_url) = (upstream.start().await, tokens.start().await);
    let proxy = TextRunning::start(&api, &token_url);
    let response = client().get(format!("http://{}/api/mdm/devices/1", proxy.addr)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let line = proxy.access("/api/mdm/devices/1").await;
    assert!(line.contains(" uem_proxy::access: request request_id=\""), "{line}");
    assert!(line.contains(" caller=\"loopback\" method=GET "), "{line}");
}

#[tokio::test]
async fn a_refused_request_is_logged_without_a_caller_and_a_served_one_with_it() {
    // `caller` says why a caller was let in, for audits; a request refused at the gate was not
    // let in, and its access event has always had no such field.
    let log = crate::bodies::Captured::start();
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let refused = raw(proxy.addr, "GET /api/refused HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let event = log.access("/api/refused").await;
    assert_eq!(event["status"], 403, "{event}");
    assert!(event.get("caller").is_none(), "{event}");
    let traced = raw(proxy.addr, "TRACE /api/traced HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(traced.starts_with("HTTP/1.1 405"), "{traced}");
    assert!(log.access("/api/traced").await.get("caller").is_none());
    let served = raw(proxy.addr, "GET /api/served HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert_eq!(log.access("/api/served").await["caller"], "loopback");
    assert_eq!(upstream.seen().len(), 1, "only the served one went upstream");
}

#[tokio::test]
async fn preflights_and_unforwardable_targets_are_counted_under_the_permission_category_of_their_path() {
    // The metrics' category is the permission family the path belongs to, whatever the answer;
    // a preflight answered at the gate and a target refused as unforwardable were counted as
    // `unknown` once the category was taken from the forwarder alone.
    let (proxy, upstream, _tokens) =
        Proxy::with_defaults(&[("UEM_PROXY_ALLOWED_ORIGINS", "http://localhost:3000")]).await;
    let preflight = raw(
        proxy.addr,
        "OPTIONS /api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n\
         Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(preflight.starts_with("HTTP/1.1 204"), "{preflight}");
    let connect = raw(proxy.addr, "CONNECT /api/mdm/devices/5 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 400"), "{connect}");
    let metrics = client().get(format!("{}/_proxy/metrics", proxy.url)).send().await.unwrap().text().await.unwrap();
    for counted in [
        r#"uem_proxy_requests_total{method="OPTIONS",category="Devices",status_class="2xx"} 1"#,
        r#"uem_proxy_requests_total{method="other",category="Devices",status_class="4xx"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted}\n{metrics}");
    }
    assert!(!metrics.contains(r#"category="unknown""#), "{metrics}");
    assert!(upstream.seen().is_empty());
}
