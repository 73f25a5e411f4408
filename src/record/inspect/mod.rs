//! The inspector: the last exchanges, kept in a bounded ring for `/_proxy/requests`, sent to
//! `/_proxy/events` subscribers as they finish, and counted per minute for the page's sparkline.
//!
//! Fed from one place, the [`Record`](super::Record) written when a request's answer is done. With
//! `off`, a request costs one atomic load here: no header is copied, no body watched. Memory is
//! bounded by the ring's length times (the headers, bounded by the listeners' limits, and at most
//! twice [`BODY_LIMIT`]).

pub mod capture;
pub mod events;
mod hide;
mod minutes;
pub mod ui;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use http::HeaderMap;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

pub use capture::{Capture, Exchange, Kept};
pub use minutes::Minute;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};

use crate::token::Tokens;

/// How much the inspector keeps of each exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InspectMode {
    /// Nothing.
    Off,
    /// Method, target, status, times, sizes, caller, permission, activityId, headers both ways.
    Meta,
    /// All of `Meta`, and the first [`BODY_LIMIT`] bytes of each body.
    Bodies,
}

impl InspectMode {
    pub fn parse(s: &str) -> Result<InspectMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(InspectMode::Off),
            "meta" => Ok(InspectMode::Meta),
            "bodies" => Ok(InspectMode::Bodies),
            _ => Err(format!("'{s}' is not off, meta or bodies")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InspectMode::Off => "off",
            InspectMode::Meta => "meta",
            InspectMode::Bodies => "bodies",
        }
    }

    fn from_u8(n: u8) -> InspectMode {
        match n {
            1 => InspectMode::Meta,
            2 => InspectMode::Bodies,
            _ => InspectMode::Off,
        }
    }
}

/// The inspector's settings: `UEM_PROXY_INSPECT` and `UEM_PROXY_INSPECT_ENTRIES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InspectSettings {
    pub mode: InspectMode,
    /// The most exchanges kept.
    pub entries: usize,
}

/// The most bytes of each body kept in `bodies` mode.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What a credential header's value shows as.
pub const REDACTED: &str = "***";

/// Headers whose values are credentials: never kept, whoever sent them.
const CREDENTIALS: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "set-cookie", "aw-tenant-code"];

/// Events a subscriber may fall behind by before it skips ahead; a slow page never slows requests.
const EVENTS_BACKLOG: usize = 256;

/// The headers as name and value, credentials as [`REDACTED`]; a value that is not text shows
/// with its odd bytes replaced.
pub fn redact(headers: &HeaderMap) -> Vec<(String, String)> {
    redact_pairs(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())))
}

/// [`redact`] for headers given as name and value bytes.
fn redact_pairs<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, String)> {
    headers
        .map(|(name, value)| {
            let shown = if CREDENTIALS.contains(&name) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            (name.to_owned(), shown)
        })
        .collect()
}

/// One finished exchange, as `/_proxy/requests` and `/_proxy/events` show it.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Increases by one per entry: a page that missed events sees the gap.
    pub seq: u64,
    pub request_id: String,
    /// When the request arrived (RFC 3339, milliseconds).
    pub time: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub total_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whether the whole answer reached the caller.
    pub complete: bool,
    /// The tenant the request went to; `None` while the proxy serves one.
    pub tenant: Option<String>,
    pub caller: Option<String>,
    /// The catalogue permission the request needs, when its path is in a mapped family.
    pub permission: Option<&'static str>,
    /// Why it failed, when the proxy knows: on an API 403, the permission the role lacks.
    pub hint: Option<String>,
    pub activity_id: Option<String>,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: Option<Kept>,
    pub response_body: Option<Kept>,
}

/// One tenant's credentials, which the inspector hides wherever it keeps text.
pub struct TenantSecrets {
    /// Its name as the record gives it: `None` while the proxy serves one tenant.
    pub tenant: Option<Arc<str>>,
    pub tokens: Tokens,
    /// Its tenant code, and its client secret or password.
    pub secrets: Vec<SecretString>,
}

