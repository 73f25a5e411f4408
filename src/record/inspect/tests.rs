use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::capture::Finished;
use super::*;

fn settings(mode: InspectMode, entries: usize) -> InspectSettings {
    InspectSettings { mode, entries }
}

fn finished<'a>(method: &'a Method, uri: &'a Uri, status: u16) -> Finished<'a> {
    Finished {
        request_id: "id",
        method,
        uri,
        status,
        total: Duration::from_millis(3),
        upstream: Some(Duration::from_millis(2)),
        bytes_in: 0,
        bytes_out: 0,
        complete: true,
        caller: Some("loopback".into()),
        permission: None,
        activity_id: None,
        tenant: None,
    }
}

fn one(inspector: &Arc<Inspector>, path: &str, status: u16) {
    let (method, uri) = (Method::GET, Uri::try_from(path).unwrap());
    let capture = inspector.capture(&HeaderMap::new()).expect("on");
    capture.finish(finished(&method, &uri, status));
}

#[test]
fn credentials_show_as_stars_in_any_case_and_other_headers_as_sent() {
    let mut headers = HeaderMap::new();
    for name in ["Authorization", "proxy-authorization", "COOKIE", "set-cookie", "AW-Tenant-Code"] {
        headers.append(http::HeaderName::try_from(name).unwrap(), HeaderValue::from_static("secret-value"));
    }
    headers.append("set-cookie", HeaderValue::from_static("second=secret"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("x-odd", HeaderValue::from_bytes(b"a\xffb").unwrap());
    let shown = redact(&headers);
    assert_eq!(shown.len(), 8);
    assert!(shown.iter().all(|(_, v)| !v.contains("secret")), "{shown:?}");
    assert_eq!(shown.iter().filter(|(_, v)| v == REDACTED).count(), 6);
    assert!(shown.contains(&("accept".to_owned(), "application/json".to_owned())));
    assert!(shown.contains(&("x-odd".to_owned(), "a\u{fffd}b".to_owned())));
}

#[test]
fn the_ring_keeps_the_newest_entries_newest_first_and_numbers_them() {
    let inspector = Inspector::new(settings(InspectMode::Meta, 3), Vec::new());
    for i in 0..5 {
        one(&inspector, &format!("/api/{i}"), 200);
    }
    let recent = inspector.recent(usize::MAX);
    let paths: Vec<_> = recent.iter().map(|e| (e.seq, e.path.as_str())).collect();
    assert_eq!(paths, [(5, "/api/4"), (4, "/api/3"), (3, "/api/2")]);
    assert_eq!(inspector.recent(1).len(), 1);
    assert_eq!(inspector.recent(0).len(), 0);
}

#[test]
fn off_watches_nothing_and_a_reload_shrinks_or_empties_the_ring() {
    let inspector = Inspector::new(settings(InspectMode::Off, 500), Vec::new());
    assert!(inspector.capture(&HeaderMap::new()).is_none());
    inspector.configure(settings(InspectMode::Meta, 4));
    for _ in 0..4 {
        one(&inspector, "/api/x", 200);
    }
    inspector.configure(settings(InspectMode::Meta, 2));
    assert_eq!(inspector.recent(usize::MAX).len(), 2);
    assert_eq!(inspector.recent(usize::MAX)[0].seq, 4, "the newest stay");
    inspector.configure(settings(InspectMode::Off, 2));
    assert!(inspector.recent(usize::MAX).is_empty());
    assert!(inspector.capture(&HeaderMap::new()).is_none());
}

#[test]
fn errors_are_counted_per_minute_and_status_shows_the_settings() {
    let inspector = Inspector::new(settings(InspectMode::Meta, 10), Vec::new());
    one(&inspector, "/api/a", 200);
    one(&inspector, "/api/b", 404);
    one(&inspector, "/api/c", 503);
    let status = inspector.status(None);
    assert_eq!(status["mode"], "meta");
    assert_eq!(status["entries"], 10);
    assert_eq!(status["kept"], 3);
    let minutes = status["per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 15);
    // The three may straddle a minute's end.
    let sum = |key: &str| minutes.iter().map(|m| m[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("requests"), sum("errors")), (3, 2));
}

#[test]
fn a_403_with_the_needed_permission_says_what_the_role_lacks() {
    let inspector = Inspector::new(settings(InspectMode::Meta, 10), Vec::new());
    let mut capture = inspector.capture(&HeaderMap::new()).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(&crate::forward::X_UEM_PROXY_PERMISSION, HeaderValue::from_static("REST API Devices Delete"));
    capture.response(StatusCode::FORBIDDEN, &headers);
    let (method, uri) = (Method::DELETE, Uri::from_static("/api/mdm/devices/1"));
    capture.finish(Finished { permission: Some("REST API Devices Delete"), ..finished(&method, &uri, 403) });
    let entry = &inspector.recent(1)[0];
    assert_eq!(entry.hint.as_deref(), Some("the OAuth client's role lacks the permission 'REST API Devices Delete'"));
    assert_eq!(entry.permission, Some("REST API Devices Delete"));
    assert_eq!(entry.tenant, None);
}

#[test]
fn bodies_keep_at_most_64_kib_and_say_when_they_were_cut() {
    let inspector = Inspector::new(settings(InspectMode::Bodies, 10), Vec::new());
    let mut capture = inspector.capture(&HeaderMap::new()).unwrap();
    for _ in 0..3 {
        capture.response_data(&[b'a'; 40 * 1024]);
    }
    let (method, uri) = (Method::GET, Uri::from_static("/api/x"));
    capture.finish(Finished { bytes_out: 120 * 1024, ..finished(&method, &uri, 200) });
    let body =
        inspector.recent(1)[0].response_body.as_ref().map(|k| (k.kept, k.truncated, k.text.as_ref().map(String::len)));
    assert_eq!(body, Some((BODY_LIMIT, true, Some(BODY_LIMIT))));

    // Meta keeps no body.
    inspector.configure(settings(InspectMode::Meta, 10));
    let mut capture = inspector.capture(&HeaderMap::new()).unwrap();
    capture.response_data(b"{}");
    capture.finish(Finished { bytes_out: 2, ..finished(&method, &uri, 200) });
    assert!(inspector.recent(1)[0].response_body.is_none());
}

#[test]
fn text_cut_inside_a_character_keeps_the_text_before_it() {
    let bytes = "aé".as_bytes();
    let kept = Kept::of(&bytes[..2], 3);
    assert_eq!((kept.text.as_deref(), kept.kept, kept.truncated), (Some("a"), 2, true));
    assert_eq!(Kept::of(b"\xff\xfe", 2).text, None);
    assert_eq!(Kept::of(b"{}", 2).text.as_deref(), Some("{}"));
}

#[test]
fn an_event_is_one_data_line() {
    let inspector = Inspector::new(settings(InspectMode::Meta, 10), Vec::new());
    let mut headers = HeaderMap::new();
    headers.insert("x-text", HeaderValue::from_static("a\tb"));
    let capture = inspector.capture(&headers).unwrap();
    let (method, uri) = (Method::GET, Uri::from_static("/api/x?q=1"));
    capture.finish(finished(&method, &uri, 200));
    let event = events::event(&inspector.recent(1)[0]);
    assert!(event.ends_with("\n\n"));
    let lines: Vec<_> = event.trim_end().lines().collect();
    assert_eq!(lines.len(), 3, "{event}");
    assert_eq!(lines[0], "id: 1");
    assert_eq!(lines[1], "event: request");
    let data: serde_json::Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["query"], "q=1");
    assert_eq!(data["tenant"], serde_json::Value::Null);
}

/// A subscriber that reads nothing holds no request back; when it reads again it skips to what is
/// still kept for it.
#[tokio::test]
async fn a_subscriber_that_falls_behind_skips_ahead() {
    use http_body_util::BodyExt;
    let inspector = Inspector::new(settings(InspectMode::Meta, 10), Vec::new());
    let mut body = inspector.events(None);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"retry: 2000\n\n");
    for _ in 0..EVENTS_BACKLOG + 50 {
        one(&inspector, "/api/x", 200);
    }
    let next = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let next = std::str::from_utf8(&next).unwrap();
    // Behind by more than the backlog, and the ring keeps 10: the oldest the ring still holds.
    let expected = format!("id: {}\n", EVENTS_BACKLOG + 50 - 9);
    assert!(next.starts_with(&expected), "{expected}: {next}");
    inspector.close();
    let mut rest = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        rest += 1;
    }
    assert_eq!(rest, 0, "the stream ends at the shutdown without draining its backlog");
}

