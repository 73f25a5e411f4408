//! The cache for reads (`[cache]`): answers of `GET`s under a rule kept in memory, bounded by
//! `max_bytes` with size-aware eviction (`quick_cache`), one upstream request for concurrent
//! misses of one key, stale answers while the API fails, and purges when a write succeeds.
//!
//! It stands after the policy's decision and before the forwarder: a denied request is never
//! answered from here, and what is kept is what the forwarder made of the API's answer (URLs
//! already pointing at the proxy, so the key carries the proxy's own address as the caller named
//! it). Only `200` answers are kept, so a 403's `x-uem-proxy-permission` never is; the request id
//! is never kept (every answer carries its own request's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AGE, CACHE_CONTROL, CONTENT_LENGTH, HOST, HeaderName, HeaderValue,
    SET_COOKIE, VARY,
};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use quick_cache::sync::{Cache as Store, EntryAction, EntryResult, PlaceholderGuard};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::gate::policy::PathPattern;
use crate::request_id::X_REQUEST_ID;
use crate::uem::mapping;

/// The cache, when the file has a `[cache]` table. Compared whole on reload: a change empties it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The most bytes all entries together hold.
    pub max_bytes: u64,
    /// The first rule whose path matches decides; a read no rule matches is never cached.
    pub rules: Vec<CacheRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub path: PathPattern,
    /// How long an entry answers without asking the API.
    pub ttl: Duration,
    /// How long past `ttl` an entry may still answer when the API fails (429, 5xx, unreachable).
    pub stale_if_error: Duration,
}

impl CacheSettings {
    /// The rule for the canonical `path`, if any.
    pub fn rule(&self, path: &str) -> Option<&CacheRule> {
        self.rules.iter().find(|r| r.path.matches(path))
    }

    /// The largest single answer kept: an eighth of the whole, so one answer cannot push out all
    /// the others.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_bytes / 8
    }
}

/// On every answer to a request under a cache rule: `hit`, `miss`, `stale` or `bypass`.
pub static X_UEM_PROXY_CACHE: HeaderName = HeaderName::from_static("x-uem-proxy-cache");

/// Counters for the metrics; they outlive a cache replaced by a reload.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub bypassed: AtomicU64,
    pub evictions: AtomicU64,
    /// Bytes the entries hold now.
    pub bytes: AtomicU64,
}

/// One kept answer.
#[derive(Debug)]
pub struct Entry {
    headers: HeaderMap,
    /// The request headers its `Vary` names, with the values the request that fetched it had:
    /// it answers only requests that have the same.
    vary: Vec<(HeaderName, Vec<HeaderValue>)>,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
    stale_if_error: Duration,
    weight: u64,
}

type Key = String;

#[derive(Clone)]
struct ByWeight;

impl Weighter<Key, Arc<Entry>> for ByWeight {
    fn weight(&self, key: &Key, entry: &Arc<Entry>) -> u64 {
        key.len() as u64 + entry.weight
    }
}

/// Counts evictions.
#[derive(Clone)]
struct Evictions(Arc<CacheStats>);

impl Lifecycle<Key, Arc<Entry>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: Key, _: Arc<Entry>) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Guard<'a> = PlaceholderGuard<'a, Key, Arc<Entry>, ByWeight, std::hash::RandomState, Evictions>;

/// The cache of one configuration; a reload that changes `[cache]` starts an empty one.
pub struct Cache {
    settings: CacheSettings,
    store: Store<Key, Arc<Entry>, ByWeight, std::hash::RandomState, Evictions>,
    stats: Arc<CacheStats>,
    /// Moves on at every purge: an answer fetched before a purge is not kept after it.
    generation: AtomicU64,
}

/// What to do with a request.
pub enum Lookup<'a> {
    /// No rule covers it: forward it as it is.
    Uncovered,
    /// The answer, from memory.
    Hit(Response),
    /// Forward it and label the answer so (`miss` for a `HEAD` not kept, `bypass` for `no-store`).
    Pass(&'static str),
    /// Forward it (the only request doing so for this key) and hand the result to [`Fill::complete`].
    Fill(Fill<'a>),
}

/// A miss being fetched; others asking for the same key wait for it.
pub struct Fill<'a> {
    cache: &'a Cache,
    guard: Guard<'a>,
    /// The entry being replaced, while it may still answer when the API fails.
    stale: Option<Arc<Entry>>,
    generation: u64,
    /// The request's headers, for the values of those the answer's `Vary` names.
    request_headers: HeaderMap,
    ttl: Duration,
    stale_if_error: Duration,
}

