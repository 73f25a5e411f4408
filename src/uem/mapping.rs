//! Which role permission an API request needs: request in, permission out (or unknown).
//!
//! The path is normalised first (case, an optional `/vN/` version segment, `.` and `..`
//! segments, percent-encoding), then its family names the collection and the method plus the
//! path's shape name the access kind:
//! - `GET`, `HEAD`, `OPTIONS`, and `POST …/search`: Read;
//! - `DELETE`: Delete;
//! - `POST`/`PUT`/`PATCH` naming an action (a segment such as `commands`, `lockdevice`,
//!   `enterprisewipe`, `install`, `activate`): Execute;
//! - any other `POST`/`PUT`/`PATCH`: Write.
//!
//! Methods are compared without regard to case; a method that is not standard (`PROPFIND`,
//! `FOO`) is treated as a `POST` that is never a search: Execute or Write.
//!
//! An encoded `/` or `\` (`%2F`, `%5C`) is decoded inside its segment and never splits it:
//! `/api/mdm/devices%2F5` is not `/api/mdm/devices/5`.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use http::Method;

use super::permissions::{self, Permission};

/// A collection of the API, as the permission table groups its permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Admins,
    Apps,
    Blobs,
    CompliancePolicy,
    CustomAttributes,
    Devices,
    Groups,
    Products,
    Profiles,
    SmartGroups,
    UserGroups,
    Users,
}

impl Collection {
    pub const ALL: [Collection; 12] = [
        Collection::Admins,
        Collection::Apps,
        Collection::Blobs,
        Collection::CompliancePolicy,
        Collection::CustomAttributes,
        Collection::Devices,
        Collection::Groups,
        Collection::Products,
        Collection::Profiles,
        Collection::SmartGroups,
        Collection::UserGroups,
        Collection::Users,
    ];

    /// The collection's name inside the permission names (`REST API <this> Read`).
    fn permission_stem(self) -> &'static str {
        match self {
            Collection::Admins => "Admins",
            Collection::Apps => "Apps",
            Collection::Blobs => "BLOBS",
            Collection::CompliancePolicy => "Compliance Policy",
            Collection::CustomAttributes => "Custom Attributes",
            Collection::Devices => "Devices",
            Collection::Groups => "Groups",
            Collection::Products => "Products",
            Collection::Profiles => "Profiles",
            Collection::SmartGroups => "Smart Groups",
            Collection::UserGroups => "User Groups",
            Collection::Users => "Users",
        }
    }
}

/// The access kinds the table distinguishes within a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Execute,
    Delete,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Read => "Read",
            Kind::Write => "Write",
            Kind::Execute => "Execute",
            Kind::Delete => "Delete",
        })
    }
}

/// What a request needs: the collection, the kind of access, and the catalogue's permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Required {
    pub collection: Collection,
    pub kind: Kind,
    pub permission: &'static Permission,
}

/// The permission a collection and kind need, from the catalogue (looked up once, then kept).
pub fn permission_for(collection: Collection, kind: Kind) -> &'static Permission {
    static TABLE: LazyLock<[[&'static Permission; 4]; 12]> = LazyLock::new(|| {
        let kinds = [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete];
        Collection::ALL.map(|c| kinds.map(|k| lookup(c, k)))
    });
    // `ALL` lists the collections in their order of declaration (a test holds it to that).
    TABLE[collection as usize][kind as usize]
}

fn lookup(collection: Collection, kind: Kind) -> &'static Permission {
    let name = format!("REST API {} {kind}", collection.permission_stem());
    permissions::find(&name).unwrap_or_else(|| panic!("the catalogue lacks {name}"))
}

/// Every permission some request maps to; a policy entry naming any other allows or denies
/// nothing.
pub fn mapped_permissions() -> Vec<&'static Permission> {
    let kinds = [Kind::Read, Kind::Write, Kind::Execute, Kind::Delete];
    Collection::ALL.iter().flat_map(|&c| kinds.map(|k| permission_for(c, k))).collect()
}

