//! Caller connections within the open-file limit: the process's limit raised at start, a cap
//! below it with a reserve for everything else the proxy opens, and shedding of idle keep-alive
//! connections when the cap is reached.
//!
//! A connection holds one permit of a semaphore for its whole life; one just accepted waits for it:
//! when none is free, the connection idle the longest (between two requests, or never having sent
//! one) is asked to close, and its permit goes to the caller just accepted. While every
//! connection is busy with a request, that caller waits for room and accepting pauses, so the
//! next ones wait in the kernel's backlog: every request is bounded in time (header, body-pause
//! and upstream timeouts), so one frees up.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// File descriptors kept free for upstream connections, the token service, the configuration
/// and certificate files, and the listeners: an eighth of the limit, at least 64, at most half.
pub fn reserve(open_files: u64) -> u64 {
    (open_files / 8).max(64).min(open_files / 2)
}

/// The connection cap for an open-file limit.
pub fn automatic_cap(open_files: u64) -> usize {
    let cap = open_files - reserve(open_files);
    usize::try_from(cap).unwrap_or(usize::MAX).clamp(1, MAX_CAP)
}

/// The most permits a semaphore can hand out at once.
const MAX_CAP: usize = u32::MAX as usize;

/// The soft open-file limit, if the system has one.
pub fn open_file_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft).filter(|&soft| soft != rlimit::INFINITY)
}

/// Raises the soft open-file limit to the hard one, as the Go runtime does for every program:
/// the common soft default of 1024 is far below what a proxy with many callers needs, and the
/// hard limit is what the administrator allowed.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// The caller connections of every listener together.
///
/// A request marks only its own connection busy and idle again (its own lock, uncontended): the
/// connections as a whole are looked at by the sweep (every quarter of the header timeout) and
/// when the house is full, each going through them all. A request is thus two small critical
/// sections and a clock read, however many connections there are.
pub struct Connections {
    permits: Arc<Semaphore>,
    cap: usize,
    /// Every open connection, by when it was opened.
    open: Mutex<BTreeMap<u64, Weak<Slot>>>,
    /// Numbers connections as they open and as they become idle: the lower, the earlier.
    next: AtomicU64,
    /// Accepts waiting on a full house for a connection to become idle, woken by `became_idle`.
    waiting: AtomicUsize,
    became_idle: Notify,
    pub counts: Arc<Counts>,
}

/// Connection figures for the metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub open: AtomicU64,
    pub shed: AtomicU64,
    pub cap: AtomicU64,
}

impl Connections {
    pub fn new(cap: usize, counts: Arc<Counts>) -> Arc<Connections> {
        let cap = cap.clamp(1, MAX_CAP);
        counts.cap.store(cap as u64, Ordering::Relaxed);
        Arc::new(Connections {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            open: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            became_idle: Notify::new(),
            counts,
        })
    }

    /// Waits for room for one more connection, shedding the longest-idle one when full.
    pub async fn admit(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return permit;
            }
            let became_idle = self.became_idle.notified();
            tokio::pin!(became_idle);
            // Counted before the connections are looked at, and each marks itself idle before it
            // looks at the count (both in one total order): a connection that becomes idle now is
            // either found below or wakes this wait. Uncounted when the wait ends, however it
            // ends (an accept dropped at shutdown too).
            let waiting = Waiting::count(&self.waiting);
            became_idle.as_mut().enable();
            if self.shed_one() {
                drop(waiting);
                // It closes at once (or, had it just started a request, after answering it).
                return self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => return permit.expect("the semaphore is never closed"),
                () = became_idle => {}
            }
        }
    }

    /// Every open connection, for a look at each.
    fn all(&self) -> Vec<Arc<Slot>> {
        self.open.lock().expect("not poisoned").values().filter_map(Weak::upgrade).collect()
    }

    fn shed_one(&self) -> bool {
        let all = self.all();
        loop {
            let idle = all.iter().filter_map(|slot| Some((slot.state.lock().expect("not poisoned").idle?.0, slot)));
            let Some((order, oldest)) = idle.min_by_key(|(order, _)| *order) else {
                return false;
            };
            // Taken out of the idle ones, as the sweep takes an expired one: told once. Unless it
            // started a request (or became idle anew) since it was looked at: then look again.
            let mut state = oldest.state.lock().expect("not poisoned");
            if state.idle.is_none_or(|(still, _)| still != order) {
                continue;
            }
            state.idle = None;
            drop(state);
            oldest.shed.notify_one();
            let shed = self.counts.shed.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(cap = self.cap, shed, "connection cap reached: closing the longest-idle connection");
            return true;
        }
    }

    /// Registers an admitted connection; it starts idle.
    pub fn open(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Arc<Slot> {
        self.counts.open.fetch_add(1, Ordering::Relaxed);
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            connections: self.clone(),
            key,
            shed: Notify::new(),
            expired: Notify::new(),
            state: Mutex::new(SlotState { requests: 0, idle: None }),
            _permit: permit,
        });
        self.open.lock().expect("not poisoned").insert(key, Arc::downgrade(&slot));
        slot.set_idle();
        slot
    }

    /// Closes connections idle for longer than `header_timeout` (between two requests, or never
    /// having completed one), checking every quarter of it. One coarse sweep for all connections
    /// costs less than a timer armed and disarmed on every request; a connection is closed
    /// between `header_timeout` and a quarter more after its last answer.
    pub async fn sweep(self: Arc<Self>, header_timeout: Duration) {
        let every = (header_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for slot in self.expired(Instant::now(), header_timeout) {
                slot.expired.notify_one();
            }
        }
    }

    /// Takes the connections idle since before `now - timeout` out of the idle ones.
    fn expired(&self, now: Instant, timeout: Duration) -> Vec<Arc<Slot>> {
        let mut all = self.all();
        all.retain(|slot| {
            let mut state = slot.state.lock().expect("not poisoned");
            let expired = state.idle.is_some_and(|(_, since)| now.saturating_duration_since(since) >= timeout);
            if expired {
                state.idle = None;
            }
            expired
        });
        all
    }

    /// Waits until every connection has closed.
    pub async fn closed(&self) {
        let _all = self.permits.acquire_many(self.cap as u32).await;
    }
}

