//! The framing rules on byte sequences, whole and split at every position, and as properties
//! over generated input (`PROPTEST_CASES=100000 cargo test --lib framing` runs them longer).

use proptest::prelude::*;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

use super::rules::State;
use super::*;

const MAX: usize = 64 * 1024;

/// What the parser would be given from `reads`, in order, and the refusal that ended it, if any.
fn run_reads(max: usize, reads: &[&[u8]]) -> (Vec<u8>, Result<(), Violation>) {
    let mut f = Framing::new(max);
    let mut passed = Vec::new();
    for read in reads {
        let mut at = 0;
        while at < read.len() {
            match f.step(&read[at..]) {
                Ok(Step::Pass(n)) => {
                    passed.extend_from_slice(&read[at..at + n]);
                    at += n;
                }
                Ok(Step::Hold(n)) => at += n,
                Ok(Step::Head(n, section) | Step::Trailers(n, section)) => {
                    passed.extend_from_slice(&section);
                    at += n;
                }
                Err(v) => return (passed, Err(v)),
            }
        }
    }
    (passed, Ok(()))
}

/// Whether `input` is refused between requests (a head), and not inside a body.
fn refused_at_a_head(max: usize, input: &[u8]) -> bool {
    let mut f = Framing::new(max);
    let mut at = 0;
    while at < input.len() {
        match f.step(&input[at..]) {
            Ok(Step::Pass(n) | Step::Hold(n) | Step::Head(n, _) | Step::Trailers(n, _)) => at += n,
            Err(_) => return f.between_requests(),
        }
    }
    false
}

fn check(input: &[u8]) -> Result<(), Violation> {
    run_reads(MAX, &[input]).1
}

/// Feeds `input` one byte at a time, so no state depends on how reads are split.
fn check_bytewise(input: &[u8]) -> Result<(), Violation> {
    let reads: Vec<&[u8]> = input.chunks(1).collect();
    run_reads(MAX, &reads).1
}

const GOOD: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab\ncdGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3 ; x\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-Name: Jos\u{e9} \t\r\nX-Empty:\r\n\r\n",
    "POST / HTTP/1.1\r\nhost: a\r\ncontent-LENGTH: 2\r\n\r\nhi",
];

#[test]
fn well_framed_requests_pass_even_pipelined_and_byte_by_byte() {
    for input in GOOD {
        assert_eq!(check(input.as_bytes()), Ok(()), "{input:?}");
        assert_eq!(check_bytewise(input.as_bytes()), Ok(()), "{input:?}");
        let passed = run_reads(MAX, &[input.as_bytes()]).0;
        let without_leading_lines = input.trim_start_matches("\r\n");
        assert_eq!(passed, without_leading_lines.as_bytes(), "everything passes, in order");
    }
}

