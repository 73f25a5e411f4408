//! The sandbox's API under `/api/`: bearer check, rate limit, the role's permissions, then the
//! resources. Paths match case-insensitively, with or without a `/vN/` version segment.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Sandbox;
use super::reply::{self, Negotiated, code};
use crate::uem::mapping::{api_segments, required};

/// The most recent API version the sandbox serves; UEM's differ per resource, this is enough to
/// show a versioned media type being honoured.
const MAX_VERSION: u32 = 2;

/// Device commands the sandbox accepts, as `command=` names them (case-insensitive).
const COMMANDS: &[&str] =
    &["lock", "syncdevice", "enterprisewipe", "devicewipe", "clearpasscode", "devicequery", "softreset", "shutdown"];

pub async fn handle(State(sb): State<Arc<Sandbox>>, req: Request) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let response = serve(&sb, req).await;
    tracing::debug!(target: "uem_proxy::sandbox", %method, %path, status = response.status().as_u16(), "api call");
    response
}

async fn serve(sb: &Sandbox, req: Request) -> Response {
    if let Some(refused) = sb.auth.refuse_bearer(req.headers()) {
        return refused;
    }
    if let Some(limited) = sb.rate_limit.as_ref().and_then(|limit| limit.refuse()) {
        return limited;
    }
    if let Some(needed) = required(req.method(), req.uri().path())
        && !sb.role.allows(needed.permission)
    {
        let message = format!(
            "the OAuth client's role lacks the permission '{}' ({} > {})",
            needed.permission.name, "REST", needed.permission.category
        );
        return reply::error(StatusCode::FORBIDDEN, code::ACCESS_DENIED, message);
    }
    let Some(neg) = reply::negotiate(req.headers()) else {
        return reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, "the media type's version is not a number");
    };
    if neg.version > MAX_VERSION {
        let message = format!("version {} of this API is not supported (1 to {MAX_VERSION} are)", neg.version);
        return reply::error(StatusCode::NOT_ACCEPTABLE, code::UNSUPPORTED_VERSION, message);
    }
    let segments = api_segments(req.uri().path()).unwrap_or_default();
    let q = reply::query(req.uri().query());
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["system", "info"]) => system_info(sb, neg),
        (Method::GET, ["mdm", "devices", "search"]) => search_devices(sb, neg, &q),
        (Method::GET, ["mdm", "devices"]) => device_by_alternate_id(sb, neg, &q),
        (Method::GET, ["mdm", "devices", id]) => {
            let found = find(&sb.tenant.read().expect("not poisoned").devices, "Id", "Uuid", id);
            one(neg, "Device", found.map(|d| versioned(d, neg)), "device")
        }
        (Method::DELETE, ["mdm", "devices", id]) => delete_device(sb, id),
        (Method::POST, ["mdm", "devices", id, "commands"]) => {
            command(sb, Some(id), q.get("command").map(String::as_str), None)
        }
        (Method::POST, ["mdm", "devices", "commands"]) => {
            command(sb, None, q.get("command").map(String::as_str), Some(&q))
        }
        (Method::POST, ["mdm", "devices", id, action]) if legacy_action(action).is_some() => {
            command(sb, Some(id), legacy_action(action), None)
        }
        (Method::GET, ["system", "users", "search"]) => {
            let tenant = sb.tenant.read().expect("not poisoned");
            let filters =
                [("firstname", "FirstName"), ("lastname", "LastName"), ("email", "Email"), ("username", "UserName")];
            let users = tenant
                .users
                .iter()
                .filter(|u| matches(u, &q, &filters) && field_eq(u, &q, "organizationgroupid", "LocationGroupId"));
            paged(neg, users.collect(), &q, "Users", "UserSearchResult")
        }
        (Method::GET, ["system", "users", id]) => {
            one(neg, "User", find(&sb.tenant.read().expect("not poisoned").users, "Id", "Uuid", id), "user")
        }
        (Method::GET, ["system", "groups", "search"]) => {
            let tenant = sb.tenant.read().expect("not poisoned");
            let groups = tenant.groups.iter().filter(|g| {
                matches(g, &q, &[("name", "Name")])
                    && field_eq(g, &q, "groupid", "GroupId")
                    && field_eq(g, &q, "type", "LocationGroupType")
            });
            paged(neg, groups.collect(), &q, "LocationGroups", "LocationGroupSearchResult")
        }
        (Method::GET, ["system", "groups", id]) => one(
            neg,
            "LocationGroup",
            find(&sb.tenant.read().expect("not poisoned").groups, "Id", "Uuid", id),
            "organization group",
        ),
        (Method::GET, ["system", "groups", id, "children"]) => {
            let tenant = sb.tenant.read().expect("not poisoned");
            let Some(parent) = find(&tenant.groups, "Id", "Uuid", id) else {
                return not_found("organization group", id);
            };
            let children: Vec<Value> = tenant
                .groups
                .iter()
                .filter(|g| g["ParentLocationGroup"]["Id"] == parent["Id"]["Value"])
                .cloned()
                .collect();
            reply::render(neg, StatusCode::OK, "LocationGroups", &Value::Array(children))
        }
        (Method::GET, ["mdm", "smartgroups", "search"]) => {
            let tenant = sb.tenant.read().expect("not poisoned");
            let groups = tenant.smart_groups.iter().filter(|g| matches(g, &q, &[("name", "Name")]));
            paged(neg, groups.collect(), &q, "SmartGroups", "SmartGroupSearchResult")
        }
        (Method::GET, ["mdm", "smartgroups", id]) => one(
            neg,
            "SmartGroup",
            find(&sb.tenant.read().expect("not poisoned").smart_groups, "SmartGroupID", "SmartGroupUuid", id),
            "smart group",
        ),
        (Method::GET, ["mam", "apps", "search"]) => {
            let tenant = sb.tenant.read().expect("not poisoned");
            let filters = [("applicationname", "ApplicationName"), ("bundleid", "BundleId")];
            let apps = tenant.apps.iter().filter(|a| {
                matches(a, &q, &filters)
                    && field_eq(a, &q, "platform", "Platform")
                    && field_eq(a, &q, "type", "AppType")
            });
            paged(neg, apps.collect(), &q, "Application", "ApplicationSearchResult")
        }
        (Method::GET, ["mam", "apps", "internal" | "public", id]) => one(
            neg,
            "Application",
            find(&sb.tenant.read().expect("not poisoned").apps, "Id", "Uuid", id),
            "application",
        ),
        (Method::GET, ["system", "admins", "search"]) => {
            let admins = [
                json!({ "Id": { "Value": 1 }, "UserName": "administrator", "FirstName": "Acme", "LastName": "Admin", "Email": "admin@acme.example", "LocationGroupId": 570 }),
            ];
            paged(neg, admins.iter().collect(), &q, "Admins", "AdminSearchResult")
        }
        // The tenant has no profiles or products: searches answer as UEM does for no results.
        (Method::GET, ["mdm", "profiles" | "products", "search"]) => StatusCode::NO_CONTENT.into_response(),
        (Method::POST, ["mam", "blobs", "uploadblob"]) => upload_blob(sb, neg, &q, req.into_body()).await,
        (Method::GET, ["mam", "blobs", "downloadblob", id]) => download_blob(sb, id).await,
        (Method::DELETE, ["mam", "blobs", "blob", id]) => match id.parse() {
            Ok(id) if sb.blobs.delete(id).await => StatusCode::NO_CONTENT.into_response(),
            _ => not_found("blob", id),
        },
        _ => reply::error(StatusCode::NOT_FOUND, code::NOT_FOUND, "no API resource matches this method and path"),
    }
}

