//! Bodies stream through the proxy both ways, whatever their size, and pauses are bounded.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::support::{Proxy, client};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_upload_streams_through_with_its_length() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let total = 200 * MIB;
    let expected = crate::support::pattern_checksum(total);
    let response = client()
        .post(format!("{}/upload", proxy.url))
        .header("content-length", total.to_string())
        .body(crate::support::pattern_body(total))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["bytes"], total);
    assert_eq!(body["checksum"], expected);
    assert_eq!(upstream.last().headers["content-length"], total.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_download_streams_through_with_its_length() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let total = 200 * MIB;
    let response = client().get(format!("{}/download?bytes={total}", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    crate::support::expect_pattern(response, total).await;
}

#[tokio::test]
async fn an_upload_reaches_the_upstream_before_it_is_finished() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let url = format!("{}/probe-upload", proxy.url);
    let request = tokio::spawn(async move {
        client().post(url).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap().text().await.unwrap()
    });
    tx.send(Ok(bytes::Bytes::from_static(b"first piece"))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), upstream.first_piece.notified())
        .await
        .expect("the first piece arrived upstream while the upload was still open");
    tx.send(Ok(bytes::Bytes::from_static(b", then the rest"))).await.unwrap();
    drop(tx);
    let reply: serde_json::Value = serde_json::from_str(&request.await.unwrap()).unwrap();
    assert_eq!(reply["bytes"], 26);
}

#[tokio::test]
async fn a_download_reaches_the_caller_before_it_is_finished() {
    let (proxy, upstream, _tokens) = Proxy::with_defaults(&[]).await;
    let response = client().get(format!("{}/probe-download", proxy.url)).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first piece arrived while the upstream held the rest back")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"first;");
    upstream.send_rest.notify_one();
    let rest = stream.next().await.unwrap().unwrap();
    assert_eq!(rest.as_ref(), b"rest");
}

#[tokio::test]
async fn the_upstream_timeout_counts_from_the_end_of_a_slow_upload() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_UPSTREAM_TIMEOUT", "400ms")]).await;
    let chunks = futures_util::stream::iter(0..8).then(|_| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789"))
    });
    let response =
        client().post(format!("{}/upload", proxy.url)).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(response.status(), 200, "1.2 s of upload is not an upstream timeout of 400 ms");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["bytes"], 80);
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_off() {
    let (proxy, _upstream, _tokens) = Proxy::with_defaults(&[("UEM_PROXY_UPSTREAM_TIMEOUT", "300ms")]).await;
    let response = client().get(format!("{}/stall-body", proxy.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let result = tokio::time::timeout(Duration::from_secs(5), response.bytes()).await.expect("cut off in time");
    assert!(result.is_err(), "a stalled body ends in an error, not as if complete");
}