/// What an exchange hides when shown: the tokens in use when it finished, and the tenants'
/// configured secrets as they were then.
pub struct Secrets {
    /// Inline: one tenant's current and previous token, kept without an allocation a request.
    tokens: smallvec::SmallVec<[Arc<crate::token::Token>; 2]>,
    tenants: Arc<Vec<TenantSecrets>>,
}

impl Secrets {
    /// The secret texts for an exchange with `tenant`: each token's secret part (`Bearer <this>`,
    /// `Basic <this>`) and the configured secrets; none shorter than 4 characters, which would hide
    /// innocent text and is no credential.
    fn strings(&self, tenant: Option<&str>) -> Vec<String> {
        let credential = |token: &Arc<crate::token::Token>| {
            let header = token.header().to_str().ok()?;
            let secret = header.split_once(' ').map_or(header, |(_, secret)| secret).trim();
            Some(secret.to_owned())
        };
        let mut secrets: Vec<String> = self.tokens.iter().filter_map(credential).collect();
        let served = self.tenants.iter().filter(|t| tenant.is_none() || t.tenant.as_deref() == tenant);
        for t in served {
            secrets.extend(t.secrets.iter().map(|s| s.expose_secret().trim().to_owned()));
        }
        secrets.retain(|s| s.len() >= 4);
        secrets
    }
}

/// The ring of the last exchanges, its subscribers, and the per-minute counts.
pub struct Inspector {
    mode: AtomicU8,
    ring: Mutex<Ring>,
    minutes: Mutex<minutes::Minutes>,
    /// New entries for the event streams: weak, so that a backlog holds no entry the ring has
    /// let go (memory stays bounded by the ring).
    events: broadcast::Sender<Weak<Exchange>>,
    /// Set when the proxy shuts down: event streams end, so that their connections drain.
    stopped: watch::Sender<bool>,
    /// Each tenant's credentials, hidden in what is kept should an API echo one. Replaced when a
    /// reload changes the tenants.
    tenants: ArcSwap<Vec<TenantSecrets>>,
}

struct Ring {
    entries: VecDeque<Arc<Exchange>>,
    capacity: usize,
    next_seq: u64,
}

impl Inspector {
    pub fn new(settings: InspectSettings, tenants: Vec<TenantSecrets>) -> Arc<Inspector> {
        let inspector = Inspector {
            mode: AtomicU8::new(0),
            ring: Mutex::new(Ring { entries: VecDeque::new(), capacity: 0, next_seq: 1 }),
            minutes: Mutex::default(),
            events: broadcast::channel(EVENTS_BACKLOG).0,
            stopped: watch::Sender::new(false),
            tenants: ArcSwap::from_pointee(tenants),
        };
        inspector.configure(settings);
        Arc::new(inspector)
    }

    /// Applies new settings (a reload): a smaller ring drops its oldest entries at once, `off`
    /// drops them all.
    pub fn configure(&self, settings: InspectSettings) {
        let capacity = if settings.mode == InspectMode::Off { 0 } else { settings.entries };
        self.mode.store(settings.mode as u8, Ordering::Relaxed);
        let mut ring = self.ring.lock().expect("not poisoned");
        ring.capacity = capacity;
        ring.entries.truncate(capacity);
        ring.entries.shrink_to(capacity);
    }

