//! The refresher: the one task that fetches tokens, on schedule, after failures, and when the
//! upstream rejects a token. It never exits on an error; it stops only when nobody can use a token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{Force, Shared, TokenSource, schedule};

pub(super) struct Refresher<S> {
    source: S,
    shared: Arc<Shared>,
    forced: mpsc::Receiver<Force>,
    forced_interval: Duration,
    last_forced: Option<Instant>,
    failures: u32,
    /// Where in the refresh window this refresher's tokens are replaced.
    spread: f64,
}

impl<S: TokenSource> Refresher<S> {
    pub(super) fn new(
        source: S,
        shared: Arc<Shared>,
        forced: mpsc::Receiver<Force>,
        forced_interval: Duration,
        spread: f64,
    ) -> Self {
        Refresher { source, shared, forced, forced_interval, last_forced: None, failures: 0, spread }
    }

    pub(super) async fn run(mut self) {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                force = self.forced.recv() => {
                    let Some(force) = force else { return };
                    let refreshed = self.on_rejected(force.rejected_generation, &mut next).await;
                    let _ = force.reply.send(refreshed);
                }
                () = sleep_until(next) => next = self.attempt().await,
            }
        }
    }

    /// Handles "the upstream rejected token N". Returns whether a newer usable token now exists.
    async fn on_rejected(&mut self, rejected: u64, next: &mut Instant) -> bool {
        let current = self.shared.current.load();
        if let Some(token) = current.as_ref().filter(|t| t.generation != rejected) {
            return token.is_usable();
        }
        let now = Instant::now();
        if self.last_forced.is_some_and(|at| now < at + self.forced_interval) {
            tracing::debug!(generation = rejected, "token rejected again; forced refresh rate limit holds");
            return false;
        }
        tracing::info!(generation = rejected, "upstream rejected the token; refreshing early");
        self.last_forced = Some(now);
        *next = self.attempt().await;
        self.shared.current.load().as_ref().is_some_and(|t| t.generation != rejected && t.is_usable())
    }

    /// Fetches once; stores the token on success. Returns when to try next.
    async fn attempt(&mut self) -> Instant {
        let started = Instant::now();
        let result = self.source.fetch().await;
        let now = Instant::now();
        let latency_ms = now.duration_since(started).as_millis() as u64;
        let stored = result.and_then(|grant| {
            let token = self
                .shared
                .store(&grant)
                .ok_or(super::FetchError::BadResponse("access_token cannot be sent as a header"))?;
            Ok((token, grant.lifetime))
        });
        self.shared.record(stored.as_ref().map(|_| ()).map_err(ToString::to_string));
        match stored {
            Ok((token, lifetime)) => {
                self.failures = 0;
                let refresh_in = schedule::refresh_in_spread(lifetime, self.spread);
                tracing::info!(
                    generation = token.generation,
                    lifetime_s = lifetime.as_secs(),
                    refresh_in_s = refresh_in.as_secs(),
                    latency_ms,
                    "token obtained"
                );
                now + refresh_in
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let delay = schedule::backoff(self.failures, fastrand::f64());
                let current = self.shared.current.load();
                let still_usable_s =
                    current.as_ref().filter(|t| t.is_usable()).map(|t| t.usable_until.duration_since(now).as_secs());
                tracing::warn!(
                    %error,
                    failures = self.failures,
                    retry_in_ms = delay.as_millis() as u64,
                    still_usable_s,
                    latency_ms,
                    "token refresh failed"
                );
                now + delay
            }
        }
    }
}