/// One accept waiting on a full house, counted while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One admitted connection.
pub struct Slot {
    connections: Arc<Connections>,
    /// Its place among the open connections.
    key: u64,
    /// Notified when the connection should close as soon as it is between requests.
    pub shed: Notify,
    /// Notified when the connection has been idle, or its request head incomplete, for longer
    /// than the header timeout: it closes at once.
    pub expired: Notify,
    state: Mutex<SlotState>,
    _permit: OwnedSemaphorePermit,
}

struct SlotState {
    /// Requests whose responses are not yet fully handed to the connection.
    requests: u32,
    /// While idle (and neither expired nor shed since): when it became idle, numbered.
    idle: Option<(u64, Instant)>,
}

impl Slot {
    /// Marks the connection busy until the returned guard is dropped (with the response body).
    pub fn busy(self: &Arc<Self>) -> Busy {
        let mut state = self.state.lock().expect("not poisoned");
        state.requests += 1;
        state.idle = None;
        drop(state);
        Busy(self.clone())
    }

    /// Starts the connection's idle time again from now: after a TLS handshake, which had a limit
    /// of its own, the request head gets the whole header timeout.
    pub fn idle_from_now(self: &Arc<Self>) {
        drop(self.busy());
    }

    fn set_idle(&self) {
        self.done(|_| true);
    }