/// A path's segments as decisions see them: lower-case and percent-decoded, empty and `.`
/// segments dropped, `..` resolved, and a `vN` version segment just after `api` dropped.
pub fn segments(path: &str) -> Vec<String> {
    decided_segments(path).into_iter().map(Cow::into_owned).collect()
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

/// The segments after `/api` (see [`segments`]); `None` when the path is not under `/api`.
pub fn api_segments(path: &str) -> Option<Vec<String>> {
    Some(decided_api_segments(path)?.into_iter().map(Cow::into_owned).collect())
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

/// Segments that name an action on a resource rather than the resource: a `POST`/`PUT`/`PATCH`
/// through one of them is an Execute.
const ACTIONS: &[&str] = &[
    "commands",
    "lockdevice",
    "lock",
    "unlock",
    "syncdevice",
    "sync",
    "enterprisewipe",
    "devicewipe",
    "wipe",
    "clearpasscode",
    "sendmessage",
    "querydevice",
    "reboot",
    "shutdown",
    "lostmode",
    "install",
    "uninstall",
    "activate",
    "deactivate",
    "retire",
];

/// A path segment as the mapping compares it with the catalogue's lower-case names: the long
/// way's segments are lower-cased already, the quick way's are borrowed as sent and compared
/// without regard to ASCII case. Both ways then share one rule for the collection and the kind.
trait Segment {
    fn is(&self, name: &str) -> bool;
}

impl Segment for Cow<'_, str> {
    fn is(&self, name: &str) -> bool {
        **self == *name
    }
}

impl Segment for &[u8] {
    fn is(&self, name: &str) -> bool {
        self.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The collections by family and name (`/api/{family}/{name}/…`), besides `mdm/devices`.
const COLLECTIONS: &[(&str, &[&str], Collection)] = &[
    ("system", &["admins"], Collection::Admins),
    ("system", &["groups"], Collection::Groups),
    ("system", &["users"], Collection::Users),
    ("system", &["usergroups"], Collection::UserGroups),
    ("mdm", &["tags"], Collection::Devices),
    ("mdm", &["smartgroups"], Collection::SmartGroups),
    ("mdm", &["profiles"], Collection::Profiles),
    ("mdm", &["products"], Collection::Products),
    ("mdm", &["compliancepolicy", "compliancepolicies"], Collection::CompliancePolicy),
    ("mam", &["apps"], Collection::Apps),
    ("mam", &["blobs"], Collection::Blobs),
];

/// The collection a path belongs to. Sub-resources of a device belong to their own collection
/// (`/mdm/devices/{id}/apps` is Apps, `/mdm/devices/{id}/profiles` is Profiles).
fn collection<S: Segment>(segments: &[S]) -> Option<Collection> {
    let [family, name, rest @ ..] = segments else { return None };
    if family.is("mdm") && name.is("devices") {
        let has = |names: &[&str]| rest.iter().any(|segment| names.iter().any(|name| segment.is(name)));
        return Some(if has(&["customattributes", "customattribute"]) {
            Collection::CustomAttributes
        } else if has(&["apps"]) {
            Collection::Apps
        } else if has(&["profiles"]) {
            Collection::Profiles
        } else if has(&["smartgroups"]) {
            Collection::SmartGroups
        } else if has(&["compliance"]) {
            Collection::CompliancePolicy
        } else {
            Collection::Devices
        });
    }
    COLLECTIONS
        .iter()
        .find(|(f, names, _)| family.is(f) && names.iter().any(|n| name.is(n)))
        .map(|(_, _, collection)| *collection)
}

/// The access kind. The method's letter case does not matter (the API's server ignores it). A
/// method that is not a standard one is never a read: only `POST` makes a `…/search` a read.
fn kind<S: Segment>(method: &Method, segments: &[S]) -> Kind {
    let post = match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => return Kind::Read,
        Method::DELETE => return Kind::Delete,
        Method::POST => true,
        Method::PUT | Method::PATCH | Method::TRACE | Method::CONNECT => false,
        // Any other spelling: standard methods in another case, and methods that are not.
        _ => {
            let is = |name: &str| method.as_str().eq_ignore_ascii_case(name);
            if is("GET") || is("HEAD") || is("OPTIONS") {
                return Kind::Read;
            }
            if is("DELETE") {
                return Kind::Delete;
            }
            is("POST")
        }
    };
    if post && segments.last().is_some_and(|s| s.is("search")) {
        Kind::Read
    } else if segments.iter().skip(2).any(|s| ACTIONS.iter().any(|action| s.is(action))) {
        Kind::Execute
    } else {
        Kind::Write
    }
}

/// The permission `method path` needs, or `None` when the path is outside the mapped families
/// (`/api/system/info` needs none; families the table gives no name for are unknown).
pub fn required(method: &Method, path: &str) -> Option<Required> {
    quick::required(method, path).unwrap_or_else(|| the_long_way(method, path))
}

/// [`required`] for any path: its segments decoded, resolved and lower-cased first.
fn the_long_way(method: &Method, path: &str) -> Option<Required> {
    let segments = decided_api_segments(path)?;
    let collection = collection(&segments)?;
    let kind = kind(method, &segments);
    Some(Required { collection, kind, permission: permission_for(collection, kind) })
}

mod quick;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod equivalence;
