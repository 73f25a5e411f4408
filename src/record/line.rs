//! The access line: the record's event written by hand into a reused buffer, in exactly the
//! text or JSON shape the other log lines have, because the general formatter (field visitors,
//! `Debug` for every value, a timestamp formatted through `fmt`) is a noticeable part of a small
//! request's cost. The event still goes through `tracing`, so `RUST_LOG` filters it like any
//! other and a test's subscriber sees it.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The target of the access events.
pub const TARGET: &str = "uem_proxy::access";

/// Writes access events to standard error; every other event is left to the general formatter.
pub struct AccessLines {
    pub json: bool,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// A value's `Debug` text, before it is escaped into a JSON line.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S: Subscriber> Layer<S> for AccessLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return };
            line.clear();
            format(&mut line, event, self.json, SystemTime::now());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        });
    }
}

/// One line for `event`: as tracing-subscriber's text format (without ANSI colours) or its JSON
/// format with the event's fields flattened.
pub fn format(out: &mut String, event: &Event<'_>, json: bool, now: SystemTime) {
    let level = event.metadata().level();
    if json {
        out.push_str("{\"timestamp\":\"");
        timestamp(out, now);
        let _ = write!(out, "\",\"level\":\"{level}\"");
    } else {
        timestamp(out, now);
        let _ = write!(out, " {level:>5} {}: ", event.metadata().target());
    }
    event.record(&mut Fields { out, json, first: true });
    if json {
        out.push_str(",\"target\":");
        json_string(out, event.metadata().target());
        out.push('}');
    }
    out.push('\n');
}

/// The event's fields, each as the general formatter writes it in one format or the other.
struct Fields<'a> {
    out: &'a mut String,
    json: bool,
    first: bool,
}

