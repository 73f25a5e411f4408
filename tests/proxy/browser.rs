//! The inspector's page in a real browser: headless Chromium driven by chromedriver over the W3C
//! WebDriver protocol, against the real binary in front of the sandbox. Chromium and chromedriver
//! must be installed (`.ci/run` installs Debian's `chromium` and `chromium-driver`); without them
//! this test fails, it does not skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Running, command};
use crate::support::{SANDBOX_ID, SANDBOX_SECRET, client, sandbox_options, start_sandbox};

/// The first of `names` found on `PATH` or at one of `paths`.
fn find(names: &[&str], paths: &[&str]) -> Option<String> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let on_path = names.iter().flat_map(|n| dirs.split(':').map(move |d| format!("{d}/{n}")));
    on_path.chain(paths.iter().map(|p| p.to_string())).find(|p| std::path::Path::new(p).is_file())
}

/// chromedriver on a port of its own, killed when dropped.
pub(crate) struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        let binary = find(&["chromedriver"], &["/usr/lib/chromium/chromedriver"]).expect(
            "chromedriver is not installed: the inspector's browser test needs it \
             (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
        );
        // A free port: chromedriver cannot be handed a bound socket.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}"), http: client() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver.http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn session(&self) -> Session {
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"], &[]).expect(
            "chromium is not installed: the inspector's browser test needs it \
             (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
        );
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,900"];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        }}});
        let created =
            call(&self.http, reqwest::Method::POST, &format!("{}/session", self.url), Some(capabilities)).await;
        let id = created["sessionId"].as_str().expect("a session id");
        Session { http: self.http.clone(), url: format!("{}/session/{id}", self.url) }
    }
}

/// One WebDriver command; its `value`, which must not be an error.
async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer: Value = request.send().await.unwrap().json().await.unwrap();
    assert!(answer["value"].get("error").is_none(), "WebDriver {url}: {answer}");
    answer["value"].clone()
}

