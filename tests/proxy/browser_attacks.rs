//! Attacks on the inspector's page in headless Chromium: what "copy as curl" gives a user who
//! pastes it into a shell. It must send the same request once, and run nothing else, whatever
//! the caller put in the path, the query or the body.

use std::time::Duration;

use crate::browser::{Driver, Session};
use crate::support::{Proxy, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_as_curl_sends_the_same_request_once_and_runs_nothing_else() {
    let driver = Driver::start().await;
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_INSPECT", "bodies")]).await;
    let session = driver.session().await;
    let outcome = tokio::spawn(scenario(proxy, upstream, session.clone())).await;
    session.quit().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn scenario(proxy: Proxy, upstream: crate::support::Upstream, session: Session) {
    session.open(&format!("{}/_proxy/ui", proxy.url)).await;
    let loaded = "return document.getElementById('rows') !== null && document.readyState === 'complete'";
    session.until(loaded, Duration::from_secs(10)).await.expect("the page loads");

    let dir = std::env::temp_dir().join(format!("uem-proxy-curl-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    // A quote that ends the shell's quoting, a command after it; curl's URL globbing (`[1-3]`,
    // `{a,b}`) would make several requests of one; a body starting with `@` would be a file curl
    // reads and sends.
    let target = format!("/api/x/';touch$IFS{};'?ids[1-3]=1&v={{a,b}}", marker.display());
    let body = "@/etc/hostname";
    let sent = client().post(format!("{}{target}", proxy.url)).body(body).send().await.unwrap();
    assert_eq!(sent.status(), 200);
    sent.bytes().await.unwrap();
    let before = upstream.seen().len();
    let original = upstream.last();
    assert_eq!(original.body, body);

    let one = "return document.querySelectorAll('#rows tr').length === 1";
    session.until(one, Duration::from_secs(2)).await.expect("the row");
    session.click("#rows tr:first-child").await;
    let command = session.run("return (document.querySelector('#detail pre.curl') || {}).textContent").await;
    let command = command.as_str().expect("the curl command").to_owned();

    let run = command.clone();
    let ran = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout").args(["20", "sh", "-c", &run]).current_dir(&dir).output().unwrap()
    })
    .await
    .unwrap();
    assert!(ran.status.success(), "{command}: {}", String::from_utf8_lossy(&ran.stderr));
    assert!(!marker.exists(), "the shell ran a command from the path: {command}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), before + 1, "one request, not a glob's worth: {command}");
    let again = &seen[before];
    assert_eq!((again.method.as_str(), again.target.as_str()), ("POST", original.target.as_str()), "{command}");
    assert_eq!(again.body, body, "the body as it was sent, not a file: {command}");
    let _ = std::fs::remove_dir_all(marker.parent().unwrap());
}