impl Cache {
    pub fn new(settings: CacheSettings, stats: Arc<CacheStats>) -> Cache {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(1024)
            .weight_capacity(settings.max_bytes)
            // Few shards: each holds a share of `max_bytes`, and must hold the largest entry.
            .shards(4)
            // Half for entries read once so far: API answers are large, and polling reads by
            // recency; with the default 3 %, a new large entry would go at the next insert.
            .hot_allocation(0.5)
            .build()
            .expect("valid cache options");
        stats.bytes.store(0, Ordering::Relaxed);
        let store = Store::with_options(options, ByWeight, std::hash::RandomState::new(), Evictions(stats.clone()));
        Cache { settings, store, stats, generation: AtomicU64::new(0) }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Looks a request up. `tenant` and the canonical `path` place it; `https`: the caller came
    /// over HTTPS (rewritten URLs differ).
    /// `prefix`: the tenant prefix the caller used (`/t/uat`, or `""`), which the answer's
    /// rewritten URLs carry.
    pub async fn lookup(&self, tenant: &str, parts: &Parts, path: &str, https: bool, prefix: &str) -> Lookup<'_> {
        let head = parts.method == Method::HEAD;
        if !(head || parts.method == Method::GET) {
            return Lookup::Uncovered;
        }
        let Some(rule) = self.settings.rule(path) else { return Lookup::Uncovered };
        let (ttl, stale_if_error) = (rule.ttl, rule.stale_if_error);
        let directives = cache_control(&parts.headers);
        if directives.no_store {
            self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
            return Lookup::Pass("bypass");
        }
        let key = key(tenant, parts, path, https, prefix);
        // What the API will see of the request: a field the caller's `Connection` names is not
        // sent, and must not be taken for one of the values an entry varies by.
        let forwarded = crate::forward::rewrite::as_forwarded(&parts.headers);
        let headers = &*forwarded;
        if head {
            // A HEAD is answered from a GET's entry; its own answer has no body to keep.
            return match self.store.get(&key).filter(|e| !directives.no_cache && e.fresh() && e.serves(headers)) {
                Some(entry) => self.hit(&entry, true),
                None => {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    Lookup::Pass("miss")
                }
            };
        }
        let generation = self.generation.load(Ordering::Acquire);
        let refresh = directives.no_cache;
        let found = self
            .store
            .entry_async(&key, |_, entry| {
                let serves = entry.serves(headers);
                // An entry for other requests (by its `Vary`) stays while it may answer them,
                // fresh or stale, and this request passes.
                if (serves && entry.fresh() && !refresh) || (!serves && entry.usable_stale()) {
                    EntryAction::Retain(entry.clone())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            })
            .await;
        let (guard, stale) = match found {
            EntryResult::Retained(entry) if entry.serves(headers) => return self.hit(&entry, false),
            EntryResult::Retained(_) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Pass("miss");
            }
            EntryResult::Replaced(guard, old) => (guard, Some(old).filter(|e| e.usable_stale() && e.serves(headers))),
            EntryResult::Vacant(guard) => (guard, None),
            EntryResult::Removed(..) | EntryResult::Timeout => return Lookup::Pass("miss"),
        };
        let request_headers = forwarded.into_owned();
        Lookup::Fill(Fill { cache: self, guard, stale, generation, ttl, stale_if_error, request_headers })
    }

    fn hit(&self, entry: &Entry, head: bool) -> Lookup<'static> {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Lookup::Hit(entry.response("hit", head))
    }

    /// After a request that no rule covered or that was passed: a successful write empties the
    /// entries of its tenant under its API area, so reading back what was changed sees the change.
    pub fn after(&self, tenant: &str, method: &Method, path: &str, status: StatusCode) {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || !status.is_success() {
            return;
        }
        let prefix = format!("{tenant}\n{}\n", area(path));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.retain(|key, _| !key.starts_with(&prefix));
        self.held();
        tracing::debug!(tenant, area = %area(path), "cache entries purged after a write");
    }

    fn held(&self) {
        self.stats.bytes.store(self.store.weight(), Ordering::Relaxed);
    }
}