    /// Marks the connection idle from now if `now_idle` says so of its state (in the same
    /// critical section: a request starting meanwhile cannot be overtaken).
    fn done(&self, now_idle: impl FnOnce(&mut SlotState) -> bool) {
        let idle = {
            let mut state = self.state.lock().expect("not poisoned");
            let idle = now_idle(&mut state);
            if idle {
                state.idle = Some((self.connections.next.fetch_add(1, Ordering::Relaxed), Instant::now()));
            }
            idle
        };
        // After marking itself idle (see `admit`).
        if idle && self.connections.waiting.load(Ordering::SeqCst) > 0 {
            self.connections.became_idle.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open.lock().expect("not poisoned").remove(&self.key);
        self.connections.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held while a request is being handled and its response body sent.
pub struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.done(|state| {
            state.requests -= 1;
            state.requests == 0
        });
    }
}

/// A response body that keeps its connection marked busy until the body is done with.
pub struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, busy: Busy) -> Self {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Lets one line through per interval and counts the rest, so that a failure repeating many
/// times a second (accept failing for want of file descriptors) neither floods the log nor
/// goes unseen.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle { interval, last: None, suppressed: 0 }
    }

    /// At `now`: `Some(lines suppressed since the last one)` if this one is to be written.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_an_eighth_at_least_64_at_most_half() {
        assert_eq!(automatic_cap(1024), 896);
        assert_eq!(automatic_cap(256), 192);
        assert_eq!(automatic_cap(65536), 57344);
        assert_eq!(automatic_cap(100), 50);
        assert_eq!(automatic_cap(1), 1);
    }

    #[test]
    fn one_accept_failure_line_a_second_with_the_count_of_the_rest() {
        let start = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(1));
        assert_eq!(throttle.allow(start), Some(0));
        let allowed: Vec<_> = (1..=25).filter_map(|i| throttle.allow(start + Duration::from_millis(i * 100))).collect();
        assert_eq!(allowed, vec![9, 9]);
    }

    #[tokio::test]
    async fn connections_idle_past_the_header_timeout_expire_and_busy_ones_never() {
        let connections = Connections::new(8, Arc::default());
        let a = connections.open(connections.admit().await);
        let b = connections.open(connections.admit().await);
        let _busy_b = b.busy();
        let timeout = Duration::from_secs(30);
        let opened = Instant::now();
        assert!(connections.expired(opened, timeout).is_empty(), "nothing expires before its time");
        let later = opened + Duration::from_secs(31);
        let expired = connections.expired(later, timeout);
        assert_eq!(expired.len(), 1);
        assert!(Arc::ptr_eq(&expired[0], &a), "the idle one, not the busy one");
        assert!(connections.expired(later, timeout).is_empty(), "each expires once");
        // Idle again after an answer: its time counts from then.
        drop(_busy_b);
        assert!(connections.expired(Instant::now(), timeout).is_empty());
        assert_eq!(connections.expired(Instant::now() + Duration::from_secs(31), timeout).len(), 1);
    }

    #[tokio::test]
    async fn a_full_house_sheds_the_longest_idle_connection_and_never_a_busy_one() {
        let connections = Connections::new(3, Arc::default());
        let a = connections.open(connections.admit().await);
        let b = connections.open(connections.admit().await);
        let c = connections.open(connections.admit().await);
        let _busy_a = a.busy();
        let busy_b = b.busy();
        drop(busy_b); // b is idle again, after c
        let admit = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        tokio::time::timeout(Duration::from_secs(5), c.shed.notified()).await.expect("c, idle longest, is shed");
        assert!(!admit.is_finished(), "admitted before c closed");
        drop(c);
        let d = connections.open(admit.await.unwrap());
        assert_eq!(connections.counts.shed.load(Ordering::Relaxed), 1);
        assert_eq!(connections.counts.open.load(Ordering::Relaxed), 3);
        drop((b, d));
        assert_eq!(connections.counts.open.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn with_every_connection_busy_an_accept_waits_until_one_becomes_idle() {
        let connections = Connections::new(1, Arc::default());
        let a = connections.open(connections.admit().await);
        let busy = a.busy();
        let admit = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!admit.is_finished());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), a.shed.notified()).await.expect("shed once idle");
        drop(a);
        let _permit = tokio::time::timeout(Duration::from_secs(5), admit).await.expect("admitted").unwrap();
    }

    /// Connections turning busy and idle on other threads while new callers wait on a full
    /// house: every wait ends (a connection that became idle either is found or wakes it), and
    /// only idle connections are shed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_house_under_churn_lets_every_caller_in() {
        let connections = Connections::new(4, Arc::default());
        let mut slots = Vec::new();
        for _ in 0..4 {
            slots.push(connections.open(connections.admit().await));
        }
        for _ in 0..200 {
            let churn: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let slot = slot.clone();
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            let busy = slot.busy();
                            tokio::task::yield_now().await;
                            drop(busy);
                        }
                    })
                })
                .collect();
            let admit = tokio::spawn({
                let connections = connections.clone();
                async move { connections.admit().await }
            });
            // The shed one closes once told; until then the caller waits.
            let told = slots.iter().map(|slot| {
                let slot = slot.clone();
                Box::pin(async move { slot.shed.notified().await })
            });
            let (_, shed, _) = tokio::time::timeout(Duration::from_secs(10), futures_util::future::select_all(told))
                .await
                .expect("an idle connection is shed");
            for task in churn {
                task.await.unwrap();
            }
            drop(slots.remove(shed));
            let permit = tokio::time::timeout(Duration::from_secs(10), admit).await.expect("admitted").unwrap();
            slots.push(connections.open(permit));
        }
        assert_eq!(connections.counts.shed.load(Ordering::Relaxed), 200);
    }

    #[tokio::test]
    async fn an_accept_given_up_while_waiting_is_no_longer_counted() {
        let connections = Connections::new(1, Arc::default());
        let a = connections.open(connections.admit().await);
        let _busy = a.busy();
        let admit = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        while connections.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        admit.abort();
        let _ = admit.await;
        assert_eq!(connections.waiting.load(Ordering::SeqCst), 0);
    }
}