fn system_info(sb: &Sandbox, neg: Negotiated) -> Response {
    let devices = sb.tenant.read().expect("not poisoned").devices.len();
    let info = json!({
        "ProductName": "Workspace ONE UEM",
        "ProductVersion": "25.10.0.0",
        "Edition": "uem-proxy sandbox",
        "EnvironmentName": sb.name.as_deref().unwrap_or("sandbox"),
        "DeviceCount": devices,
    });
    reply::render(neg, StatusCode::OK, "SystemInfo", &info)
}

/// A device in the version asked for: version 1 lacks `Uuid`, version 2 carries it.
fn versioned(mut device: Value, neg: Negotiated) -> Value {
    if neg.version < 2
        && let Some(o) = device.as_object_mut()
    {
        // shift_remove keeps the fields in UEM's order.
        o.shift_remove("Uuid");
    }
    device
}

/// Every device, in the version asked for.
fn devices(sb: &Sandbox, neg: Negotiated) -> Vec<Value> {
    let tenant = sb.tenant.read().expect("not poisoned");
    tenant.devices.iter().map(|d| versioned(d.clone(), neg)).collect()
}

/// Filters the devices where they are and copies only the page asked for: a page of a tenant of
/// 100 000 devices costs the filter, not a copy of every device.
fn search_devices(sb: &Sandbox, neg: Negotiated, q: &HashMap<String, String>) -> Response {
    let tenant = sb.tenant.read().expect("not poisoned");
    // Without a filter, no device is looked at: five lookups a device are most of a page's cost.
    let unfiltered =
        !["user", "platform", "ownership", "compliantstatus", "model", "lgid"].iter().any(|k| q.contains_key(*k));
    let filtered = tenant.devices.iter().filter(|d| {
        unfiltered
            || field_eq(d, q, "user", "UserName")
                && field_eq(d, q, "platform", "Platform")
                && field_eq(d, q, "ownership", "Ownership")
                && field_eq(d, q, "compliantstatus", "ComplianceStatus")
                && matches(d, q, &[("model", "Model")])
                && q.get("lgid").is_none_or(|lgid| value_str(&d["LocationGroupId"]["Id"]) == *lgid)
    });
    match reply::page(filtered.collect(), q, "Devices") {
        Ok(Some(mut page)) => {
            if let Some(Value::Array(items)) = page.get_mut("Devices") {
                for item in items.iter_mut() {
                    *item = versioned(item.take(), neg);
                }
            }
            reply::render(neg, StatusCode::OK, "DeviceSearchResult", &page)
        }
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message),
    }
}

