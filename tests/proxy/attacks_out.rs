//! A hostile or broken upstream on raw sockets: answers whose framing would make the proxy pass on
//! something other than what the upstream meant, or make the access log misreport a delivery.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bodies::{Captured, Step, get, head, proxy, send};
use crate::support::{Proxy, Reply, SECRET, TokenService};

/// Bytes that stand for a gzip-coded body (its magic number and then anything: nothing decodes it).
const ZIPPED: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not-really-deflated";

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn an_answer_with_a_transfer_coding_other_than_chunked_is_a_502_never_passed_on_decoded_wrongly() {
    let zipped = ZIPPED;
    let mut zipped_chunked = chunk(zipped);
    zipped_chunked.extend_from_slice(b"0\r\n\r\n");
    let te =
        |value: &str| vec![("Content-Type", "application/json".to_owned()), ("Transfer-Encoding", value.to_owned())];
    let cases: Vec<(&str, Vec<Step>)> = vec![
        // hyper decodes the chunks and leaves the gzip coding in the bytes; the header that said so
        // is hop-by-hop and goes: the caller would get gzip as plain JSON.
        ("gzip, chunked", vec![send(head("200 OK", &te("gzip, chunked"))), send(&zipped_chunked)]),
        ("GZIP, Chunked", vec![send(head("200 OK", &te("GZIP, Chunked"))), send(&zipped_chunked)]),
        ("two fields", {
            let mut h = te("gzip");
            h.push(("Transfer-Encoding", "chunked".to_owned()));
            vec![send(head("200 OK", &h)), send(&zipped_chunked)]
        }),
        // Read to the end of the connection, still gzip.
        ("gzip alone", vec![send(head("200 OK", &te("gzip"))), send(zipped)]),
        ("deflate alone", vec![send(head("200 OK", &te("deflate"))), send(zipped)]),
    ];
    for (name, steps) in cases {
        let proxy = proxy(steps, &[]).await;
        let got = get(proxy.addr, "/api/mdm/devices/search").await;
        assert_eq!(got.status, 502, "{name}: {got:?}");
        assert_eq!(got.json()["error"], "upstream_error", "{name}");
    }
    // Chunked alone, in any letter case, is decoded and passed on.
    let body = br#"{"devices":[]}"#;
    let mut chunked = chunk(body);
    chunked.extend_from_slice(b"0\r\n\r\n");
    let proxy = proxy(vec![send(head("200 OK", &te("Chunked"))), send(&chunked)], &[]).await;
    let got = get(proxy.addr, "/api/mdm/devices/search").await;
    assert_eq!((got.status, got.complete), (200, true), "{got:?}");
    assert_eq!(got.body, body);
}

#[tokio::test]
async fn complete_is_true_when_the_upstream_ends_its_body_with_trailers() {
    let log = Captured::start();
    let answer = head(
        "200 OK",
        &[
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Transfer-Encoding", "chunked".to_owned()),
            ("Trailer", "X-Checksum".to_owned()),
        ],
    );
    let mut body = chunk(b"hello");
    body.extend_from_slice(b"0\r\nX-Checksum: 5\r\n\r\n");
    let proxy = proxy(vec![send(answer), send(body), Step::Stall], &[]).await;
    let got = get(proxy.addr, "/api/blob").await;
    assert_eq!((got.status, got.complete, got.closed), (200, true, false), "{got:?}");
    assert_eq!(got.body, b"hello");
    let event = log.access("/api/blob").await;
    assert_eq!(event["complete"], true, "the whole body reached the caller: {event}");
    assert_eq!(event["bytes_out"], 5, "{event}");
}

