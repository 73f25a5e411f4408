//! Pacing outbound requests against the API's limits: at most so many at once, at most so many a
//! second, and after a 429 no new request until the API's `Retry-After` has passed. Callers wait
//! in line for a bounded time; past it they get an answer instead of waiting on.
//!
//! One pacer serves all callers of a proxy, so a burst of scripts meets the limit once, not once
//! per script. It is per process: replicas each pace on their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The pacer's settings; all off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerSettings {
    /// Upstream requests in flight at once (until their response body ends); `None` for any.
    pub max_concurrent: Option<usize>,
    /// Upstream requests started a second; `None` for any.
    pub rate: Option<u32>,
    /// The longest a request waits in line before it is answered without being forwarded.
    pub max_wait: Duration,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The line was too long for `max_wait`.
    Busy,
    /// The API asked for a pause longer than `max_wait`; this many seconds remain.
    RateLimited { retry_after_s: u64 },
}

pub struct Pacer {
    settings: PacerSettings,
    slots: Option<Arc<Semaphore>>,
    /// The next instant a request may start under the rate limit.
    next_start: Mutex<Instant>,
    /// Until when the API asked for no requests, as milliseconds since `epoch`; 0 for none.
    hold_until_ms: AtomicU64,
    epoch: Instant,
    waiting: AtomicI64,
}

/// Held while a request is with the upstream: its place among `max_concurrent`.
pub struct Pass(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Pacer {
    pub fn new(settings: PacerSettings) -> Pacer {
        Pacer {
            settings,
            slots: settings.max_concurrent.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            next_start: Mutex::new(Instant::now()),
            hold_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            waiting: AtomicI64::new(0),
        }
    }

    /// A pacer with new settings that keeps this one's hold after a 429 (for a reload).
    pub fn with_settings(&self, settings: PacerSettings) -> Pacer {
        let pacer = Pacer { epoch: self.epoch, ..Pacer::new(settings) };
        pacer.hold_until_ms.store(self.hold_until_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        pacer
    }

    pub fn settings(&self) -> PacerSettings {
        self.settings
    }

    /// Requests waiting in line now.
    pub fn waiting(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long new requests are still held after a 429.
    pub fn held_for(&self) -> Duration {
        let until = self.hold_until_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(until.saturating_sub(now))
    }

    /// Waits for this request's turn, at most `max_wait` in all.
    pub async fn admit(&self) -> Result<Pass, Refusal> {
        let held = self.held_for();
        if held > self.settings.max_wait {
            return Err(Refusal::RateLimited { retry_after_s: held.as_secs_f64().ceil() as u64 });
        }
        if held.is_zero() && self.slots.is_none() && self.settings.rate.is_none() {
            return Ok(Pass(None));
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.settings.max_wait, self.line(held)).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        result.map_err(|_| Refusal::Busy)
    }

    async fn line(&self, held: Duration) -> Pass {
        if !held.is_zero() {
            tokio::time::sleep(held).await;
        }
        if let Some(rate) = self.settings.rate.filter(|r| *r > 0) {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let start = {
                let mut next = self.next_start.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        match &self.slots {
            Some(slots) => Pass(Some(slots.clone().acquire_owned().await.expect("never closed"))),
            None => Pass(None),
        }
    }

    /// Notes a 429 from the upstream: new requests are held until its `Retry-After` (seconds or
    /// an HTTP date; 1 s when absent or unreadable).
    pub fn saw_429(&self, retry_after: Option<&str>) {
        let wait = retry_after.and_then(parse_retry_after).unwrap_or(Duration::from_secs(1));
        let until = (self.epoch.elapsed() + wait).as_millis() as u64;
        self.hold_until_ms.fetch_max(until, Ordering::Relaxed);
        tracing::warn!(retry_after_s = wait.as_secs(), "upstream answered 429; holding new requests");
    }
}

/// `Retry-After` as a delay: whole seconds, or an HTTP date from now. Capped at an hour.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_concurrent: Option<usize>, rate: Option<u32>, max_wait_ms: u64) -> PacerSettings {
        PacerSettings { max_concurrent, rate, max_wait: Duration::from_millis(max_wait_ms) }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = parse_retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_the_line_gives_up_in_time() {
        let pacer = Pacer::new(settings(Some(2), None, 100));
        let a = pacer.admit().await.unwrap();
        let _b = pacer.admit().await.unwrap();
        let started = Instant::now();
        assert!(matches!(pacer.admit().await, Err(Refusal::Busy)));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(a);
        assert!(pacer.admit().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_starts() {
        let pacer = Pacer::new(settings(None, Some(10), 10_000));
        let started = Instant::now();
        for _ in 0..5 {
            pacer.admit().await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_new_requests_wait_or_are_told_to() {
        let pacer = Pacer::new(settings(None, None, 3000));
        pacer.saw_429(Some("2"));
        let started = Instant::now();
        pacer.admit().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2), "held until Retry-After");
        pacer.saw_429(Some("10"));
        assert_eq!(pacer.admit().await.err(), Some(Refusal::RateLimited { retry_after_s: 10 }));
        let reloaded = pacer.with_settings(settings(Some(1), None, 3000));
        assert!(reloaded.held_for() > Duration::from_secs(9), "a reload keeps the hold");
    }
}