fn device_by_alternate_id(sb: &Sandbox, neg: Negotiated, q: &HashMap<String, String>) -> Response {
    let (Some(by), Some(id)) = (q.get("searchby"), q.get("id")) else {
        return reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, "searchby and id are required");
    };
    let Some(field) = alternate_field(by) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            format!("'{by}' is not a device identifier type"),
        );
    };
    let all = devices(sb, neg);
    let found = all.iter().find(|d| value_str(&d[field]).eq_ignore_ascii_case(id)).cloned();
    one(neg, "Device", found, "device")
}

fn alternate_field(by: &str) -> Option<&'static str> {
    Some(match by.to_ascii_lowercase().as_str() {
        "serialnumber" => "SerialNumber",
        "macaddress" => "MacAddress",
        "udid" => "Udid",
        "imeinumber" => "Imei",
        "deviceid" => "Id",
        _ => return None,
    })
}

fn delete_device(sb: &Sandbox, id: &str) -> Response {
    let mut tenant = sb.tenant.write().expect("not poisoned");
    let before = tenant.devices.len();
    tenant
        .devices
        .retain(|d| !(value_str(&d["Id"]) == id || d["Uuid"].as_str().is_some_and(|u| u.eq_ignore_ascii_case(id))));
    if tenant.devices.len() == before {
        return not_found("device", id);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The older one-endpoint-per-command form (`POST /api/mdm/devices/{id}/lockdevice`).
fn legacy_action(segment: &str) -> Option<&'static str> {
    Some(match segment {
        "lockdevice" => "lock",
        "syncdevice" => "syncdevice",
        "enterprisewipe" => "enterprisewipe",
        "clearpasscode" => "clearpasscode",
        "querydevice" => "devicequery",
        _ => return None,
    })
}

fn command(sb: &Sandbox, id: Option<&str>, command: Option<&str>, by: Option<&HashMap<String, String>>) -> Response {
    let Some(command) = command.map(|c| c.to_ascii_lowercase()) else {
        return reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, "command is required");
    };
    if !COMMANDS.contains(&command.as_str()) {
        return reply::error(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            format!("'{command}' is not a device command"),
        );
    }
    let mut tenant = sb.tenant.write().expect("not poisoned");
    let device = match (id, by) {
        (Some(id), _) => tenant.devices.iter_mut().find(|d| value_str(&d["Id"]) == id || d["Uuid"] == id),
        (None, Some(q)) => {
            let (Some(field), Some(value)) = (q.get("searchby").and_then(|b| alternate_field(b)), q.get("id")) else {
                return reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, "searchby and id are required");
            };
            tenant.devices.iter_mut().find(|d| value_str(&d[field]).eq_ignore_ascii_case(value))
        }
        (None, None) => None,
    };
    let Some(device) = device else {
        return not_found("device", id.unwrap_or("(alternate id)"));
    };
    match command.as_str() {
        "enterprisewipe" => device["EnrollmentStatus"] = json!("EnterpriseWipePending"),
        "devicewipe" => device["EnrollmentStatus"] = json!("DeviceWipePending"),
        _ => {}
    }
    device["LastCommand"] = json!(command);
    StatusCode::ACCEPTED.into_response()
}