#[test]
fn a_body_that_echoes_the_injected_credential_shows_stars() {
    let tokens = crate::token::Tokens::fixed(HeaderValue::from_static("Basic c2VjcmV0LXZhbHVl"));
    let inspector = Inspector::new(
        settings(InspectMode::Bodies, 10),
        vec![TenantSecrets { tenant: None, tokens, secrets: Vec::new() }],
    );
    let mut capture = inspector.capture(&HeaderMap::new()).unwrap();
    let echoed = br#"{"seen":"Basic c2VjcmV0LXZhbHVl","again":"c2VjcmV0LXZhbHVl"}"#;
    capture.response_data(echoed);
    let (method, uri) = (Method::GET, Uri::from_static("/api/x"));
    capture.finish(Finished { bytes_out: echoed.len() as u64, ..finished(&method, &uri, 200) });
    let text = inspector.recent(1)[0].response_body.as_ref().unwrap().text.clone().unwrap();
    assert_eq!(text, r#"{"seen":"Basic ***","again":"***"}"#);
}

/// Reloads while requests are being answered and a page listens: a request that started under
/// one setting finishes under another without harm; `off` keeps and sends nothing, and the
/// stream goes on when the inspector is turned on again.
#[tokio::test]
async fn reloads_while_requests_and_subscribers_are_active() {
    use http_body_util::BodyExt;
    let inspector = Inspector::new(settings(InspectMode::Bodies, 4), Vec::new());
    let mut body = inspector.events(None);
    body.frame().await.unwrap().unwrap();
    let (method, uri) = (Method::GET, Uri::from_static("/api/x"));
    let mut started_with_bodies = inspector.capture(&HeaderMap::new()).unwrap();
    started_with_bodies.response_data(&[b'a'; 1024]);
    inspector.configure(settings(InspectMode::Off, 4));
    assert!(inspector.capture(&HeaderMap::new()).is_none());
    started_with_bodies.finish(finished(&method, &uri, 200));
    assert!(inspector.recent(usize::MAX).is_empty(), "off keeps nothing, even of a request begun before");
    inspector.configure(settings(InspectMode::Meta, 2));
    let started_with_meta = inspector.capture(&HeaderMap::new()).unwrap();
    inspector.configure(settings(InspectMode::Bodies, 1));
    started_with_meta.finish(finished(&method, &uri, 201));
    let next = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let next = std::str::from_utf8(&next).unwrap();
    assert!(next.starts_with("id: 1\n") && next.contains("\"status\":201"), "{next}");
    one(&inspector, "/api/y", 202);
    let kept = inspector.recent(usize::MAX);
    assert_eq!(kept.iter().map(|e| e.status).collect::<Vec<_>>(), [202], "the smaller ring");
}
