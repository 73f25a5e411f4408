//! The framing guard on byte sequences, whole and split at every position.

use super::*;

fn check(input: &[u8]) -> Result<(), Violation> {
    Framing::new(64 * 1024).inspect(input)
}

/// Feeds `input` one byte at a time, so no state depends on how reads are split.
fn check_bytewise(input: &[u8]) -> Result<(), Violation> {
    let mut f = Framing::new(64 * 1024);
    input.iter().try_for_each(|b| f.inspect(std::slice::from_ref(b)))
}

const GOOD: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab\ncdGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3 ; x\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
];

#[test]
fn well_framed_requests_pass_even_pipelined_and_byte_by_byte() {
    for input in GOOD {
        assert_eq!(check(input.as_bytes()), Ok(()), "{input:?}");
        assert_eq!(check_bytewise(input.as_bytes()), Ok(()), "{input:?}");
    }
}

#[test]
fn smuggling_shapes_are_refused() {
    let bad: &[(&str, &str)] = &[
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "both"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "differ"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "coding"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", "folding"),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", "colon"),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare CR"),
        ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", "NUL"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "missing"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc", "bare LF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", "CR LF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n", "too large"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n", "bare LF"),
    ];
    for (input, reason) in bad {
        for result in [check(input.as_bytes()), check_bytewise(input.as_bytes())] {
            let violation = result.expect_err(input);
            assert!(violation.0.contains(reason), "{input:?}: {violation} (expected {reason})");
        }
    }
}

#[test]
fn a_smuggled_second_request_inside_a_body_is_body() {
    // With a Content-Length of 42 the "inner request" is body data, and the framing after it is
    // where the next request starts.
    let inner = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let outer = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{inner}", inner.len());
    let mut f = Framing::new(1024);
    f.inspect(outer.as_bytes()).unwrap();
    assert_eq!(f.state, State::Head);
}

#[test]
fn an_oversized_head_is_left_to_the_parser() {
    let mut f = Framing::new(100);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
    assert_eq!(f.inspect(big.as_bytes()), Ok(()));
    assert_eq!(f.state, State::Overflow);
}
