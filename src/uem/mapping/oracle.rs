//! The mapping as it was before its quick way was added, kept as the oracle the quick way is
//! compared with: for every method and path the same permission, or the same `None`.

use std::borrow::Cow;

use http::Method;

use super::{ACTIONS, Collection, Kind, Required};
use crate::uem::permissions::{self, Permission};

/// The permission a collection and kind need, from the catalogue (looked up once, then kept).
pub(super) fn permission_for(collection: Collection, kind: Kind) -> &'static Permission {
    static TABLE: std::sync::OnceLock<Vec<&'static Permission>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let kinds = [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete];
        Collection::ALL.iter().flat_map(|&c| kinds.map(|k| lookup(c, k))).collect()
    });
    let c = Collection::ALL.iter().position(|&c| c == collection).expect("every collection is in ALL");
    table[c * 4 + kind as usize]
}

fn lookup(collection: Collection, kind: Kind) -> &'static Permission {
    let name = format!("REST API {} {kind}", collection.permission_stem());
    permissions::find(&name).unwrap_or_else(|| panic!("the catalogue lacks {name}"))
}

/// The same, borrowing the segments that need no change (most of them).
fn decided_segments(path: &str) -> Vec<Cow<'_, str>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut segments: Vec<Cow<'_, str>> = Vec::new();
    for raw in path.split('/') {
        if raw.is_empty() || raw == "." {
            continue;
        }
        if raw == ".." {
            segments.pop();
            continue;
        }
        let segment = if raw.contains('%') {
            Cow::Owned(percent_decode(raw).to_lowercase())
        } else if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        };
        match &*segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    if segments.first().map(|s| &**s) == Some("api") {
        // `/api/v1/mdm/…` and `/api/mdm/v2/…`: the version is not part of the resource.
        if let Some(i) = segments.iter().skip(1).take(2).position(|s| is_version(s)) {
            segments.remove(i + 1);
        }
    }
    segments
}

fn decided_api_segments(path: &str) -> Option<Vec<Cow<'_, str>>> {
    let mut segments = decided_segments(path);
    if segments.first().map(|s| &**s) != Some("api") {
        return None;
    }
    segments.remove(0);
    Some(segments)
}

fn is_version(segment: &str) -> bool {
    segment.len() > 1 && segment.starts_with('v') && segment[1..].bytes().all(|b| b.is_ascii_digit())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The collection a path belongs to. Sub-resources of a device belong to their own collection
/// (`/mdm/devices/{id}/apps` is Apps, `/mdm/devices/{id}/profiles` is Profiles).
fn collection(segments: &[Cow<'_, str>]) -> Option<Collection> {
    let s: Vec<&str> = segments.iter().map(|s| &**s).collect();
    Some(match s.as_slice() {
        ["system", "admins", ..] => Collection::Admins,
        ["system", "groups", ..] => Collection::Groups,
        ["system", "users", ..] => Collection::Users,
        ["system", "usergroups", ..] => Collection::UserGroups,
        ["mdm", "devices", rest @ ..] => {
            let sub = |names: &[&str]| rest.iter().any(|seg| names.contains(seg));
            if sub(&["customattributes", "customattribute"]) {
                Collection::CustomAttributes
            } else if sub(&["apps"]) {
                Collection::Apps
            } else if sub(&["profiles"]) {
                Collection::Profiles
            } else if sub(&["smartgroups"]) {
                Collection::SmartGroups
            } else if sub(&["compliance"]) {
                Collection::CompliancePolicy
            } else {
                Collection::Devices
            }
        }
        ["mdm", "tags", ..] => Collection::Devices,
        ["mdm", "smartgroups", ..] => Collection::SmartGroups,
        ["mdm", "profiles", ..] => Collection::Profiles,
        ["mdm", "products", ..] => Collection::Products,
        ["mdm", "compliancepolicy" | "compliancepolicies", ..] => Collection::CompliancePolicy,
        ["mam", "apps", ..] => Collection::Apps,
        ["mam", "blobs", ..] => Collection::Blobs,
        _ => return None,
    })
}

/// The access kind. The method's letter case does not matter (the API's server ignores it). A
/// method that is not a standard one is never a read: only `POST` makes a `…/search` a read.
fn kind(method: &Method, segments: &[Cow<'_, str>]) -> Kind {
    let is = |name: &str| method.as_str().eq_ignore_ascii_case(name);
    if is("GET") || is("HEAD") || is("OPTIONS") {
        Kind::Read
    } else if is("DELETE") {
        Kind::Delete
    } else if is("POST") && segments.last().is_some_and(|s| s == "search") {
        Kind::Read
    } else if segments.iter().skip(2).any(|s| ACTIONS.contains(&&**s)) {
        Kind::Execute
    } else {
        Kind::Write
    }
}

/// The permission `method path` needs, or `None` when the path is outside the mapped families
/// (`/api/system/info` needs none; families the table gives no name for are unknown).
pub(super) fn required(method: &Method, path: &str) -> Option<Required> {
    let segments = decided_api_segments(path)?;
    let collection = collection(&segments)?;
    let kind = kind(method, &segments);
    Some(Required { collection, kind, permission: permission_for(collection, kind) })
}
