//! The mapping's quick way, for the paths nearly every request has: no `%`, no `.` or `..`
//! segment. Their segments need no decoding and no resolving, so they are borrowed where they
//! stand (at most [`MAX_SEGMENTS`] of them, on the stack) and compared without regard to ASCII
//! case, which is what lower-casing them would give. Nothing is allocated.

use http::Method;

use super::{ACTIONS, Collection, Kind, Required, device_collection, permission_for};

/// The most segments the quick way holds; a longer path is mapped the long way.
const MAX_SEGMENTS: usize = 16;

/// [`super::required`] for a path the quick way takes; `None` for any other (`%`, a dot
/// segment, more than [`MAX_SEGMENTS`] segments), which is mapped the long way.
pub(super) fn required(method: &Method, path: &str) -> Option<Option<Required>> {
    // The segments after `api`, without the first version segment among the two after it; in
    // one pass that stops at the query or the fragment, and gives up at a `%`.
    let mut segments: [&[u8]; MAX_SEGMENTS] = [b""; MAX_SEGMENTS];
    let mut n = 0;
    let (mut api, mut seen, mut versioned) = (false, 0, false);
    let bytes = path.as_bytes();
    let mut start = 0;
    let mut end = 0;
    loop {
        let at_end = match bytes.get(end) {
            None | Some(b'?' | b'#') => true,
            Some(b'/') => false,
            Some(b'%') => return None,
            Some(_) => {
                end += 1;
                continue;
            }
        };
        let segment = &bytes[start..end];
        start = end + 1;
        end += 1;
        match segment {
            b"" => {}
            b"." | b".." => return None,
            _ => {
                seen += 1;
                if seen == 1 {
                    api = is(segment, "api");
                } else if !api {
                    // Not under `/api`, unless a later `..` climbs out of the first segment.
                } else if seen <= 3 && !versioned && is_version(segment) {
                    versioned = true;
                } else if n == MAX_SEGMENTS {
                    return None;
                } else {
                    segments[n] = segment;
                    n += 1;
                }
            }
        }
        if at_end {
            break;
        }
    }
    if !api {
        return Some(None);
    }
    let segments = &segments[..n];
    let Some(collection) = collection(segments) else { return Some(None) };
    let kind = kind(method, segments);
    Some(Some(Required { collection, kind, permission: permission_for(collection, kind) }))
}

/// Whether `segment` is `name` (lower case) in any ASCII letter case.
fn is(segment: &[u8], name: &str) -> bool {
    segment.len() == name.len() && segment.iter().zip(name.as_bytes()).all(|(s, n)| s.to_ascii_lowercase() == *n)
}

fn is_version(segment: &[u8]) -> bool {
    segment.len() > 1 && matches!(segment[0], b'v' | b'V') && segment[1..].iter().all(u8::is_ascii_digit)
}

/// The collection, as [`super::collection`] gives it.
fn collection(segments: &[&[u8]]) -> Option<Collection> {
    let [family, name, rest @ ..] = segments else { return None };
    Some(if is(family, "system") {
        if is(name, "admins") {
            Collection::Admins
        } else if is(name, "groups") {
            Collection::Groups
        } else if is(name, "users") {
            Collection::Users
        } else if is(name, "usergroups") {
            Collection::UserGroups
        } else {
            return None;
        }
    } else if is(family, "mdm") {
        if is(name, "devices") {
            device_collection(|names| rest.iter().any(|segment| names.iter().any(|name| is(segment, name))))
        } else if is(name, "tags") {
            Collection::Devices
        } else if is(name, "smartgroups") {
            Collection::SmartGroups
        } else if is(name, "profiles") {
            Collection::Profiles
        } else if is(name, "products") {
            Collection::Products
        } else if is(name, "compliancepolicy") || is(name, "compliancepolicies") {
            Collection::CompliancePolicy
        } else {
            return None;
        }
    } else if is(family, "mam") {
        if is(name, "apps") {
            Collection::Apps
        } else if is(name, "blobs") {
            Collection::Blobs
        } else {
            return None;
        }
    } else {
        return None;
    })
}

/// The access kind, as [`super::kind`] gives it.
fn kind(method: &Method, segments: &[&[u8]]) -> Kind {
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
    if post && segments.last().is_some_and(|s| is(s, "search")) {
        Kind::Read
    } else if segments.iter().skip(2).any(|s| ACTIONS.iter().any(|action| is(s, action))) {
        Kind::Execute
    } else {
        Kind::Write
    }
}