/// A browser session: its commands' base URL.
#[derive(Clone)]
pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn post(&self, path: &str, body: Value) -> Value {
        call(&self.http, reqwest::Method::POST, &format!("{}{path}", self.url), Some(body)).await
    }

    pub(crate) async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` in the page (a function body; `return` gives its value).
    pub(crate) async fn run(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] })).await
    }

    pub(crate) async fn click(&self, css: &str) {
        let found = self.post("/element", json!({ "using": "css selector", "value": css })).await;
        let element = found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// Polls `script` until it returns `true`, for at most `max`; returns how long that took.
    pub(crate) async fn until(&self, script: &str, max: Duration) -> Result<Duration, Value> {
        let start = Instant::now();
        loop {
            let value = self.run(script).await;
            if value == true {
                return Ok(start.elapsed());
            }
            if start.elapsed() > max {
                return Err(value);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let value = call(&self.http, reqwest::Method::GET, &format!("{}/screenshot", self.url), None).await;
        base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap()
    }

    pub(crate) async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}

/// A response body that tries to run script when inserted as HTML: the sandbox quotes an unknown
/// command in its error message.
const HOSTILE_COMMAND: &str = "%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D1%3E";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_exchanges_live_explains_a_403_and_runs_nothing_it_shows() {
    let driver = Driver::start().await;
    let (sandbox, _state) = start_sandbox(sandbox_options()).await;
    let token_url = format!("{sandbox}/connect/token");
    let env = [
        ("UEM_API_URL", sandbox.as_str()),
        ("UEM_TOKEN_URL", token_url.as_str()),
        ("UEM_CLIENT_ID", SANDBOX_ID),
        ("UEM_CLIENT_SECRET", SANDBOX_SECRET),
        ("UEM_PROXY_LISTEN", "127.0.0.1:0"),
        ("UEM_PROXY_LOG_FORMAT", "json"),
        ("UEM_PROXY_INSPECT", "bodies"),
    ];
    let proxy = Running::spawn(&mut command(&env));
    let base = format!("http://{}", proxy.addr());
    let session = driver.session().await;
    // Whatever happens, the browser is closed.
    let outcome = tokio::spawn(scenario(base, session.clone())).await;
    session.quit().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn scenario(base: String, session: Session) {
    session.open(&format!("{base}/_proxy/ui")).await;
    // The page is listening once its event stream is open.
    let listening = "return document.getElementById('rows') !== null && document.readyState === 'complete'";
    session.until(listening, Duration::from_secs(10)).await.expect("the page loads");

    let http = client();
    let calls = [
        (reqwest::Method::GET, "/api/system/info".to_owned()),
        (reqwest::Method::GET, "/api/mdm/devices/search?platform=Android&pagesize=2".to_owned()),
        (reqwest::Method::DELETE, "/api/mdm/devices/1".to_owned()),
    ];
    let mut statuses = Vec::new();
    for (method, path) in calls {
        let response = http.request(method, format!("{base}{path}")).header("authorization", "Bearer caller-secret-9");
        let response = response.send().await.unwrap();
        statuses.push(response.status().as_u16());
        response.bytes().await.unwrap();
    }
    assert_eq!(statuses, [200, 200, 403]);
    let three = "return document.querySelectorAll('#rows tr').length === 3";
    let took = session.until(three, Duration::from_secs(2)).await;
    assert!(
        took.is_ok(),
        "three rows within 2 s: {:?}",
        session.run("return document.getElementById('rows').textContent").await
    );

    // The 403: the sentence, the permission, the caller's Authorization as stars.
    session.click("#rows tr:first-child").await;
    let detail = session.run("return document.getElementById('detail').textContent").await;
    let detail = detail.as_str().unwrap();
    assert!(detail.contains("the OAuth client's role lacks the permission 'REST API Devices Delete'"), "{detail}");
    assert!(detail.contains("authorization***"), "{detail}");
    assert!(!detail.contains("caller-secret-9"), "{detail}");
    assert!(detail.contains("activityId"), "{detail}");
    assert!(detail.contains("curl -sS -g -X 'DELETE'") && !detail.contains("-H 'authorization"), "{detail}");

    // A body (and a header) holding HTML that runs script when parsed: shown as text, never run.
    let hostile = format!("{base}/api/mdm/devices/1/commands?command={HOSTILE_COMMAND}");
    let response = http.post(hostile).header("x-note", "<img src=x onerror=window.pwned=2>").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("<img src=x onerror=window.pwned=1>"));
    let four = "return document.querySelectorAll('#rows tr').length === 4";
    session.until(four, Duration::from_secs(2)).await.expect("the fourth row");
    session.click("#rows tr:first-child").await;
    let opened = "return (document.querySelector('#detail h2') || {}).textContent === 'POST ' + \
                  document.querySelector('#rows tr:first-child td.path').textContent + ' → 400'";
    session.until(opened, Duration::from_secs(2)).await.expect("the detail of the 400");
    // An image that failed to load fires its handler at once; give it a moment anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran = session.run("return [window.pwned === undefined, document.querySelectorAll('main img').length]").await;
    assert_eq!(ran, json!([true, 0]), "HTML from a body or header was parsed or run");
    let shown = "return document.getElementById('detail').textContent.includes('<img src=x onerror=window.pwned=1>')";
    assert_eq!(session.run(shown).await, true, "the body is shown as text");

    // The strip: the token counting down, the calls in the sparkline (in one minute or two).
    let drawn = "const sum = (cls) => [...document.querySelectorAll('#sparkline rect.' + cls)] \
                     .reduce((n, r) => n + Number(r.getAttribute('data-count')), 0); \
                 return sum('req') === 4 && sum('err') === 2";
    let counted = session.until(drawn, Duration::from_secs(3)).await;
    assert!(counted.is_ok(), "{:?}", session.run("return document.getElementById('strip').textContent").await);
    let token = session.run("return document.getElementById('token').textContent").await;
    assert!(token.as_str().unwrap().starts_with("valid for "), "{token}");

    // The filters: by status class, by method, by text.
    let shown = |filter: &str, value: &str| {
        format!(
            "const f = document.getElementById('{filter}'); f.value = {value:?}; \
             f.dispatchEvent(new Event('input')); return document.querySelectorAll('#rows tr').length"
        )
    };
    assert_eq!(session.run(&shown("f-status", "4")).await, 2);
    assert_eq!(session.run(&shown("f-method", "DELETE")).await, 1);
    assert_eq!(session.run(&shown("f-status", "")).await, 1);
    assert_eq!(session.run(&shown("f-method", "")).await, 4);
    assert_eq!(session.run(&shown("f-text", "Android")).await, 1);
    assert_eq!(session.run(&shown("f-text", "REST API Devices Delete")).await, 1, "the hint and headers are searched");
    assert_eq!(session.run(&shown("f-text", "")).await, 4);

    // The page as the README shows it: the 403 open.
    if let Ok(path) = std::env::var("UEM_PROXY_SCREENSHOT") {
        session.click("#rows tr:nth-child(2)").await;
        std::fs::write(path, session.screenshot().await).unwrap();
    }
}
