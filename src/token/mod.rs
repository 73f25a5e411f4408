//! The bearer token every forwarded request carries: where it lives, how requests read it, and the
//! one task that fetches it.
//!
//! Invariants:
//! - only the refresher task talks to the token service, so requests never fetch tokens and
//!   concurrent requests cannot stampede the service (single flight by construction);
//! - requests read the current token from an `ArcSwap` without locking;
//! - a token is injected only while it is usable (see [`schedule::usable_for`]); a failing refresh
//!   keeps the old token in service until then.

mod fetch;
mod refresher;
pub mod schedule;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use fetch::{Credentials, FetchError, Grant, TokenClient, parse_response, request};

/// Anything that can produce a grant. The HTTP client in production; scripted sources in tests.
pub trait TokenSource: Send + Sync + 'static {
    fn fetch(&self) -> impl Future<Output = Result<Grant, FetchError>> + Send;
}

impl TokenSource for TokenClient {
    fn fetch(&self) -> impl Future<Output = Result<Grant, FetchError>> + Send {
        self.request()
    }
}

/// A token ready to inject. The `Authorization` value is built once per token, not per request,
/// and is marked sensitive so no `Debug` of a header map shows it.
pub struct Token {
    header: HeaderValue,
    generation: u64,
    usable_until: Instant,
}

impl Token {
    fn new(grant: &Grant, generation: u64, now: Instant) -> Option<Token> {
        use secrecy::ExposeSecret;
        let mut header = HeaderValue::try_from(format!("Bearer {}", grant.access_token.expose_secret())).ok()?;
        header.set_sensitive(true);
        let usable_until = now.checked_add(schedule::usable_for(grant.lifetime))?;
        Some(Token { header, generation, usable_until })
    }

    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Counts tokens fetched since start; tells a stale token from a fresh one after a 401.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn usable_until(&self) -> Instant {
        self.usable_until
    }

    pub fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &"***")
            .field("generation", &self.generation)
            .field("usable_until", &self.usable_until)
            .finish()
    }
}

/// A request, from a caller whose token the upstream rejected, for a newer one.
struct Force {
    rejected_generation: u64,
    reply: oneshot::Sender<bool>,
}

struct Shared {
    current: ArcSwapOption<Token>,
    /// The token `current` replaced: requests sent with it may still be answering.
    previous: ArcSwapOption<Token>,
    /// Bumped to the new generation whenever a token is stored, to wake waiting requests.
    updates: watch::Sender<u64>,
    /// The last generation handed out.
    generation: AtomicU64,
    stats: Mutex<TokenStats>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        let (updates, _) = watch::channel(0);
        Arc::new(Shared {
            current: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            updates,
            generation: AtomicU64::new(0),
            stats: Mutex::new(TokenStats::default()),
        })
    }

    /// Stores a token from `grant` as the next generation; `None` when it cannot be sent.
    fn store(&self, grant: &Grant) -> Option<Arc<Token>> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let token = Arc::new(Token::new(grant, generation, Instant::now())?);
        self.previous.store(self.current.swap(Some(token.clone())));
        self.updates.send_replace(generation);
        Some(token)
    }

    fn record(&self, outcome: Result<(), String>) {
        let mut stats = self.stats.lock().expect("not poisoned");
        match outcome {
            Ok(()) => {
                stats.refreshed += 1;
                stats.consecutive_failures = 0;
                stats.last_refresh = Some(SystemTime::now());
            }
            Err(error) => {
                stats.failed += 1;
                stats.consecutive_failures += 1;
                stats.last_error = Some((SystemTime::now(), error));
                drop(stats);
                // Wakes whoever waits for the first outcome, which this is too.
                self.updates.send_modify(|_| ());
            }
        }
    }
}

/// What the token service has done so far, for metrics and `/_proxy/status`.
#[derive(Debug, Clone, Default)]
pub struct TokenStats {
    pub refreshed: u64,
    pub failed: u64,
    pub consecutive_failures: u32,
    pub last_refresh: Option<SystemTime>,
    /// When and why the last attempt failed (an error code or status, never a body).
    pub last_error: Option<(SystemTime, String)>,
}

/// The requests' side of the token: cheap to clone, lock-free to read.
#[derive(Clone)]
pub struct Tokens {
    shared: Arc<Shared>,
    force: mpsc::Sender<Force>,
}

impl Tokens {
    /// The current token if it may still be injected. Lock-free.
    pub fn usable(&self) -> Option<Arc<Token>> {
        self.shared.current.load_full().filter(|t| t.is_usable())
    }

