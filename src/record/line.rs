//! The access line: the record's event written by hand into a reused buffer, in exactly the
//! text or JSON shape the other log lines have, because the general formatter (field visitors,
//! `Debug` for every value, a timestamp formatted through `fmt`) is a noticeable part of a small
//! request's cost.
//!
//! Where the proxy installed its own subscriber ([`install`]), the line is written from the
//! record's fields by hand before its event is sent, and the event carries no values: visiting
//! fourteen values one by one cost more than writing the line. The event still decides, with the
//! same target, level and field names as ever, so `RUST_LOG` keeps or drops it exactly as before
//! (field-name and span filters included); [`AccessLines`] writes the prepared line when it sees
//! it. Under any other subscriber (a test's, an embedding program's) the event carries its values,
//! and this module's layer writes the same line from them.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::listen::Peer;

pub mod held;

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
    /// `LINE` holds this thread's next access line, made at this time by [`Access::write`] for its
    /// event.
    static READY: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// Whether [`Access::write`] prepares the line before an event without values, and in which
/// format: set once, by [`install`], when the proxy's own subscriber (with [`AccessLines`])
/// became the global one.
static DIRECT: OnceLock<bool> = OnceLock::new();

/// Says that the global subscriber is the proxy's, writing access events as [`AccessLines`] with
/// `json` does; from then on [`Access::write`] prepares the line and sends an event without values.
pub fn install(json: bool) {
    let _ = DIRECT.set(json);
}

impl<S: Subscriber> Layer<S> for AccessLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        if let Some(made) = READY.take() {
            LINE.with(|line| {
                if let Ok(line) = line.try_borrow() {
                    held::line(line.as_bytes(), made);
                }
            });
            return;
        }
        let now = SystemTime::now();
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return };
            line.clear();
            format(&mut line, event, self.json, now);
            held::line(line.as_bytes(), now);
        });
    }
}

/// One line for `event`: as tracing-subscriber's text format (without ANSI colours) or its JSON
/// format with the event's fields flattened.
pub fn format(out: &mut String, event: &Event<'_>, json: bool, now: SystemTime) {
    let (level, target) = (event.metadata().level(), event.metadata().target());
    start(out, level, target, json, now);
    event.record(&mut Fields { out, json, first: true });
    end(out, target, json);
}

/// The timestamp, the level and, in text, the target.
fn start(out: &mut String, level: &tracing::Level, target: &str, json: bool, now: SystemTime) {
    if json {
        out.push_str("{\"timestamp\":\"");
        timestamp(out, now);
        let _ = write!(out, "\",\"level\":\"{level}\"");
    } else {
        timestamp(out, now);
        let _ = write!(out, " {level:>5} {target}: ");
    }
}

/// The target, in JSON, and the end of the line.
fn end(out: &mut String, target: &str, json: bool) {
    if json {
        out.push_str(",\"target\":");
        json_string(out, target);
        out.push('}');
    }
    out.push('\n');
}

/// What the access line of one request says, in the order it says it. `None` fields are left
/// out; times are in milliseconds.
pub struct Access<'a> {
    pub request_id: &'a str,
    pub peer: &'a Peer,
    pub tenant: Option<&'a str>,
    pub caller: Option<&'a str>,
    pub activity_id: Option<&'a str>,
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
}

