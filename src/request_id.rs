//! Request ids: the header that carries them, and the id itself (the caller's when it is sane,
//! otherwise a new random one). Beside the request's path: the listener's refusals, the record
//! and the forwarder all use it.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header, the caller's or ours, sent upstream and returned to the caller.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` when it is a sane token (1 to 128 visible ASCII characters),
/// otherwise a new random one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&v.len())
        && v.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return v.clone();
    }
    new()
}

/// A new random id: 32 hexadecimal digits, formatted without allocating a string, in one
/// allocation.
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, byte) in fastrand::u128(..).to_be_bytes().into_iter().enumerate() {
        id[2 * i] = HEX[usize::from(byte >> 4)];
        id[2 * i + 1] = HEX[usize::from(byte & 15)];
    }
    // Owned by one shared allocation from the start: the id is cloned into the request, the
    // record and the response, and a value copied into a `Vec` would be moved to a shared
    // allocation of its own at its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id)).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_caller_id_is_kept_and_any_other_replaced() {
        let with = |v: &[u8]| HeaderMap::from_iter([(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap())]);
        assert_eq!(of(&with(b"job-42")), "job-42");
        for odd in [&b"two words"[..], b"", &[b'a'; 129], b"caf\xc3\xa9"] {
            let id = of(&with(odd));
            assert_ne!(id.as_bytes(), odd);
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
        assert_ne!(new(), new());
    }
}