    /// The current token, waiting up to `max` for one when none is usable (at start-up, or while
    /// the token service is down after the last token ran out).
    pub async fn wait_usable(&self, max: Duration) -> Option<Arc<Token>> {
        if let Some(token) = self.usable() {
            return Some(token);
        }
        let mut updates = self.shared.updates.subscribe();
        let wait = async {
            loop {
                if let Some(token) = self.usable() {
                    return token;
                }
                if updates.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(max, wait).await.ok()
    }

    /// Waits up to `max` for the refresher's first outcome: `Ok` once a token is usable, the
    /// error of a failed attempt otherwise (a reload's new credentials are checked this way).
    pub async fn first_outcome(&self, max: Duration) -> Result<(), String> {
        let mut updates = self.shared.updates.subscribe();
        let wait = async {
            loop {
                if self.usable().is_some() {
                    return Ok(());
                }
                if let Some(error) = self.failure() {
                    return Err(error);
                }
                if updates.changed().await.is_err() {
                    return Err("the token refresher stopped".to_owned());
                }
            }
        };
        let waited = tokio::time::timeout(max, wait).await;
        waited.unwrap_or_else(|_| Err(format!("no answer within {} s", max.as_secs())))
    }

    /// After the upstream rejected `rejected`, asks the refresher for a newer token and waits up
    /// to `max` for it. Many callers rejecting the same token cause one refresh; a refresher that
    /// refreshed moments ago for the same reason declines, and then this returns `None`.
    pub async fn replace_rejected(&self, rejected: &Token, max: Duration) -> Option<Arc<Token>> {
        let (reply, answer) = oneshot::channel();
        let force = Force { rejected_generation: rejected.generation, reply };
        self.force.send(force).await.ok()?;
        match tokio::time::timeout(max, answer).await {
            Ok(Ok(true)) => self.usable().filter(|t| t.generation > rejected.generation),
            _ => None,
        }
    }

    /// Tells the refresher the upstream rejected `rejected`, without waiting: for requests that
    /// cannot be replayed, so that the next request finds a fresh token.
    pub fn report_rejected(&self, rejected: &Token) {
        let (reply, _) = oneshot::channel();
        let _ = self.force.try_send(Force { rejected_generation: rejected.generation, reply });
    }

    /// Why no token may be had, when the last attempt failed: its error (a code, a status or a
    /// connection failure, never a body, the secret or a token). For callers' 503 answers.
    pub fn failure(&self) -> Option<String> {
        let stats = self.shared.stats.lock().expect("not poisoned");
        if stats.consecutive_failures == 0 {
            return None;
        }
        stats.last_error.as_ref().map(|(_, error)| error.clone())
    }

    pub fn stats(&self) -> TokenStats {
        self.shared.stats.lock().expect("not poisoned").clone()
    }

    /// The current token whether usable or not (for status reports; never its value).
    pub fn current(&self) -> Option<Arc<Token>> {
        self.shared.current.load_full()
    }

    /// The token the current one replaced, which requests still being answered may have been
    /// sent with (for the inspector, which hides it; never its value elsewhere).
    pub fn previous(&self) -> Option<Arc<Token>> {
        self.shared.previous.load_full()
    }

    /// A store holding one fixed credential that never expires and is never refreshed (HTTP
    /// Basic for on-premises tenants). Rejections are passed on; there is nothing to refresh.
    pub fn fixed(header: HeaderValue) -> Tokens {
        let (force, _) = mpsc::channel(1);
        let tokens = Tokens { shared: Shared::new(), force };
        tokens.set_fixed(header);
        tokens
    }

    /// Replaces the fixed credential (a reload with a new password).
    pub fn set_fixed(&self, mut header: HeaderValue) {
        header.set_sensitive(true);
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        // Far enough never to matter, near enough not to overflow an `Instant`.
        let usable_until = now + Duration::from_secs(10 * 365 * 24 * 3600);
        let token = Token { header, generation, usable_until };
        self.shared.previous.store(self.shared.current.swap(Some(Arc::new(token))));
        self.shared.updates.send_replace(generation);
    }

    /// Creates the store and its refresher. The refresher runs until every `Tokens` is dropped;
    /// the caller owns its handle.
    pub fn start<S: TokenSource>(source: S, forced_interval: Duration) -> (Tokens, tokio::task::JoinHandle<()>) {
        Tokens::start_spread(source, forced_interval, 0.0)
    }

    /// The same, refreshing earlier by `spread` (in `[0, 1)`) of the window
    /// [`schedule::refresh_in_spread`] allows, so that tenants started together do not all refresh
    /// in the same minute.
    pub fn start_spread<S: TokenSource>(
        source: S,
        forced_interval: Duration,
        spread: f64,
    ) -> (Tokens, tokio::task::JoinHandle<()>) {
        let shared = Shared::new();
        let (force, forced) = mpsc::channel(1024);
        let task = refresher::Refresher::new(source, shared.clone(), forced, forced_interval, spread);
        let handle = tokio::spawn(task.run());
        (Tokens { shared, force }, handle)
    }
}

#[cfg(test)]
mod tests;