#[test]
fn smuggling_shapes_are_refused_with_their_status() {
    use Kind::*;
    let bad: &[(&str, Kind, &str)] = &[
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Malformed,
            "both",
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Malformed, "both"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 3\r\n\r\n", Malformed, "both"),
        (
            "POST / HTTP/1.1\r\nX-Name: Jos\u{e9}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Malformed,
            "both",
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", Malformed, "differ"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", Malformed, "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", Malformed, "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Malformed, "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Malformed, "not a number"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnknownCoding, "coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", UnknownCoding, "coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", UnknownCoding, "coding"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            UnknownCoding,
            "coding",
        ),
        ("POST / HTTP/1.1\r\nX: \u{e9}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnknownCoding, "coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Malformed, "once"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", Malformed, "once"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed, "HTTP/1.0"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", Malformed, "folding"),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", Malformed, "colon"),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n", Malformed, "colon"),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", Malformed, "bare LF"),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Malformed, "bare CR"),
        ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", Malformed, "NUL"),
        ("GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n", Malformed, "control"),
        ("GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", Malformed, "control"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Malformed, "Host"),
        ("GET / HTTP/1.1\r\nNo colon here\r\n\r\n", Malformed, "colon"),
        ("GET / HTTP/1.1\r\nX\u{e9}: 1\r\n\r\n", Malformed, "token"),
        ("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "request line"),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Malformed, "request line"),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Malformed, "version"),
        ("G\u{e9}T / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "method"),
        ("GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "target"),
        ("GET /a?q=\"x\" HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "target"),
        ("GET ?x HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "target"),
        ("GET /a?q=C# HTTP/1.1\r\nHost: a\r\n\r\n", Malformed, "target"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", Malformed, "empty element"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n",
            Malformed,
            "empty",
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Malformed, "chunk size"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", Malformed, "missing"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\n", Malformed, "chunk size"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc", Malformed, "bare LF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", Malformed, "CR LF"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            Malformed,
            "too large",
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n", Malformed, "bare LF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX : 1\r\n\r\n", Malformed, "colon"),
    ];
    for (input, kind, reason) in bad {
        for result in [check(input.as_bytes()), check_bytewise(input.as_bytes())] {
            let violation = result.expect_err(input);
            assert_eq!(violation.kind, *kind, "{input:?}: {violation}");
            assert!(violation.reason.contains(reason), "{input:?}: {violation} (expected {reason})");
        }
    }
}

#[test]
fn a_refused_head_is_never_passed_on_but_what_came_before_it_is() {
    let good = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    let bad = "GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let input = format!("{good}{bad}");
    let bytewise: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
    for reads in [vec![input.as_bytes()], bytewise] {
        let (passed, verdict) = run_reads(MAX, &reads);
        assert_eq!(passed, good.as_bytes());
        assert!(verdict.is_err());
    }
}

#[test]
fn a_smuggled_second_request_inside_a_body_is_body() {
    // With a Content-Length of 42 the "inner request" is body data, and the framing after it is
    // where the next request starts.
    let inner = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let outer = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{inner}", inner.len());
    let mut f = Framing::new(1024);
    let (passed, verdict) = run_reads(1024, &[outer.as_bytes()]);
    assert_eq!((passed.as_slice(), verdict), (outer.as_bytes(), Ok(())));
    assert!(matches!(f.step(outer.as_bytes()), Ok(Step::Head(..))));
    assert!(matches!(f.step(inner.as_bytes()), Ok(Step::Pass(n)) if n == inner.len()));
    assert_eq!(f.state, State::Head);
}

/// A head of exactly `len` bytes (request line, one field padded to fit, the empty line).
fn head_of(len: usize) -> String {
    let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
    format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(len - fixed))
}

#[test]
fn the_head_size_limit_is_exact_at_every_size() {
    for max in [100, 8192, 16384, 65536] {
        assert_eq!(head_of(max).len(), max);
        assert_eq!(run_reads(max, &[head_of(max).as_bytes()]).1, Ok(()), "{max}");
        let over = run_reads(max, &[head_of(max + 1).as_bytes()]).1.expect_err("one byte over");
        assert_eq!(over.kind, Kind::TooLarge, "{max}");
        // Empty lines before the request line count.
        let led = format!("\r\n{}", head_of(max - 2));
        assert_eq!(run_reads(max, &[led.as_bytes()]).1, Ok(()), "{max}");
        let led = format!("\r\n{}", head_of(max - 1));
        assert_eq!(run_reads(max, &[led.as_bytes()]).1.map_err(|v| v.kind), Err(Kind::TooLarge));
        // Each head has the whole limit, also after a first one on the same connection.
        let two = format!("{}{}", head_of(max), head_of(max));
        assert_eq!(run_reads(max, &[two.as_bytes()]).1, Ok(()), "{max}");
        let two = format!("{}{}", head_of(max), head_of(max + 1));
        assert_eq!(run_reads(max, &[two.as_bytes()]).1.map_err(|v| v.kind), Err(Kind::TooLarge));
    }
    let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(check(head.as_bytes()).map_err(|v| v.kind), Err(Kind::TooLarge));
    let head = format!("GET / HTTP/1.1\r\n{}\r\n", &many[many.find("X-1:").unwrap()..]);
    assert_eq!(check(head.as_bytes()), Ok(()), "{MAX_FIELDS} fields pass");
}

#[test]
fn every_status_has_its_code() {
    let v = |kind| Violation { kind, reason: "x" };
    assert_eq!(v(Kind::Malformed).status(), 400);
    assert_eq!(v(Kind::TooLarge).status(), 431);
    assert_eq!(v(Kind::UnknownCoding).status(), 501);
}

// --- Properties --------------------------------------------------------------------------------

/// Cuts `input` into reads at the given points.
fn split<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.extend([0, input.len()]);
    at.sort_unstable();
    at.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

fn token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}"
}

/// A field value: visible ASCII, spaces and tabs inside, obs-text.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![0x21u8..0x7f, Just(b' '), Just(b'\t'), 0x80u8..=0xff], 0..24).prop_map(|mut v| {
        // No white space at the ends, which a parser trims.
        while v.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            v.remove(0);
        }
        while v.last().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            v.pop();
        }
        v
    })
}

prop_compose! {
    /// A well-formed request head without framing fields, and text that may follow it.
    fn well_formed_head()(
        method in token(),
        // Visible ASCII but what the URI parser behind the guard refuses (`<`, `>`; `` ` `` in
        // the path, `"` in the query) and a fragment, which the guard refuses for it.
        target in "/[!-~&&[^#<>`?]]{0,20}(\\?[!-~&&[^#<>\"]]{0,10})?",
        http10 in any::<bool>(),
        fields in prop::collection::vec((token(), value()), 0..12),
        leading in 0usize..3,
        after in prop::collection::vec(any::<u8>(), 0..40),
    ) -> (Vec<u8>, Vec<u8>) {
        let mut head = "\r\n".repeat(leading).into_bytes();
        head.extend(format!("{method} {target} HTTP/1.{}\r\n", if http10 { 0 } else { 1 }).bytes());
        for (name, value) in fields {
            let lower = name.to_ascii_lowercase();
            if ["content-length", "transfer-encoding", "host"].contains(&lower.as_str()) {
                continue;
            }
            head.extend(name.bytes());
            head.extend(b": ");
            head.extend(value);
            head.extend(b"\r\n");
        }
        head.extend(b"\r\n");
        (head, after)
    }
}

