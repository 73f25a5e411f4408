//! Prometheus metrics at `/_proxy/metrics`: request counts by method, permission category and
//! status class, durations, bytes, in-flight requests, caller connections, the token's health
//! and the pacer's line.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cache::CacheStats;
use crate::forward::pacer::Pacer;
use crate::listen::Counts;
use crate::token::Tokens;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub tenant: TenantLabel,
    pub method: &'static str,
    /// The permission catalogue's category of the request (`Devices`, `Apps`, …), `proxy` for
    /// the proxy's own endpoints, `unknown` for the rest.
    pub category: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    #[prometheus(flatten)]
    tenant: TenantLabel,
    outcome: &'static str,
}

/// A `tenant` label when the proxy serves `[tenants]`, and none at all otherwise, so that the
/// series of a one-tenant proxy stay as they always were.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct TenantLabel(pub Option<Arc<str>>);

impl EncodeLabelSet for TenantLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(name) => [("tenant", &**name)].encode(encoder),
            None => Ok(()),
        }
    }
}

/// What the scrape reads of one tenant.
pub struct TenantGauges {
    /// `None` for the one tenant of a configuration without `[tenants]`.
    pub name: Option<Arc<str>>,
    pub tokens: Tokens,
    pub pacer: Arc<ArcSwap<Pacer>>,
}

/// How many label sets [`Metrics`] keeps the counters of at hand.
const RECENT: usize = 8;

/// The proxy's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// The counters of the last label sets met, the newest first: a request like one shortly
    /// before it finds its counter without hashing its labels into the family again.
    recent: Mutex<VecDeque<(RequestLabels, Counter)>>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    in_flight: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    throttled: Counter,
    /// Filled by the listeners, read at each scrape.
    pub connections: Arc<Counts>,
    tenants: Arc<ArcSwap<Vec<TenantGauges>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0].into_iter()
}

