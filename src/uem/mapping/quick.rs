//! The mapping's quick way, for the paths nearly every request has: no `%`, no `.` or `..`
//! segment. Their segments need no decoding and no resolving, so they are borrowed where they
//! stand (at most [`MAX_SEGMENTS`] of them, on the stack) and compared without regard to ASCII
//! case, which is what lower-casing them would give; the collection and the kind are then the
//! long way's own rules. Nothing is allocated.

use http::Method;

use super::{Required, Segment, collection, kind, permission_for};

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
                    api = segment.is("api");
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

fn is_version(segment: &[u8]) -> bool {
    segment.len() > 1 && matches!(segment[0], b'v' | b'V') && segment[1..].iter().all(u8::is_ascii_digit)
}
