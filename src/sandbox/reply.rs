//! How the sandbox answers like UEM: error bodies `{"errorCode", "message", "activityId"}`,
//! JSON or XML by `Accept`, versioned media types, and paged lists.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

/// UEM's error codes the sandbox uses.
pub mod code {
    pub const INVALID_CREDENTIALS: u32 = 1005;
    pub const ACCESS_DENIED: u32 = 1001;
    pub const NOT_FOUND: u32 = 5061;
    pub const BAD_REQUEST: u32 = 400;
    pub const RATE_LIMITED: u32 = 429;
    pub const UNSUPPORTED_VERSION: u32 = 406;
}

/// A random id in UUID form, like UEM's `activityId`.
pub fn activity_id() -> String {
    super::data::uuid(&mut fastrand::Rng::new())
}

/// An error in UEM's shape. Errors are JSON whatever was asked for, as UEM's are.
pub fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    let body = json!({ "errorCode": code, "message": message.into(), "activityId": activity_id() });
    (status, [(CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

/// What the caller asked for with `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// No `Accept` at all, or one naming XML: UEM's API answers XML then.
    pub xml: bool,
    /// The `version=N` parameter of the media type; 1 when absent.
    pub version: u32,
}

/// Reads `Accept`. `None` when the version parameter is not a number.
pub fn negotiate(headers: &HeaderMap) -> Option<Negotiated> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Negotiated { xml: true, version: 1 });
    };
    let accept = accept.to_ascii_lowercase();
    let xml = !accept.contains("json") && accept.contains("xml");
    let mut version = 1;
    for param in accept.split([';', ',']) {
        if let Some(v) = param.trim().strip_prefix("version=") {
            version = v.trim().parse().ok()?;
        }
    }
    Some(Negotiated { xml, version })
}