impl Fill<'_> {
    /// Keeps a `200` answer and passes it on; serves the stale entry instead of a failure of the
    /// API when the rule allows; passes anything else on as it came.
    pub async fn complete(self, result: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        let stats = &self.cache.stats;
        let failed = match &result {
            Ok(response) => matches!(response.status().as_u16(), 429 | 500..=599),
            Err(error) => upstream_failure(error),
        };
        let purged = self.cache.generation.load(Ordering::Acquire) != self.generation;
        if failed
            && !purged
            && let Some(stale) = self.stale.filter(|e| e.age() <= e.ttl + self.stale_if_error)
        {
            stats.stale.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(age_s = stale.age().as_secs(), "the API failed: a stale entry answers");
            let response = stale.response("stale", false);
            let _ = self.guard.insert(stale);
            self.cache.held();
            return Ok(response);
        }
        stats.misses.fetch_add(1, Ordering::Relaxed);
        let response = result?;
        let Some(length) = storable(&response, self.cache.settings.max_entry_bytes()) else {
            return Ok(labelled(response, "miss", Duration::ZERO));
        };
        // `Vary: *`: no other request is the same.
        let Some(vary) = varied(response.headers(), &self.request_headers) else {
            return Ok(labelled(response, "miss", Duration::ZERO));
        };
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, length as usize).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                tracing::debug!(%error, "the upstream's body failed while read for the cache");
                return Err(crate::forward::from_body(&*error));
            }
        };
        let mut headers = parts.headers;
        headers.remove(&X_REQUEST_ID);
        let weight =
            body.len() as u64 + headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum::<usize>() as u64;
        let entry = Arc::new(Entry {
            headers,
            vary,
            body,
            stored: Instant::now(),
            ttl: self.ttl,
            stale_if_error: self.stale_if_error,
            weight,
        });
        if self.cache.generation.load(Ordering::Acquire) == self.generation {
            let _ = self.guard.insert(entry.clone());
            self.cache.held();
        }
        Ok(entry.response("miss", false))
    }
}

impl Entry {
    fn age(&self) -> Duration {
        self.stored.elapsed()
    }

    fn fresh(&self) -> bool {
        self.age() < self.ttl
    }

    fn usable_stale(&self) -> bool {
        self.age() <= self.ttl + self.stale_if_error
    }

    /// Whether the entry may answer a request with `headers`: the same values (in the same
    /// order) of every header its `Vary` names, absent where it was absent.
    fn serves(&self, headers: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    fn response(&self, label: &'static str, head: bool) -> Response {
        let body = if head { Body::empty() } else { Body::from(self.body.clone()) };
        let mut response = Response::new(body);
        *response.headers_mut() = self.headers.clone();
        labelled(response, label, self.age())
    }
}

/// The answer with its cache status and `Age`.
pub fn labelled(mut response: Response, label: &'static str, age: Duration) -> Response {
    let headers = response.headers_mut();
    headers.insert(X_UEM_PROXY_CACHE.clone(), HeaderValue::from_static(label));
    headers.insert(AGE, HeaderValue::from(age.as_secs()));
    response
}

/// The length of an answer that may be kept: `200`, a known length up to `limit`, no cookie, and
/// no `no-store` from the API.
fn storable(response: &Response, limit: u64) -> Option<u64> {
    if response.status() != StatusCode::OK || response.headers().contains_key(SET_COOKIE) {
        return None;
    }
    if cache_control(response.headers()).no_store {
        return None;
    }
    let length: u64 = response.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    (length <= limit).then_some(length)
}

/// The request headers an answer's `Vary` names, with the request's values; `None` for
/// `Vary: *` (or a name that is not one), which no other request matches.
fn varied(response: &HeaderMap, request: &HeaderMap) -> Option<Vec<(HeaderName, Vec<HeaderValue>)>> {
    let mut vary: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
    for value in response.get_all(VARY) {
        for name in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|n| !n.is_empty()) {
            // `*` is a valid name, and means any header.
            if name == b"*" {
                return None;
            }
            let name = HeaderName::from_bytes(name).ok()?;
            if !vary.iter().any(|(seen, _)| *seen == name) {
                let values = request.get_all(&name).iter().cloned().collect();
                vary.push((name, values));
            }
        }
    }
    Some(vary)
}

