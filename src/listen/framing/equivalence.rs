//! The rules against the oracle (their slower form before): over generated heads, bodies and
//! splits into reads, the same steps, the same refusals and the same state after each step
//! (`PROPTEST_CASES=100000 cargo test --lib framing::equivalence` runs them longer).

use proptest::prelude::*;

use super::rules::{Framing, Step};
use super::{Violation, oracle};

/// Feeds both the same reads, step by step, and compares everything each step gives. After a
/// refusal both are asked again about the same bytes.
fn agree(max: usize, reads: &[&[u8]]) -> Result<(), TestCaseError> {
    let mut new = Framing::new(max);
    let mut old = oracle::Framing::new(max);
    for read in reads {
        let mut at = 0;
        while at < read.len() {
            let got = new.step(&read[at..]);
            let want = old.step(&read[at..]);
            prop_assert_eq!(&got, &want, "at {} of {:?}", at, String::from_utf8_lossy(read));
            prop_assert_eq!(format!("{:?}", new.state), format!("{:?}", old.state));
            prop_assert_eq!(new.between_requests(), old.between_requests());
            match got {
                Ok(Step::Pass(n) | Step::Hold(n)) => at += n,
                Ok(Step::Head(n, section) | Step::Trailers(n, section)) => {
                    at += n;
                    // The buffer comes back as the guard gives it back: reuse changes nothing.
                    new.recycle(section);
                }
                Err(_) => {
                    let again: Result<Step, Violation> = new.step(&read[at..]);
                    prop_assert_eq!(again, old.step(&read[at..]));
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Cuts `input` into reads at the given points.
fn split<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.extend([0, input.len()]);
    at.sort_unstable();
    at.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

fn bytes(s: &'static str) -> BoxedStrategy<Vec<u8>> {
    Just(s.as_bytes().to_vec()).boxed()
}

fn method() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "get", "POST", "Delete", "PUT", "PATCH", "HEAD", "OPTIONS", "PROPFIND"])
            .prop_map(|m| m.as_bytes().to_vec()),
        1 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,8}".prop_map(String::into_bytes),
        1 => prop::sample::select(vec!["", "G\u{e9}T", "GE T", "G:T", "GET\t"]).prop_map(|m| m.as_bytes().to_vec()),
    ]
}

/// Targets: API paths, every printable byte, encoded slashes, bytes outside ASCII (valid UTF-8
/// or not), fragments, queries, and the other forms (`*`, absolute, authority).
fn target() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => prop::sample::select(vec!["/api", "/mdm", "/devices", "/1", "/search", "/", "//", "/.", "/..", "%2F", "%2f", "%5C"])
            .prop_map(|p| p.as_bytes().to_vec()),
        3 => "[!-~]{1,3}".prop_map(String::into_bytes),
        1 => prop::sample::select(vec!["?", "?a=1&b=\"x\"", "#frag", "{\"a\":1}", "<", ">", "`", "\\", "^", "|"])
            .prop_map(|p| p.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["\u{e9}", "\u{20ac}"]).prop_map(|p| p.as_bytes().to_vec()),
        1 => prop::collection::vec(0x80u8..=0xff, 1..3),
    ];
    prop_oneof![
        8 => (Just(b"/".to_vec()), prop::collection::vec(piece, 0..8)).prop_map(|(mut t, pieces)| {
            t.extend(pieces.concat());
            t
        }),
        1 => prop::sample::select(vec!["*", "http://a/b?c", "a.example:443", "a", "", "?x", "/a b", "/\u{7f}"])
            .prop_map(|t| t.as_bytes().to_vec()),
    ]
}

fn version() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => bytes("HTTP/1.1"),
        3 => bytes("HTTP/1.0"),
        1 => prop::sample::select(vec!["HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/1.1\t", "", "HTTP/1.10"])
            .prop_map(|v| v.as_bytes().to_vec()),
    ]
    .boxed()
}

fn request_line() -> impl Strategy<Value = Vec<u8>> {
    let space = prop_oneof![24 => bytes(" "), 1 => bytes("  "), 1 => bytes("\t"), 1 => bytes("")];
    (method(), space.clone(), target(), space, version()).prop_map(|(m, s1, t, s2, v)| [m, s1, t, s2, v].concat())
}

/// Field names: the framing ones in mixed case, tokens, and names that are not tokens.
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "Host", "host", "HOST", "Content-Length", "content-LENGTH", "Transfer-Encoding", "transfer-encoding",
            "TRANSFER-ENCODING", "X-A", "Accept", "User-Agent",
        ])
        .prop_map(|n| n.as_bytes().to_vec()),
        2 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}".prop_map(String::into_bytes),
        1 => prop::sample::select(vec!["", "X\u{e9}", "Na me", "X@", " Host", "\tX", "Content-Length ", "Host\t"])
            .prop_map(|n| n.as_bytes().to_vec()),
    ]
}