#[tokio::test]
async fn a_body_that_fails_at_its_first_read_is_a_502_not_a_connection_closed_without_an_answer() {
    let log = Captured::start();
    let binary = |te: &str| {
        head("200 OK", &[("Content-Type", "application/octet-stream".to_owned()), ("Transfer-Encoding", te.to_owned())])
    };
    for (name, steps) in [
        (
            "a chunk size that overflows",
            vec![send(binary("chunked")), send("ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n")],
        ),
        ("a chunk size that is not hex", vec![send(binary("chunked")), send("zz\r\nhello\r\n0\r\n\r\n")]),
        (
            "cut before the first byte",
            vec![send(head(
                "200 OK",
                &[("Content-Type", "application/octet-stream".to_owned()), ("Content-Length", "100".to_owned())],
            ))],
        ),
    ] {
        let proxy = proxy(steps, &[]).await;
        let got = get(proxy.addr, "/api/blob").await;
        assert_eq!(got.status, 502, "{name}: nothing was sent yet, so the caller gets an answer: {got:?}");
        assert_eq!(got.json()["error"], "upstream_error", "{name}");
        let event = log.access("/api/blob").await;
        assert_eq!((event["status"].as_u64(), event["complete"].as_bool()), (Some(502), Some(true)), "{name}: {event}");
        log.lines.lock().unwrap().clear();
    }
    // Stalled before the first byte: a 504, after the pause limit.
    let steps = vec![send(binary("chunked")), Step::Stall];
    let proxy = proxy(steps, &[("UEM_PROXY_UPSTREAM_TIMEOUT", "300ms")]).await;
    let got = get(proxy.addr, "/api/blob").await;
    assert_eq!(got.status, 504, "{got:?}");
    assert_eq!(got.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn a_body_coded_in_a_second_content_encoding_field_is_never_rewritten() {
    for encodings in [["identity", "gzip"], ["gzip", "identity"]] {
        // The upstream's own base inside bytes that stand for a compressed body: rewriting them
        // would corrupt it (and a real one can hold them by chance).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut body = ZIPPED.to_vec();
        body.extend_from_slice(base.as_bytes());
        let pairs = [
            ("Content-Type", "application/json".to_owned()),
            ("Content-Encoding", encodings[0].to_owned()),
            ("Content-Encoding", encodings[1].to_owned()),
            ("Content-Length", body.len().to_string()),
        ];
        let mut answer = head("200 OK", &pairs);
        answer.extend_from_slice(&body);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request head arrives");
                seen.extend_from_slice(&buf[..n]);
            }
            stream.write_all(&answer).await.unwrap();
            std::future::pending::<()>().await;
        });
        let tokens = TokenService::default().start().await;
        let proxy = Proxy::start(&base, &tokens, &[]).await;
        let got = get(proxy.addr, "/api/mdm/devices/search").await;
        assert_eq!((got.status, got.complete), (200, true), "{encodings:?}: {got:?}");
        assert_eq!(got.body, body, "{encodings:?}: a coded body passes byte for byte");
    }
}

#[tokio::test]
async fn a_token_service_that_echoes_the_secret_never_gets_it_shown() {
    // Into the error code (shown in the 503 message, /_proxy/status and the log) and into the
    // content type (shown when the answer is not JSON), raw and as the form sent it.
    let form_encoded = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>();
    let replies = [
        Reply::Raw(401, "application/json", format!(r#"{{"error":"{SECRET}"}}"#)),
        Reply::Raw(400, "application/json", format!(r#"{{"error":"bad client_secret={form_encoded}"}}"#)),
        Reply::Raw(400, "application/json", format!(r#"{{"error":"{}{SECRET}"}}"#, "x".repeat(60))),
        Reply::Raw(200, format!("text/html; echo={SECRET}").leak(), "<html>maintenance</html>".to_owned()),
    ];
    for reply in replies {
        let tokens = TokenService { after_script: Some(reply), ..Default::default() };
        let upstream = crate::support::Upstream::default();
        let proxy =
            Proxy::start(&upstream.start().await, &tokens.start().await, &[("UEM_PROXY_TOKEN_WAIT", "1s")]).await;
        let client = crate::support::client();
        let answer = client.get(format!("{}/api/system/info", proxy.url)).send().await.unwrap();
        assert_eq!(answer.status(), 503);
        let body = answer.text().await.unwrap();
        assert!(body.contains("token service"), "the reason is still given: {body}");
        let status = client.get(format!("{}/_proxy/status", proxy.url)).send().await.unwrap().text().await.unwrap();
        assert!(status.contains("token service"), "{status}");
        for text in [&body, &status] {
            for (i, _) in SECRET.char_indices().skip(6) {
                assert!(!text.contains(&SECRET[..i]), "not even a part of the secret: {text}");
            }
        }
    }
}

#[tokio::test]
async fn an_upstream_that_echoes_the_token_in_any_header_never_hands_it_to_the_caller() {
    // The mock token service's first grant is `tok-1`: in the reason phrase, in a field's name,
    // in other letter cases.
    let answer = head(
        "200 tok-1",
        &[
            ("Content-Type", "application/octet-stream".to_owned()),
            ("X-Seen-Authorization", "Bearer tok-1".to_owned()),
            ("Set-Cookie", "session=tok-1; HttpOnly".to_owned()),
            ("Set-Cookie", "lang=en".to_owned()),
            ("X-Seen-Tenant", "tenant-c0de-SECRET".to_owned()),
            ("X-Upper", "BEARER TOK-1".to_owned()),
            ("X-Lower", "tenant-c0de-secret".to_owned()),
            ("X-tok-1-Seen", "1".to_owned()),
            ("X-Tenant-C0de-Secret", "1".to_owned()),
            ("Content-Length", "2".to_owned()),
        ],
    );
    let proxy = proxy(vec![send(answer), send("ok"), Step::Stall], &[("UEM_TENANT_CODE", "tenant-c0de-SECRET")]).await;
    let got = get(proxy.addr, "/api/system/info").await;
    assert_eq!((got.status, got.complete), (200, true), "{got:?}");
    let head = got.head.to_ascii_lowercase();
    assert!(!head.contains("tok-1") && !head.contains("c0de"), "{}", got.head);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "the canonical reason instead: {}", got.head);
    assert!(got.head.contains("set-cookie: lang=en"), "other values of the field stay: {}", got.head);
    assert_eq!(got.body, b"ok");
}
