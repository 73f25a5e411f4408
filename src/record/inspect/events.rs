//! `/_proxy/events`: the inspector's entries as Server-Sent Events, as they finish.

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::{Entry, Exchange};

/// A comment line this often keeps proxies and browsers from timing the stream out, and lets
/// the proxy notice a page that went away.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event stream: a `retry` hint, then one `request` event per entry, its `id` the entry's
/// `seq`. A subscriber that falls behind skips what it missed, and what the ring no longer
/// holds (the page fetches `/_proxy/requests` again when it reconnects); the stream ends when the
/// proxy shuts down.
pub fn stream(
    events: broadcast::Receiver<Weak<Exchange>>,
    stopped: watch::Receiver<bool>,
    only: Option<Arc<str>>,
) -> Body {
    let hello = futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"retry: 2000\n\n")) });
    let entries = futures_util::stream::unfold((events, stopped, only), |(mut events, mut stopped, only)| async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return None,
                next = tokio::time::timeout(KEEP_ALIVE, events.recv()) => next,
            };
            let chunk = match next {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Ok(entry)) => match entry.upgrade() {
                    Some(exchange) if exchange.shown_to(only.as_deref()) => Bytes::from(event(&exchange.entry())),
                    _ => continue,
                },
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok(chunk), (events, stopped, only)));
        }
    });
    Body::from_stream(futures_util::StreamExt::chain(hello, entries))
}

/// One entry as an event; its JSON holds no raw line break, so it is one `data` line.
pub fn event(entry: &Entry) -> String {
    let json = serde_json::to_string(entry).expect("an entry serialises");
    format!("id: {}\nevent: request\ndata: {json}\n\n", entry.seq)
}