fn separator() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![16 => bytes(": "), 6 => bytes(":"), 2 => bytes(":\t "), 1 => bytes(" :"), 1 => bytes("")].boxed()
}

/// Field values: lengths, codings, odd white space, obs-text, control characters.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[0-9]{1,3}".prop_map(String::into_bytes),
        2 => prop::sample::select(vec![
            "chunked", "Chunked", "gzip, chunked", "chunked, gzip", "chunked,", ",", " , chunked", "chunked , chunked",
            "identity", "", "  ", "+3", "-1", "3, 3", "99999999999999999999", "1234567890123456789", "0", "a",
            "127.0.0.1:8080", "x\u{e9}y", "a\u{1}b", "a\u{7f}", "a\tb", "a\0b", " \t5\t ",
        ])
        .prop_map(|v| v.as_bytes().to_vec()),
        2 => prop::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff, Just(1u8), Just(0x7f)], 0..20),
    ]
}

fn line_end() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        60 => bytes("\r\n"),
        1 => bytes("\n"),
        1 => bytes("\r"),
        1 => bytes("\r\r\n"),
        1 => bytes("\n\r"),
        1 => bytes("\r\0\n"),
        1 => bytes("\0\r\n"),
    ]
    .boxed()
}

fn field_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => (name(), separator(), field_value(), line_end()).prop_map(|(n, s, v, e)| [n, s, v, e].concat()),
        // Obsolete line folding.
        1 => (prop::sample::select(vec![" ", "\t"]), field_value(), line_end())
            .prop_map(|(f, v, e)| [f.as_bytes().to_vec(), v, e].concat()),
    ]
}

/// A chunked body: chunks with odd sizes and extensions, the last chunk, trailers.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk =
        (1usize..12, prop::sample::select(vec!["", ";x=1", " ;y", "\t", " ", ";\u{e9}", ";a\u{1}"]), any::<bool>())
            .prop_map(|(size, ext, upper)| {
                let size = if upper { format!("{size:X}") } else { format!("{size:x}") };
                let mut c = format!("{size}{ext}\r\n").into_bytes();
                c.extend(std::iter::repeat_n(b'd', usize::from_str_radix(&size, 16).unwrap()));
                c.extend(b"\r\n");
                c
            });
    (
        prop::collection::vec(chunk, 0..4),
        prop::collection::vec(field_line(), 0..3),
        prop::sample::select(vec!["0\r\n", "00\r\n", "0;e\r\n", ""]),
    )
        .prop_map(|(chunks, trailers, last)| {
            let mut body = chunks.concat();
            body.extend(last.as_bytes());
            body.extend(trailers.concat());
            body.extend(b"\r\n");
            body
        })
}

/// One request: empty lines before it, a request line, fields, the empty line, then a body of
/// some shape (often not the one its fields announce).
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["", "", "", "\r\n", "\r\n\r\n", "\n", "\r"]),
        request_line(),
        line_end(),
        prop::collection::vec(field_line(), 0..8),
        prop_oneof![
            3 => bytes(""),
            2 => "[a-z]{0,6}".prop_map(String::into_bytes).boxed(),
            2 => chunked_body().boxed(),
            1 => prop::collection::vec(any::<u8>(), 0..8).boxed(),
        ],
    )
        .prop_map(|(leading, line, end, fields, body)| {
            let mut r = leading.as_bytes().to_vec();
            r.extend(line);
            r.extend(end);
            r.extend(fields.concat());
            r.extend(b"\r\n");
            r.extend(body);
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(1024), ..ProptestConfig::default() })]

    /// Requests from the grammar, pipelined, fed in random reads, under a size limit that is
    /// sometimes reached.
    #[test]
    fn the_rules_agree_with_the_oracle_on_generated_requests(
        requests in prop::collection::vec(request(), 1..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max in prop_oneof![3 => Just(64 * 1024), 1 => 8usize..300],
    ) {
        let input = requests.concat();
        agree(max, &split(&input, &cuts))?;
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        agree(max, &bytewise)?;
    }

    /// Any bytes at all, in random reads.
    #[test]
    fn the_rules_agree_with_the_oracle_on_any_bytes(
        input in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max in 8usize..400,
    ) {
        agree(max, &split(&input, &cuts))?;
    }

    /// Many fields, around the limit on their number.
    #[test]
    fn the_rules_agree_with_the_oracle_on_many_fields(
        fields in 95usize..106,
        bad in prop::option::of(0usize..106),
        length in prop::option::of(0usize..106),
    ) {
        let mut input = b"POST / HTTP/1.1\r\n".to_vec();
        for i in 0..fields {
            if Some(i) == bad {
                input.extend(b"Bad Name: 1\r\n");
            } else if Some(i) == length {
                input.extend(b"Content-Length: x\r\n");
            } else {
                input.extend(format!("X-{i}: {i}\r\n").bytes());
            }
        }
        input.extend(b"\r\n");
        agree(64 * 1024, &[&input])?;
    }
}