impl Fields<'_> {
    /// What comes before a value: ` name=` in text, `,"name":` in JSON. The text format writes
    /// the message without its name.
    fn name(&mut self, field: &Field) {
        if self.json {
            self.out.push(',');
            json_string(self.out, field.name());
            self.out.push(':');
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        if field.name() != "message" {
            self.out.push_str(field.name());
            self.out.push('=');
        }
    }

    /// A string value: quoted as `Debug` quotes it in text, escaped as serde_json does in JSON.
    fn string(&mut self, value: &str) {
        if self.json {
            json_string(self.out, value);
        } else if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
            // Nothing for `Debug` to escape (ids, paths, peers): quoted as it is.
            self.out.push('"');
            self.out.push_str(value);
            self.out.push('"');
        } else {
            let _ = write!(self.out, "{value:?}");
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        if self.json {
            SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut text) => {
                    text.clear();
                    let _ = write!(text, "{value:?}");
                    json_string(self.out, &text);
                }
                Err(_) => json_string(self.out, &format!("{value:?}")),
            });
        } else {
            let _ = write!(self.out, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        self.string(value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        push_u64(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        if value < 0 {
            self.out.push('-');
        }
        push_u64(self.out, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        // The access line's times: milliseconds to the microsecond, written as `Debug` writes
        // them (and as JSON does; they are never large or small enough for an exponent).
        if let Some(micros) = whole_thousandths(value) {
            push_thousandths(self.out, micros);
        } else if !self.json {
            let _ = write!(self.out, "{value:?}");
        } else if value.is_finite() {
            // The shortest form that reads back the same, as serde_json writes it: `1e+21`.
            let start = self.out.len();
            let _ = write!(self.out, "{value:?}");
            if let Some(e) = self.out[start..].find('e')
                && !self.out[start + e + 1..].starts_with('-')
            {
                self.out.insert(start + e + 1, '+');
            }
        } else {
            self.out.push_str("null");
        }
    }
}

/// `value` as a count of thousandths, when it is exactly one (the nearest `f64` to `n / 1000`)
/// and small enough that its shortest text is `n / 1000` in decimal.
pub fn whole_thousandths(value: f64) -> Option<u64> {
    // `-0.0` too is written by `Debug` with its sign.
    if !(0.0..1e12).contains(&value) || value.is_sign_negative() {
        return None;
    }
    let n = (value * 1000.0).round();
    (n / 1000.0 == value).then_some(n as u64)
}

/// `n / 1000` as `Debug` writes the `f64`: `0.0`, `1.0`, `1.5`, `0.001`, `12.345`.
pub fn push_thousandths(out: &mut String, n: u64) {
    push_u64(out, n / 1000);
    out.push('.');
    let fraction = n % 1000;
    if fraction == 0 {
        out.push('0');
        return;
    }
    let digits = [b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8, b'0' + (fraction % 10) as u8];
    let used = if digits[2] != b'0' {
        3
    } else if digits[1] != b'0' {
        2
    } else {
        1
    };
    out.push_str(std::str::from_utf8(&digits[..used]).expect("digits are ASCII"));
}

fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("digits are ASCII"));
}

/// A JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// `2026-11-29T07:51:06.475186Z`, as tracing-subscriber writes it.
fn timestamp(out: &mut String, now: SystemTime) {
    thread_local! {
        /// The last second written, and its text up to the fraction: lines come many a second.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            // Up to the fraction: `2026-11-29T07:51:06.`
            let whole = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
            second.1.clear();
            second.1.push_str(&whole[..whole.len() - "000000Z".len()]);
            second.0 = secs;
        }
        out.push_str(&second.1);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for (i, digit) in digits.iter_mut().rev().enumerate() {
        *digit = b'0' + (micros / 10u32.pow(i as u32) % 10) as u8;
    }
    out.push_str(std::str::from_utf8(&digits).expect("digits are ASCII"));
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps what a layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Ours, formatted from the same event.
    struct Ours {
        json: bool,
        out: Arc<Mutex<String>>,
    }

    impl<S: Subscriber> Layer<S> for Ours {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut out = self.out.lock().unwrap();
            format(&mut out, event, self.json, SystemTime::now());
        }
    }

    fn emit(caller: Option<&str>, activity: Option<&str>, upstream: Option<f64>) {
        tracing::info!(
            target: "uem_proxy::access",
            request_id = "ab\"c\\d",
            peer = %"127.0.0.1:5000",
            caller,
            activity_id = activity,
            method = %"GET",
            path = %"/api/mdm/devices/1",
            status = 200u16,
            upstream_ms = upstream,
            total_ms = 7.0,
            bytes_in = 0u64,
            bytes_out = 18_446_744_073_709_551_615u64,
            complete = true,
            skew = -42i64,
            least = i64::MIN,
            "request"
        );
    }

    /// Both lines without their timestamps, which differ by the time between the two writes.
    fn both(json: bool, emit: impl Fn()) -> (String, String) {
        let theirs = Sink::default();
        let ours = Arc::new(Mutex::new(String::new()));
        let writer = theirs.clone();
        let general = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(Ours { json, out: ours.clone() });
        if json {
            let subscriber = subscriber.with(general.json().flatten_event(true));
            tracing::subscriber::with_default(subscriber, &emit);
        } else {
            tracing::subscriber::with_default(subscriber.with(general), &emit);
        }
        let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
        let ours = ours.lock().unwrap().clone();
        let strip = |s: &str| {
            let at = if json { s.find("\",\"level\"").unwrap() } else { s.find(' ').unwrap() };
            s[at..].to_owned()
        };
        (strip(&theirs), strip(&ours))
    }

    #[test]
    fn lines_are_those_of_the_general_formatter() {
        for json in [false, true] {
            for (caller, activity, upstream) in [
                (None, None, None),
                (Some("10.0.0.0/8"), Some("a\u{1}\"b"), Some(0.001)),
                (Some("loopback"), None, Some(1e21)),
                (None, None, Some(1e16)),
                (None, None, Some(1.5e-7)),
                (None, None, Some(123456.789)),
                (None, None, Some(0.0)),
                (None, None, Some(1.0)),
                (None, None, Some(12.3)),
                (None, None, Some(0.02)),
                (None, None, Some(999999999999.999)),
                (None, None, Some(-0.001)),
            ] {
                let (theirs, ours) = both(json, || emit(caller, activity, upstream));
                assert_eq!(ours, theirs, "json: {json}");
            }
        }
    }

    #[test]
    fn timestamps_are_those_of_the_general_formatter() {
        let cases = [0u64, 951_782_400, 1_795_000_000, 1_795_000_000, 1_795_000_001, 4_102_444_799, 253_402_300_799];
        for (i, secs) in cases.into_iter().enumerate() {
            let at = UNIX_EPOCH + Duration::new(secs, [123_456_789, 7_000, 999_999_999][i % 3]);
            let mut ours = String::new();
            timestamp(&mut ours, at);
            let theirs = format!("{}", humantime::format_rfc3339_micros(at));
            assert_eq!(ours, theirs);
        }
    }
}