impl Access<'_> {
    /// Sends the access event: under the proxy's own subscriber, with the line prepared and no
    /// values (see the module's doc); under any other, with its values.
    pub fn write(&self) {
        let Some(&json) = DIRECT.get() else {
            return self.event();
        };
        let now = SystemTime::now();
        let prepared = LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return false };
            line.clear();
            self.format(&mut line, json, now);
            true
        });
        if !prepared {
            return self.event();
        }
        READY.set(Some(now));
        let empty = tracing::field::Empty;
        tracing::info!(
            target: TARGET,
            request_id = empty,
            peer = empty,
            tenant = empty,
            caller = empty,
            activity_id = empty,
            method = empty,
            path = empty,
            status = empty,
            upstream_ms = empty,
            total_ms = empty,
            bytes_in = empty,
            bytes_out = empty,
            complete = empty,
            "request"
        );
        // Not written when `RUST_LOG` dropped the event.
        READY.set(None);
    }

    /// The access event, with the fields in the line's order.
    pub fn event(&self) {
        tracing::info!(
            target: TARGET,
            request_id = self.request_id,
            peer = %self.peer,
            tenant = self.tenant,
            caller = self.caller,
            activity_id = self.activity_id,
            method = %self.method,
            path = %self.path,
            status = self.status,
            upstream_ms = self.upstream_ms,
            total_ms = self.total_ms,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            complete = self.complete,
            "request"
        );
    }

    /// The line [`format`] writes for [`Access::event`], written without the event: each
    /// field's name with what comes before it is one constant, and numbers are written without
    /// `core::fmt`.
    pub fn format(&self, out: &mut String, json: bool, now: SystemTime) {
        let mut f = Fields { out, json, first: false };
        // ` name=` in text, `,"name":` in JSON.
        macro_rules! key {
            ($name:literal) => {
                f.out.push_str(if json { concat!(",\"", $name, "\":") } else { concat!(" ", $name, "=") })
            };
        }
        if json {
            f.out.push_str("{\"timestamp\":\"");
            timestamp(f.out, now);
            f.out.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
        } else {
            timestamp(f.out, now);
            // The level padded to five, the target, and the message, unnamed and unquoted.
            f.out.push_str(concat!("  INFO ", "uem_proxy::access", ": request"));
        }
        key!("request_id");
        f.string(self.request_id);
        key!("peer");
        match self.peer {
            Peer::Tcp(std::net::SocketAddr::V4(addr)) => f.raw(crate::listen::ipv4_text(addr).as_str()),
            peer => f.debug(&tracing::field::display(peer)),
        }
        if let Some(tenant) = self.tenant {
            key!("tenant");
            f.string(tenant);
        }
        if let Some(caller) = self.caller {
            key!("caller");
            f.string(caller);
        }
        if let Some(activity_id) = self.activity_id {
            key!("activity_id");
            f.string(activity_id);
        }
        key!("method");
        f.raw(self.method.as_str());
        key!("path");
        f.raw(self.path);
        key!("status");
        push_u64(f.out, self.status.into());
        if let Some(ms) = self.upstream_ms {
            key!("upstream_ms");
            f.float(ms);
        }
        key!("total_ms");
        f.float(self.total_ms);
        key!("bytes_in");
        push_u64(f.out, self.bytes_in);
        key!("bytes_out");
        push_u64(f.out, self.bytes_out);
        key!("complete");
        f.out.push_str(if self.complete { "true" } else { "false" });
        end(f.out, TARGET, json);
    }
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
    fn name(&mut self, name: &str) {
        if self.json {
            self.out.push(',');
            json_string(self.out, name);
            self.out.push(':');
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        if name != "message" {
            self.out.push_str(name);
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

    /// A value recorded with `Debug` (or `%`, `Display`): as it writes itself in text, as a JSON
    /// string of that text in JSON.
    fn debug(&mut self, value: &dyn fmt::Debug) {
        if !self.json {
            let _ = write!(self.out, "{value:?}");
            return;
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut text) => {
                text.clear();
                let _ = write!(text, "{value:?}");
                json_string(self.out, &text);
            }
            Err(_) => json_string(self.out, &format!("{value:?}")),
        });
    }

    /// A value recorded with `%`, whose text is `value`.
    fn raw(&mut self, value: &str) {
        if self.json {
            json_string(self.out, value);
        } else {
            self.out.push_str(value);
        }
    }

    fn float(&mut self, value: f64) {
        // The access line's times: milliseconds to the microsecond, written as `Debug` writes
        // them (and as JSON does; they are never large or small enough for an exponent).
        if let Some(micros) = whole_thousandths(value) {
            push_thousandths(self.out, micros);
        } else if !self.json {
            let _ = write!(self.out, "{value:?}");
        } else {
            // As serde_json writes it (`1e+21`, `null` for what is not finite): its shortest form
            // is not always `Debug`'s, when two of the same length read back the same.
            self.out.push_str(&serde_json::to_string(&value).unwrap_or_else(|_| "null".into()));
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field.name());
        self.debug(value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field.name());
        self.string(value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field.name());
        push_u64(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field.name());
        if value < 0 {
            self.out.push('-');
        }
        push_u64(self.out, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field.name());
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field.name());
        self.float(value);
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

fn push_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
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

    use proptest::prelude::*;
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
                // Two shortest forms of 17 digits: serde_json's and `Debug`'s differ.
                (None, None, Some(3232134611117.6563)),
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

    /// Formats every event with a fixed clock.
    struct At {
        json: bool,
        now: SystemTime,
        out: Arc<Mutex<String>>,
    }

    impl<S: Subscriber> Layer<S> for At {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            format(&mut self.out.lock().unwrap(), event, self.json, self.now);
        }
    }

    fn peer() -> impl Strategy<Value = Peer> {
        prop_oneof![
            any::<std::net::SocketAddrV4>().prop_map(|a| Peer::Tcp(a.into())),
            any::<std::net::SocketAddrV6>().prop_map(|a| Peer::Tcp(a.into())),
            any::<Option<u32>>().prop_map(Peer::Unix),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[ -~]{0,12}", "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é😀 ]{0,12}", any::<String>(),]
    }

    fn time() -> impl Strategy<Value = f64> {
        prop_oneof![(0u64..10_000_000).prop_map(|m| m as f64 / 1e3), any::<f64>()]
    }

    proptest! {
        /// The line written straight from a record is the line its event makes, in both formats.
        #[test]
        fn the_direct_line_is_the_events_line(
            json in any::<bool>(),
            id in text(),
            peer in peer(),
            tenant in proptest::option::of(text()),
            caller in proptest::option::of(text()),
            activity_id in proptest::option::of(text()),
            method in prop_oneof![Just(Method::GET), Just(Method::DELETE), "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap())],
            path in text(),
            status in any::<u16>(),
            upstream_ms in proptest::option::of(time()),
            total_ms in time(),
            bytes_in in any::<u64>(),
            bytes_out in any::<u64>(),
            complete in any::<bool>(),
            secs in 0u64..4_102_444_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let access = Access {
                request_id: &id,
                peer: &peer,
                tenant: tenant.as_deref(),
                caller: caller.as_deref(),
                activity_id: activity_id.as_deref(),
                method: &method,
                path: &path,
                status,
                upstream_ms,
                total_ms,
                bytes_in,
                bytes_out,
                complete,
            };
            let now = UNIX_EPOCH + Duration::new(secs, nanos);
            let events = Arc::new(Mutex::new(String::new()));
            let subscriber = tracing_subscriber::registry().with(At { json, now, out: events.clone() });
            tracing::subscriber::with_default(subscriber, || access.event());
            let mut direct = String::new();
            access.format(&mut direct, json, now);
            prop_assert_eq!(&direct, &*events.lock().unwrap());
            // And the general formatter's, timestamps aside.
            let (theirs, _) = both(json, || access.event());
            let at = if json { direct.find("\",\"level\"").unwrap() } else { direct.find(' ').unwrap() };
            prop_assert_eq!(&direct[at..], theirs);
        }
    }
}