/// A head of framing fields only (`Content-Length`, `Transfer-Encoding`, `Host` in any case and
/// number, with values near the rules), then a body of the shape they announce or another.
fn framing_request() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        prop::sample::select(vec![
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "TRANSFER-encoding",
            "Host",
        ]),
        prop::sample::select(vec![
            "0",
            "3",
            "5",
            "x",
            "",
            "3, 3",
            "chunked",
            "CHUNKED",
            "gzip",
            "chunked,",
            ",",
            "",
            " , ",
            "chunked, chunked",
            "gzip, chunked",
            "a",
        ]),
    )
        .prop_map(|(name, value)| format!("{name}: {value}\r\n").into_bytes());
    let fields = prop_oneof![
        2 => prop::collection::vec(field, 0..5),
        // Chunked as the rules allow it, so that chunks and trailers are reached often.
        1 => Just(vec![b"Host: a\r\n".to_vec(), b"Transfer-Encoding: chunked\r\n".to_vec()]),
    ];
    (
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        fields,
        prop_oneof![1 => chunked_body().boxed(), 1 => "[a-z]{0,6}".prop_map(String::into_bytes).boxed()],
    )
        .prop_map(|(version, fields, body)| {
            let mut r = format!("POST /api/x {version}\r\n").into_bytes();
            r.extend(fields.concat());
            r.extend(b"\r\n");
            r.extend(body);
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(1024), ..ProptestConfig::default() })]

    /// Framing fields in every combination, with bodies, pipelined, in random reads.
    #[test]
    fn the_rules_agree_with_the_oracle_on_framing_fields(
        requests in prop::collection::vec(framing_request(), 1..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input = requests.concat();
        agree(64 * 1024, &split(&input, &cuts))?;
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        agree(64 * 1024, &bytewise)?;
    }
}

/// The common case's target check takes exactly what the URI parser takes, byte by byte, in the
/// path and in the query, and stops where a space would end it.
#[test]
fn the_plain_target_check_takes_what_the_uri_parser_takes() {
    use super::head::plain_origin_form;
    for b in 0..=255u8 {
        for target in [vec![b'/', b], vec![b'/', b, b'x'], vec![b'/', b'?', b], vec![b'/', b'a', b'?', b'q', b]] {
            let mut line = target.clone();
            line.extend(b" HTTP/1.1");
            if plain_origin_form(&line) == Some(target.len()) {
                assert!(http::Uri::try_from(target.as_slice()).is_ok(), "{target:?}");
                assert!(!target.contains(&b'#'), "{target:?}");
            } else if b.is_ascii_graphic() && b != b'#' {
                assert!(http::Uri::try_from(target.as_slice()).is_err(), "{target:?} is taken by the parser");
            }
        }
    }
    // The parser's length limit, to the byte.
    for len in [u16::MAX as usize - 2, u16::MAX as usize - 1, u16::MAX as usize, u16::MAX as usize + 1] {
        let target = format!("/{}", "a".repeat(len - 1));
        let parsed = http::Uri::try_from(target.as_bytes()).is_ok();
        assert_eq!(plain_origin_form(target.as_bytes()) == Some(len), parsed, "{len}");
    }
}

/// The word-at-a-time value scan stops exactly where the byte-at-a-time one does: every byte at
/// every place of a word, beside allowed bytes of all kinds.
#[test]
fn the_value_scan_stops_where_a_byte_by_byte_one_does() {
    use super::head::plain_value_len;
    let byte_by_byte =
        |bytes: &[u8]| bytes.iter().position(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f).unwrap_or(bytes.len());
    let fills: [&[u8]; 4] = [
        b"abcdefghijklmnopqrstuvwx",
        b"\x80\xff\x7e ~!\xc3\xa9 \x20\x21\x7e\x80\x81\xfe\xff",
        b"\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
        b"        \x7e\x7e\x7e\x7e\x7e\x7e\x7e\x7e\x7e",
    ];
    for fill in fills {
        for b in 0..=255u8 {
            for at in 0..fill.len() {
                let mut bytes = fill.to_vec();
                bytes[at] = b;
                for start in 0..3 {
                    let bytes = &bytes[start..];
                    assert_eq!(plain_value_len(bytes), byte_by_byte(bytes), "{bytes:?}");
                }
            }
        }
    }
}