/// Renders `value` as JSON (with the version in the media type) or XML under `root`.
pub fn render(neg: Negotiated, status: StatusCode, root: &str, value: &Value) -> Response {
    let (content_type, body) = if neg.xml {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
        xml(root, value, &mut out);
        ("application/xml; charset=utf-8".to_owned(), out)
    } else {
        (format!("application/json; version={}", neg.version), value.to_string())
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let value = HeaderValue::try_from(content_type).expect("a valid media type");
    response.headers_mut().insert(CONTENT_TYPE, value);
    response
}

fn xml(name: &str, value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str(&format!("<{name} />")),
        Value::Array(items) => {
            out.push_str(&format!("<{name}>"));
            let item = name.strip_suffix('s').filter(|s| !s.is_empty()).unwrap_or("Item");
            for v in items {
                xml(item, v, out);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Object(map) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in map {
                xml(k, v, out);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::String(s) => {
            let escaped = s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            out.push_str(&format!("<{name}>{escaped}</{name}>"));
        }
        other => out.push_str(&format!("<{name}>{other}</{name}>")),
    }
}

/// Query parameters with lower-case names: UEM's are case-insensitive (`page` and `Page`).
pub fn query(raw: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).map(|(k, v)| (k.to_lowercase(), v.into_owned())).collect()
}

/// The largest page the sandbox serves; larger requests get this many.
pub const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 500;

/// One page of `items` under `key`, with UEM's `Page`, `PageSize` and `Total`, ordered by the
/// `orderby` field (`sortorder` `ASC` or `DESC`). `Ok(None)` for an empty result (UEM answers 204);
/// `Err` names a bad paging parameter.
pub fn page(items: Vec<&Value>, q: &HashMap<String, String>, key: &str) -> Result<Option<Value>, String> {
    let number = |name: &str, default: usize| match q.get(name) {
        None => Ok(default),
        Some(v) => v.trim().parse::<usize>().map_err(|_| format!("'{v}' is not a valid value for {name}")),
    };
    let page = number("page", 0)?;
    let size = number("pagesize", DEFAULT_PAGE_SIZE)?.clamp(1, MAX_PAGE_SIZE);
    let mut items = items;
    if let Some(field) = q.get("orderby") {
        let field = field.to_lowercase();
        // Numbers (and `{"Value": n}` ids) sort as numbers, before text, which sorts without case.
        let sort_key = |v: &Value| -> (u8, u64, String) {
            let found = v.as_object().and_then(|o| o.iter().find(|(k, _)| k.to_lowercase() == field)).map(|(_, v)| v);
            let found = match found {
                Some(Value::Object(o)) => o.get("Value"),
                other => other,
            };
            match found {
                Some(Value::Number(n)) => (0, n.as_u64().unwrap_or(0), String::new()),
                Some(Value::String(s)) => (1, 0, s.to_lowercase()),
                Some(other) => (1, 0, other.to_string()),
                None => (2, 0, String::new()),
            }
        };
        items.sort_by_cached_key(|v| sort_key(v));
        if q.get("sortorder").is_some_and(|o| o.eq_ignore_ascii_case("desc")) {
            items.reverse();
        }
    }
    let total = items.len();
    let slice: Vec<Value> = items.into_iter().skip(page.saturating_mul(size)).take(size).cloned().collect();
    if slice.is_empty() {
        return Ok(None);
    }
    let mut body = Map::new();
    body.insert(key.to_owned(), Value::Array(slice));
    body.insert("Page".to_owned(), json!(page));
    body.insert("PageSize".to_owned(), json!(size));
    body.insert("Total".to_owned(), json!(total));
    Ok(Some(Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_decides_format_and_version() {
        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h), Some(Negotiated { xml: true, version: 1 }));
        h.insert(ACCEPT, HeaderValue::from_static("application/json;version=2"));
        assert_eq!(negotiate(&h), Some(Negotiated { xml: false, version: 2 }));
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(negotiate(&h), Some(Negotiated { xml: false, version: 1 }));
        h.insert(ACCEPT, HeaderValue::from_static("application/xml"));
        assert_eq!(negotiate(&h), Some(Negotiated { xml: true, version: 1 }));
        h.insert(ACCEPT, HeaderValue::from_static("application/json; version=x"));
        assert_eq!(negotiate(&h), None);
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let items: Vec<Value> =
            (0..23).map(|i| json!({ "Id": { "Value": 23 - i }, "Name": format!("n{i}") })).collect();
        let q = |s: &str| query(Some(s));
        let mut seen = Vec::new();
        for p in 0..3 {
            let page = page(items.iter().collect(), &q(&format!("Page={p}&PageSize=10&orderby=id")), "Things")
                .unwrap()
                .unwrap();
            assert_eq!(page["Total"], 23);
            assert_eq!(page["Page"], p);
            seen.extend(page["Things"].as_array().unwrap().iter().map(|t| t["Id"]["Value"].as_u64().unwrap()));
        }
        assert_eq!(seen, (1..=23).collect::<Vec<_>>());
        assert!(page(items.iter().collect(), &q("page=3&pagesize=10"), "Things").unwrap().is_none());
        let desc = page(items.iter().collect(), &q("orderby=Name&sortorder=DESC&pagesize=1"), "T").unwrap().unwrap();
        assert_eq!(desc["T"][0]["Name"], "n9");
        assert!(page(items.iter().collect(), &q("page=-1"), "T").is_err());
    }

    #[test]
    fn xml_nests_objects_and_lists() {
        let v = json!({ "Devices": [{ "Id": { "Value": 1 }, "Name": "a<b" }], "Total": 1 });
        let mut out = String::new();
        xml("DeviceSearchResult", &v, &mut out);
        assert_eq!(
            out,
            "<DeviceSearchResult><Devices><Device><Id><Value>1</Value></Id><Name>a&lt;b</Name></Device>\
             </Devices><Total>1</Total></DeviceSearchResult>"
        );
        let neg = Negotiated { xml: true, version: 1 };
        let r = render(neg, StatusCode::OK, "DeviceSearchResult", &v);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/xml; charset=utf-8");
    }
}