/// Failures of the API (or of reaching it) that a stale entry may stand in for.
fn upstream_failure(error: &ProxyError) -> bool {
    matches!(
        error,
        ProxyError::Unreachable
            | ProxyError::Timeout
            | ProxyError::Broken
            | ProxyError::ClosedBeforeAnswer
            | ProxyError::BadUpstreamAnswer(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::UpstreamBusy
            | ProxyError::NoToken { .. }
    )
}

#[derive(Default)]
struct Directives {
    no_cache: bool,
    no_store: bool,
}

fn cache_control(headers: &HeaderMap) -> Directives {
    let mut found = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        for directive in value.as_bytes().split(|b| *b == b',') {
            let name = directive.split(|b| *b == b'=').next().unwrap_or_default().trim_ascii();
            found.no_cache |= name.eq_ignore_ascii_case(b"no-cache");
            found.no_store |= name.eq_ignore_ascii_case(b"no-store");
        }
    }
    found
}

/// The API area of a canonical path: the segment after `/api` (and its version), `mdm`,
/// `system`, …, in lower case.
fn area(path: &str) -> String {
    let segments = mapping::api_segments(path).unwrap_or_else(|| mapping::segments(path));
    segments.into_iter().next().unwrap_or_default()
}

/// Tenant and area first (purges go by them), then how the caller reached the proxy, the path,
/// the query, and `Accept`, `Accept-Encoding` and `Accept-Language`: the headers an answer
/// most often varies by, so that callers asking for JSON and XML, compressed or not, in one
/// language or another, each have an entry (what else an answer's `Vary` names, its entry
/// checks).
fn key(tenant: &str, parts: &Parts, path: &str, https: bool, prefix: &str) -> Key {
    // Every field of a name, as the API reads them: a list.
    let text = |name: HeaderName| {
        let values = parts.headers.get_all(name).into_iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
        values.collect::<Vec<_>>().join(", ")
    };
    let host = text(HOST).to_ascii_lowercase();
    let accept = text(ACCEPT);
    let encoding = text(ACCEPT_ENCODING);
    let language = text(ACCEPT_LANGUAGE);
    let scheme = if https { "https" } else { "http" };
    let query = parts.uri.query().unwrap_or("");
    format!("{tenant}\n{}\n{scheme}://{host}{prefix}\n{path}?{query}\n{accept}\n{encoding}\n{language}", area(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serves_requests_with_the_values_its_vary_names() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let entry = |vary: &[(&'static str, &'static str)], request: &HeaderMap| Entry {
            headers: HeaderMap::new(),
            vary: varied(&headers(vary), request).unwrap(),
            body: Bytes::new(),
            stored: Instant::now(),
            ttl: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            weight: 0,
        };
        let alice = headers(&[("x-user", "alice"), ("accept-language", "fr"), ("accept-language", "de")]);
        let kept = entry(&[("vary", "X-User,  Accept-Language"), ("vary", "x-user")], &alice);
        assert_eq!(kept.vary.len(), 2, "a name listed twice is one");
        assert!(kept.serves(&alice));
        assert!(kept.serves(&headers(&[
            ("x-user", "alice"),
            ("accept-language", "fr"),
            ("accept-language", "de"),
            ("x-other", "1")
        ])));
        for other in [
            headers(&[("x-user", "bob"), ("accept-language", "fr"), ("accept-language", "de")]),
            headers(&[("accept-language", "fr"), ("accept-language", "de")]),
            headers(&[("x-user", "alice"), ("accept-language", "de"), ("accept-language", "fr")]),
            headers(&[("x-user", "alice"), ("accept-language", "fr")]),
            headers(&[("x-user", "Alice"), ("accept-language", "fr"), ("accept-language", "de")]),
        ] {
            assert!(!kept.serves(&other), "{other:?}");
        }
        // Absent where it was absent.
        let anonymous = entry(&[("vary", "x-user")], &HeaderMap::new());
        assert!(anonymous.serves(&HeaderMap::new()) && !anonymous.serves(&alice));
        assert!(entry(&[], &alice).serves(&HeaderMap::new()), "no Vary: any request");
        for never in ["*", "x-user, *", "bad name"] {
            assert!(varied(&headers(&[("vary", never)]), &alice).is_none(), "{never}");
        }
    }

    #[test]
    fn areas_and_directives() {
        assert_eq!(area("/api/mdm/devices/search"), "mdm");
        assert_eq!(area("/API/v1/System/info"), "system");
        assert_eq!(area("/other/x"), "other");
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0, No-Cache"));
        let d = cache_control(&headers);
        assert!(d.no_cache && !d.no_store);
        headers.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(cache_control(&headers).no_store);
    }
}