impl Metrics {
    /// Registers the metrics; the tenants' tokens and pacers, and the cache's counters, are read
    /// at each scrape.
    pub fn new(tenants: Vec<TenantGauges>, cache: Arc<CacheStats>) -> Metrics {
        let tenants = Arc::new(ArcSwap::from_pointee(tenants));
        let mut registry = Registry::with_prefix("uem_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let request_duration = Histogram::new(seconds_buckets());
        registry.register_with_unit(
            "request_duration",
            "Time from request to the last byte of the response",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = Histogram::new(seconds_buckets());
        registry.register_with_unit(
            "upstream_duration",
            "Time until the API's response headers",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("requests_in_flight", "Requests being served", in_flight.clone());
        let bytes_in = Counter::default();
        registry.register_with_unit("request_body", "Request body bytes received", Unit::Bytes, bytes_in.clone());
        let bytes_out = Counter::default();
        registry.register_with_unit("response_body", "Response body bytes sent", Unit::Bytes, bytes_out.clone());
        let throttled = Counter::default();
        registry.register("upstream_throttled", "429 answers from the API", throttled.clone());
        let connections = Arc::new(Counts::default());
        registry.register_collector(Box::new(Live {
            tenants: tenants.clone(),
            cache,
            connections: connections.clone(),
        }));
        Metrics {
            registry,
            requests,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            request_duration,
            upstream_duration,
            in_flight,
            bytes_in,
            bytes_out,
            throttled,
            connections,
            tenants,
        }
    }

    /// The tenants after a reload.
    pub fn set_tenants(&self, tenants: Vec<TenantGauges>) {
        self.tenants.store(Arc::new(tenants));
    }

    /// Counts a 429 from the API.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// Records one finished request.
    pub fn finished(&self, labels: RequestLabels, total: Duration, upstream: Option<Duration>, bytes: (u64, u64)) {
        self.in_flight.dec();
        self.count(labels);
        self.request_duration.observe(total.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream_duration.observe(upstream.as_secs_f64());
        }
        self.bytes_in.inc_by(bytes.0);
        self.bytes_out.inc_by(bytes.1);
    }

    /// Counts one request under `labels`, through the recent counters when one of them is its.
    fn count(&self, labels: RequestLabels) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = recent.iter().find(|(seen, _)| *seen == labels) {
            counter.inc();
            return;
        }
        let counter = self.requests.get_or_create(&labels).clone();
        counter.inc();
        if recent.len() == RECENT {
            recent.pop_back();
        }
        recent.push_front((labels, counter));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Values read at scrape time from the token store and the pacer.
struct Live {
    tenants: Arc<ArcSwap<Vec<TenantGauges>>>,
    cache: Arc<CacheStats>,
    connections: Arc<Counts>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tenants = self.tenants.load();
        let label = |t: &TenantGauges| TenantLabel(t.name.clone());
        let mut family = encoder.encode_descriptor(
            "token_refreshes",
            "Token requests to the token service, by outcome",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for tenant in tenants.iter() {
            let stats = tenant.tokens.stats();
            for (outcome, n) in [("success", stats.refreshed), ("failure", stats.failed)] {
                ConstCounter::new(n)
                    .encode(family.encode_family(&OutcomeLabels { tenant: label(tenant), outcome })?)?;
            }
        }
        let usable = |t: &TenantGauges| {
            t.tokens
                .current()
                .map_or(0.0, |t| t.usable_until().saturating_duration_since(tokio::time::Instant::now()).as_secs_f64())
        };
        let last_error =
            |t: &TenantGauges| t.tokens.stats().last_error.as_ref().map_or(0.0, |(at, _)| unix_seconds(*at));
        let seconds = Some(&Unit::Seconds);
        for (name, help, unit, value) in [
            (
                "token_usable",
                "Seconds until the current token stops being used (0 without one)",
                seconds,
                &usable as &dyn Fn(&TenantGauges) -> f64,
            ),
            ("token_last_error_timestamp", "When a token request last failed (0: never)", seconds, &last_error),
        ] {
            let mut family = encoder.encode_descriptor(name, help, unit, ConstGauge::new(0.0).metric_type())?;
            for tenant in tenants.iter() {
                match &tenant.name {
                    None => family.encode_gauge(&value(tenant))?,
                    Some(_) => ConstGauge::new(value(tenant)).encode(family.encode_family(&label(tenant))?)?,
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "pacer_waiting",
            "Requests waiting for their turn in the pacer",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for tenant in tenants.iter() {
            let waiting = tenant.pacer.load().waiting();
            match &tenant.name {
                None => family.encode_gauge(&waiting)?,
                Some(_) => ConstGauge::new(waiting).encode(family.encode_family(&label(tenant))?)?,
            }
        }
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, n) in [
            ("connections", "Caller connections open", load(&self.connections.open)),
            ("connections_max", "Caller connections allowed at once", load(&self.connections.cap)),
        ] {
            let gauge = ConstGauge::new(n as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let cache = &self.cache;
        let answers = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "cache_answers",
            "Requests under a cache rule, by how the cache answered",
            None,
            answers.metric_type(),
        )?;
        for (result, n) in
            [("hit", &cache.hits), ("miss", &cache.misses), ("stale", &cache.stale), ("bypass", &cache.bypassed)]
        {
            ConstCounter::new(load(n)).encode(family.encode_family(&CacheLabels { result })?)?;
        }
        let evictions = ConstCounter::new(load(&cache.evictions));
        evictions.encode(encoder.encode_descriptor(
            "cache_evictions",
            "Cache entries pushed out to stay within max_bytes",
            None,
            evictions.metric_type(),
        )?)?;
        let held = ConstGauge::new(load(&cache.bytes) as i64);
        held.encode(encoder.encode_descriptor(
            "cache_held",
            "Bytes the cache's entries hold",
            Some(&Unit::Bytes),
            held.metric_type(),
        )?)?;
        let shed = ConstCounter::new(load(&self.connections.shed));
        shed.encode(encoder.encode_descriptor(
            "connections_shed",
            "Idle caller connections closed to make room for new ones",
            None,
            shed.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(k: usize) -> RequestLabels {
        RequestLabels {
            tenant: TenantLabel([None, Some(Arc::from("uat")), Some(Arc::from("prod"))][k % 3].clone()),
            method: ["GET", "POST"][k / 3 % 2],
            category: ["devices", "users"][k / 6 % 2],
            status_class: ["2xx", "4xx", "5xx"][k / 12 % 3],
        }
    }

    proptest! {
        /// Counted through the recent counters or not, every label set's count is the number of
        /// requests that had it, however many sets come and go.
        #[test]
        fn each_label_set_counts_its_own_requests(sequence in proptest::collection::vec(0usize..36, 0..200)) {
            let metrics = Metrics::new(Vec::new(), Arc::default());
            let mut expected = [0u64; 36];
            for k in sequence {
                metrics.count(labels(k));
                expected[k] += 1;
            }
            for (k, n) in expected.iter().enumerate() {
                prop_assert_eq!(metrics.requests.get_or_create(&labels(k)).get(), *n, "labels {}", k);
            }
        }
    }
}