async fn upload_blob(sb: &Sandbox, neg: Negotiated, q: &HashMap<String, String>, body: Body) -> Response {
    let (Some(filename), Some(_og)) = (q.get("filename"), q.get("organizationgroupid")) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "filename and organizationgroupid are required",
        );
    };
    match sb.blobs.upload(filename, body).await {
        Ok((id, size)) => {
            tracing::info!(target: "uem_proxy::sandbox", blob = id, size, "blob stored");
            reply::render(neg, StatusCode::OK, "BlobId", &json!({ "Value": id, "Size": size }))
        }
        Err(e) => reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, format!("the upload failed: {e}")),
    }
}

async fn download_blob(sb: &Sandbox, id: &str) -> Response {
    let Some(blob) = id.parse().ok().and_then(|id| sb.blobs.get(id)) else {
        return not_found("blob", id);
    };
    let file = match tokio::fs::File::open(&blob.path).await {
        Ok(file) => file,
        Err(e) => {
            return reply::error(StatusCode::INTERNAL_SERVER_ERROR, 500, format!("the blob cannot be read: {e}"));
        }
    };
    let disposition = format!("attachment; filename=\"{}\"", blob.filename.replace(['"', '\\', '\r', '\n'], "_"));
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_LENGTH, blob.size.into());
    if let Ok(value) = http::HeaderValue::try_from(disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

fn paged(neg: Negotiated, items: Vec<&Value>, q: &HashMap<String, String>, key: &str, root: &str) -> Response {
    match reply::page(items, q, key) {
        Ok(Some(page)) => reply::render(neg, StatusCode::OK, root, &page),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message),
    }
}

fn one(neg: Negotiated, root: &str, found: Option<Value>, what: &str) -> Response {
    match found {
        Some(v) => reply::render(neg, StatusCode::OK, root, &v),
        None => reply::error(StatusCode::NOT_FOUND, code::NOT_FOUND, format!("no {what} matches the given identifier")),
    }
}

fn not_found(what: &str, id: &str) -> Response {
    reply::error(StatusCode::NOT_FOUND, code::NOT_FOUND, format!("no {what} with id '{id}'"))
}

/// The item whose numeric id (`{"Value": n}` or a number) or UUID is `id`.
fn find(items: &[Value], id_field: &str, uuid_field: &str, id: &str) -> Option<Value> {
    items
        .iter()
        .find(|v| value_str(&v[id_field]) == id || v[uuid_field].as_str().is_some_and(|u| u.eq_ignore_ascii_case(id)))
        .cloned()
}

/// A field's text: strings as they are, numbers written out, `{"Value": n}` unwrapped.
fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("Value").map(value_str).unwrap_or_default(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Case-insensitive "contains" filters: query parameter -> field.
fn matches(v: &Value, q: &HashMap<String, String>, filters: &[(&str, &str)]) -> bool {
    filters.iter().all(|(param, field)| {
        q.get(*param).is_none_or(|wanted| value_str(&v[*field]).to_lowercase().contains(&wanted.to_lowercase()))
    })
}

/// A case-insensitive equality filter.
fn field_eq(v: &Value, q: &HashMap<String, String>, param: &str, field: &str) -> bool {
    q.get(param).is_none_or(|wanted| value_str(&v[field]).eq_ignore_ascii_case(wanted))
}