    pub fn mode(&self) -> InspectMode {
        InspectMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Starts watching a request that arrives now with these headers; `None` when the inspector
    /// is off, at the cost of one atomic load.
    pub fn capture(self: &Arc<Self>, request_headers: &HeaderMap) -> Option<Box<Capture>> {
        let mode = self.mode();
        (mode != InspectMode::Off)
            .then(|| Box::new(Capture::new(self.clone(), mode, SystemTime::now(), request_headers)))
    }

    /// Keeps a finished exchange and tells the subscribers.
    fn push(&self, mut entry: Exchange, at: SystemTime) {
        self.minutes.lock().expect("not poisoned").count(at, entry.status >= 400);
        let entry = {
            let mut ring = self.ring.lock().expect("not poisoned");
            if ring.capacity == 0 {
                return;
            }
            entry.seq = ring.next_seq;
            ring.next_seq += 1;
            let entry = Arc::new(entry);
            if ring.entries.len() >= ring.capacity {
                ring.entries.pop_back();
            }
            ring.entries.push_front(entry.clone());
            entry
        };
        // No subscriber is no error.
        let _ = self.events.send(Arc::downgrade(&entry));
    }

    /// The tenants' credentials after a reload.
    pub fn set_tenants(&self, tenants: Vec<TenantSecrets>) {
        self.tenants.store(Arc::new(tenants));
    }

    /// The credentials to hide in an exchange with `tenant` (any, when `None`): the tokens
    /// injected now or until the last refresh (a request sent with the previous token may end
    /// after a refresh replaced it), and the tenants' configured secrets. Only the tenant served:
    /// its API saw no other's.
    pub(super) fn snapshot(&self, tenant: Option<&str>) -> Secrets {
        let tenants = self.tenants.load_full();
        let mut tokens = smallvec::SmallVec::new();
        for t in tenants.iter().filter(|t| tenant.is_none() || t.tenant.as_deref() == tenant) {
            tokens.extend([t.tokens.current(), t.tokens.previous()].into_iter().flatten());
        }
        Secrets { tokens, tenants }
    }

    /// Up to `limit` exchanges, newest first, as they are shown.
    pub fn recent(&self, limit: usize) -> Vec<Entry> {
        let kept: Vec<Arc<Exchange>> =
            self.ring.lock().expect("not poisoned").entries.iter().take(limit).cloned().collect();
        kept.iter().map(|exchange| exchange.entry()).collect()
    }

    /// `/_proxy/requests`: up to `limit` exchanges, newest first, as a JSON array written one
    /// entry at a time as the reader takes it. An entry the ring lets go of before its turn is
    /// left out: a slow reader holds no more than the ring does, however many read at once.
    /// `only`: tenant `only`'s exchanges alone (on its own listener).
    pub fn listing(&self, limit: usize, only: Option<&str>) -> axum::body::Body {
        let ring = self.ring.lock().expect("not poisoned");
        let entries: Vec<Weak<Exchange>> =
            ring.entries.iter().filter(|e| e.shown_to(only)).take(limit).map(Arc::downgrade).collect();
        drop(ring);
        let pieces = futures_util::stream::unfold(Some((entries.into_iter(), true)), |state| async move {
            let (mut rest, first) = state?;
            let open = if first { b'[' } else { b',' };
            for entry in rest.by_ref() {
                if let Some(entry) = entry.upgrade() {
                    let mut piece = vec![open];
                    serde_json::to_writer(&mut piece, &entry.entry()).expect("an entry serialises");
                    return Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(piece)), Some((rest, false))));
                }
            }
            let end: &'static [u8] = if first { b"[]" } else { b"]" };
            Some((Ok(bytes::Bytes::from_static(end)), None))
        });
        axum::body::Body::from_stream(pieces)
    }

    /// `/_proxy/events`: the exchanges as they finish, from now on, until the proxy shuts down;
    /// `only`: tenant `only`'s alone.
    pub fn events(&self, only: Option<Arc<str>>) -> axum::body::Body {
        events::stream(self.events.subscribe(), self.stopped.subscribe(), only)
    }

    /// Ends the event streams, for a shutdown.
    pub fn close(&self) {
        self.stopped.send_replace(true);
    }

    /// The inspector's part of `/_proxy/status`: its settings, and requests and errors (status
    /// 400 and above) in each of the last 15 minutes, oldest first. `only`: as seen on tenant
    /// `only`'s own listener, whose exchanges alone are counted; the minutes, counted for all
    /// tenants together, are left out there.
    pub fn status(&self, only: Option<&str>) -> serde_json::Value {
        let ring = self.ring.lock().expect("not poisoned");
        let (kept, capacity) = (ring.entries.iter().filter(|e| e.shown_to(only)).count(), ring.capacity);
        drop(ring);
        let mut status = serde_json::json!({
            "mode": self.mode().as_str(),
            "entries": capacity,
            "kept": kept,
        });
        if only.is_none() {
            let minutes = self.minutes.lock().expect("not poisoned").last(SystemTime::now());
            status["per_minute"] = serde_json::json!(minutes);
        }
        status
    }
}

#[cfg(test)]
mod tests;