// 256 cases each (proptest's default); the PROPTEST_CASES environment variable sets more.
proptest! {
    /// Any bytes, in any reads: an answer, never a panic.
    #[test]
    fn never_panics_on_any_bytes(
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max in 16usize..400,
    ) {
        let _ = run_reads(max, &split(&input, &cuts));
    }

    /// The same bytes framed near the rules: a head with framing fields, then a body.
    #[test]
    fn never_panics_near_the_rules(
        fields in prop::collection::vec(prop_oneof![
            Just("Content-Length: 5".to_owned()),
            Just("Transfer-Encoding: chunked".to_owned()),
            "[A-Za-z-]{1,20}: [ -~\u{80}-\u{ff}]{0,10}",
        ], 0..5),
        body in prop::collection::vec(prop_oneof![
            "[0-9a-fA-F]{1,20}".prop_map(String::into_bytes),
            Just(b"\r\n".to_vec()),
            Just(b";ext=1".to_vec()),
            Just(b"X: 1\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 1..6),
        ], 0..16).prop_map(|pieces| pieces.concat()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = b"POST / HTTP/1.1\r\n".to_vec();
        for field in fields {
            input.extend(field.bytes());
            input.extend(b"\r\n");
        }
        input.extend(b"\r\n");
        input.extend(body);
        let _ = run_reads(MAX, &split(&input, &cuts));
    }

    /// A well-formed head is accepted, and its end found where httparse finds it.
    #[test]
    fn agrees_with_httparse_on_well_formed_heads((head, after) in well_formed_head()) {
        let mut input = head.clone();
        input.extend(&after);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&input);
        prop_assert_eq!(parsed, Ok(httparse::Status::Complete(head.len())));
        let mut framing = Framing::new(MAX);
        match framing.step(&input) {
            Ok(Step::Head(n, released)) => {
                prop_assert_eq!(n, head.len());
                prop_assert_eq!(released.as_slice(), &head[head.len() - released.len()..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// How the bytes are split into reads changes nothing: what is passed on, nor the verdict.
    #[test]
    fn the_verdict_does_not_depend_on_the_reads(
        input in prop::collection::vec(prop_oneof![
            Just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
            Just(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n".to_vec()),
            Just(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
            Just(b"3\r\nabc\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..6),
        ], 0..12).prop_map(|parts| parts.concat()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..10),
        max in 30usize..200,
    ) {
        let whole = run_reads(max, &[&input]);
        prop_assert_eq!(&run_reads(max, &split(&input, &cuts)), &whole);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run_reads(max, &bytewise), &whole);
    }
}

/// What the parser reads through a [`Guarded`] connection whose caller sent `input` and closed,
/// reading at most `read_size` bytes at a time, until the end, an error or a wait.
fn through_guard(input: &[u8], max: usize, read_size: usize) -> Vec<u8> {
    use tokio::io::{AsyncRead, AsyncWrite};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _entered = runtime.enter();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let (mut caller, proxy) = tokio::io::duplex(input.len() + 1);
    let written = Pin::new(&mut caller).poll_write(&mut cx, input);
    assert!(matches!(written, Poll::Ready(Ok(n)) if n == input.len()));
    drop(caller);
    let (mut guarded, _refusals) = Guarded::new(proxy, max);
    let mut out = Vec::new();
    for _ in 0..input.len() + STAND_IN.len() + 10 {
        let mut buf = vec![0u8; read_size];
        let mut buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut guarded).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => out.extend_from_slice(buf.filled()),
            _ => break,
        }
    }
    out
}

proptest! {
    /// Through the guard, in reads of any size, the parser gets what the rules let pass, in order,
    /// and in place of a refused head the stand-in request.
    #[test]
    fn the_guard_passes_on_what_the_rules_let_pass(
        input in prop::collection::vec(prop_oneof![
            Just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
            Just(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n".to_vec()),
            Just(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
            Just(b"3\r\nabc\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..6),
        ], 0..12).prop_map(|parts| parts.concat()),
        read_size in 1usize..80,
        max in 30usize..200,
    ) {
        let passed = run_reads(max, &[&input]).0;
        let out = through_guard(&input, max, read_size);
        prop_assert_eq!(&out, &through_guard(&input, max, 4096));
        prop_assert!(out.starts_with(&passed), "{:?} {:?}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&passed));
        let rest = &out[passed.len()..];
        let stand_in: &[u8] = if refused_at_a_head(max, &input) { STAND_IN } else { b"" };
        prop_assert_eq!(rest, stand_in, "{:?}", String::from_utf8_lossy(rest));
    }
}
