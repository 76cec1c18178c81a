//! Lock-free counters, gauges and histograms, and their Prometheus rendering.
//!
//! Handles are created at compile time (when a snapshot is applied) through the registry,
//! under its lock; the request path only touches the atomics behind the `Arc`s it was
//! compiled with. Series keep their values across config changes, as Prometheus counters
//! must; a series whose route or cluster is removed keeps its last value (bounded by the
//! config's own cardinality, never by traffic: no path, client address or status code is
//! ever a label).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Increments a gauge now and decrements it when dropped: an "open" count that cannot leak.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Arc<Gauge>);

impl GaugeGuard {
    pub(crate) fn new(gauge: Arc<Gauge>) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Upper bounds of the latency buckets, in microseconds: 100 µs to 30 s.
pub(crate) const LATENCY_BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A fixed-bucket histogram. Each bucket counts only its own observations (rendering makes
/// them cumulative), so recording is a search over 17 bounds and two atomic adds.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    #[inline]
    pub(crate) fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let idx = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (Vec<u64>, u64) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        (counts, self.sum_us.load(Ordering::Relaxed))
    }
}

/// Response counts by status class (1xx..5xx) for one listener/route/cluster triple.
#[derive(Debug, Default)]
pub(crate) struct StatusCounters([Counter; 5]);

impl StatusCounters {
    #[inline]
    pub(crate) fn record(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].inc();
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    pub(crate) active_connections: Arc<Gauge>,
    pub(crate) connections_total: Counter,
    pub(crate) protocol_errors: ProtocolErrors,
}

/// Why the proxy refused what a downstream client sent (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtocolErrorKind {
    /// Framing or syntax the proxy cannot trust (400, or an HTTP/2 connection error).
    Malformed,
    /// Too many or too large request headers (431).
    HeadersTooLarge,
    /// A request body over the listener's limit (413).
    BodyTooLarge,
    /// A request head not received within the header-read timeout.
    HeaderTimeout,
}

impl ProtocolErrorKind {
    const ALL: [Self; 4] = [Self::Malformed, Self::HeadersTooLarge, Self::BodyTooLarge, Self::HeaderTimeout];

    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::HeaderTimeout => "header_timeout",
        }
    }
}

/// One listener's refusals, by kind.
#[derive(Debug, Default)]
pub(crate) struct ProtocolErrors([Counter; 4]);

impl ProtocolErrors {
    #[inline]
    pub(crate) fn inc(&self, kind: ProtocolErrorKind) {
        self.0[kind as usize].inc();
    }

    pub(crate) fn get(&self, kind: ProtocolErrorKind) -> u64 {
        self.0[kind as usize].get()
    }
}

#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) active_connections: Arc<Gauge>,
    pub(crate) connections_total: Counter,
    pub(crate) connect_failures: Counter,
    /// Requests that failed after a connection was made (reset, protocol error): 502s.
    pub(crate) upstream_errors: Counter,
    // --- policies (policy/) ---
    /// By `policy::timeouts::Kind`.
    pub(crate) timeouts: [Counter; 4],
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    /// Circuit-breaker overflows, by `policy::breaker::Limit`.
    pub(crate) overflows: [Counter; 4],
    pub(crate) ejections: Counter,
    /// Endpoints ejected now.
    pub(crate) ejected: Gauge,
    /// Requests copied to this cluster as a mirror's shadow.
    pub(crate) mirrored: Counter,
}

#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    pub(crate) duration: Histogram,
    /// Response body bytes sent downstream (observe.rs counts them as the body streams).
    pub(crate) response_bytes: Counter,
    // --- policies (policy/) ---
    pub(crate) rate_limited: Counter,
    pub(crate) faults_delayed: Counter,
    pub(crate) faults_aborted: Counter,
}

/// Active health checks of one cluster, by result.
#[derive(Debug, Default)]
pub(crate) struct HealthCheckStats {
    pub(crate) successes: Counter,
    pub(crate) failures: Counter,
}

type TargetKey = (String, String, String);

#[derive(Debug, Default)]
struct Registry {
    listeners: BTreeMap<String, Arc<ListenerStats>>,
    clusters: BTreeMap<String, Arc<ClusterStats>>,
    routes: BTreeMap<(String, String), Arc<RouteStats>>,
    targets: BTreeMap<TargetKey, Arc<StatusCounters>>,
    /// `(cluster, endpoint)` -> 1 healthy / 0 not.
    endpoint_health: BTreeMap<(String, String), Arc<Gauge>>,
    health_checks: BTreeMap<String, Arc<HealthCheckStats>>,
}

/// Every metric the core keeps. One per engine.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) config_version: Gauge,
    pub(crate) config_apply_errors: Counter,
    pub(crate) tls_handshake_failures: Counter,
}

fn entry<K: Ord, V: Default>(map: &mut BTreeMap<K, Arc<V>>, key: K) -> Arc<V> {
    Arc::clone(map.entry(key).or_default())
}

impl Metrics {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters (each insert is whole), so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn listener(&self, name: &str) -> Arc<ListenerStats> {
        entry(&mut self.registry().listeners, name.to_owned())
    }

    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        entry(&mut self.registry().clusters, name.to_owned())
    }

    pub(crate) fn route(&self, listener: &str, route: &str) -> Arc<RouteStats> {
        entry(&mut self.registry().routes, (listener.to_owned(), route.to_owned()))
    }

    /// Status counters for a listener/route/cluster triple; route and cluster are empty for
    /// answers the proxy gave itself before choosing them (no route matched).
    pub(crate) fn target(&self, listener: &str, route: &str, cluster: &str) -> Arc<StatusCounters> {
        let key = (listener.to_owned(), route.to_owned(), cluster.to_owned());
        entry(&mut self.registry().targets, key)
    }

    /// The health gauge of an endpoint of a cluster.
    pub(crate) fn endpoint_health(&self, cluster: &str, endpoint: &str) -> Arc<Gauge> {
        entry(&mut self.registry().endpoint_health, (cluster.to_owned(), endpoint.to_owned()))
    }

    pub(crate) fn health_checks(&self, cluster: &str) -> Arc<HealthCheckStats> {
        entry(&mut self.registry().health_checks, cluster.to_owned())
    }

    /// Drop series that only the registry holds and that never counted anything: the ones a
    /// refused snapshot registered while it compiled. Series that served keep their values.
    pub(crate) fn forget_unused(&self) {
        let mut reg = self.registry();
        reg.targets.retain(|_, c| Arc::strong_count(c) > 1 || c.total() > 0);
        reg.routes.retain(|_, r| Arc::strong_count(r) > 1 || r.duration.snapshot().0.iter().any(|n| *n > 0));
        reg.listeners.retain(|_, l| Arc::strong_count(l) > 1 || l.connections_total.get() > 0);
        // Health gauges describe endpoints now in the config: only what a cluster holds.
        reg.endpoint_health.retain(|_, g| Arc::strong_count(g) > 1);
        reg.health_checks.retain(|_, h| Arc::strong_count(h) > 1 || h.successes.get() + h.failures.get() > 0);
        reg.clusters.retain(|_, c| {
            Arc::strong_count(c) > 1 || c.connections_total.get() > 0 || c.connect_failures.get() > 0
        });
    }

    pub(crate) fn requests_total(&self) -> u64 {
        self.registry().targets.values().map(|c| c.total()).sum()
    }

    pub(crate) fn listener_requests(&self, listener: &str) -> u64 {
        let reg = self.registry();
        reg.targets.iter().filter(|((l, _, _), _)| l == listener).map(|(_, c)| c.total()).sum()
    }

    pub(crate) fn cluster_requests(&self, cluster: &str) -> u64 {
        let reg = self.registry();
        reg.targets.iter().filter(|((_, _, c), _)| c == cluster).map(|(_, c)| c.total()).sum()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let reg = self.registry();
        let mut out = String::with_capacity(4096);

        header(&mut out, "requests_total", "counter", "Requests answered, by status class.");
        for ((l, r, c), counters) in &reg.targets {
            for (i, counter) in counters.0.iter().enumerate() {
                let labels = [("listener", l.as_str()), ("route", r), ("cluster", c)];
                let class = format!("{}xx", i + 1);
                sample(&mut out, "requests_total", &labels, &[("status_class", &class)], counter.get());
            }
        }

        header(
            &mut out,
            "request_duration_seconds",
            "histogram",
            "Time from receiving a request to sending the response head.",
        );
        for ((l, r), stats) in &reg.routes {
            let (counts, sum_us) = stats.duration.snapshot();
            let labels = [("listener", l.as_str()), ("route", r.as_str())];
            let mut cumulative = 0;
            for (i, count) in counts.iter().enumerate() {
                cumulative += count;
                let le = match LATENCY_BUCKETS_US.get(i) {
                    Some(us) => format_seconds(*us),
                    None => "+Inf".to_owned(),
                };
                sample(&mut out, "request_duration_seconds_bucket", &labels, &[("le", &le)], cumulative);
            }
            let sum = format_seconds(sum_us);
            let _ = writeln!(out, "pymesh_request_duration_seconds_sum{} {sum}", label_set(&labels, &[]));
            sample(&mut out, "request_duration_seconds_count", &labels, &[], cumulative);
        }

        header(&mut out, "response_bytes_total", "counter", "Response body bytes sent to clients.");
        for ((l, r), stats) in &reg.routes {
            let labels = [("listener", l.as_str()), ("route", r.as_str())];
            sample(&mut out, "response_bytes_total", &labels, &[], stats.response_bytes.get());
        }

        header(&mut out, "downstream_connections_active", "gauge", "Open downstream connections.");
        for (l, s) in &reg.listeners {
            sample_i(
                &mut out,
                "downstream_connections_active",
                &[("listener", l)],
                s.active_connections.get(),
            );
        }
        header(&mut out, "downstream_connections_total", "counter", "Downstream connections accepted.");
        for (l, s) in &reg.listeners {
            sample(
                &mut out,
                "downstream_connections_total",
                &[("listener", l)],
                &[],
                s.connections_total.get(),
            );
        }
        header(
            &mut out,
            "downstream_protocol_errors_total",
            "counter",
            "Requests and connections refused for what the client sent, by kind.",
        );
        for (l, s) in &reg.listeners {
            for kind in ProtocolErrorKind::ALL {
                let v = s.protocol_errors.get(kind);
                sample(
                    &mut out,
                    "downstream_protocol_errors_total",
                    &[("listener", l)],
                    &[("kind", kind.label())],
                    v,
                );
            }
        }
        header(&mut out, "upstream_connections_active", "gauge", "Open upstream connections.");
        for (c, s) in &reg.clusters {
            sample_i(&mut out, "upstream_connections_active", &[("cluster", c)], s.active_connections.get());
        }
        header(&mut out, "upstream_connections_total", "counter", "Upstream connections opened.");
        for (c, s) in &reg.clusters {
            sample(&mut out, "upstream_connections_total", &[("cluster", c)], &[], s.connections_total.get());
        }
        header(&mut out, "upstream_connect_failures_total", "counter", "Failed upstream connects.");
        for (c, s) in &reg.clusters {
            sample(
                &mut out,
                "upstream_connect_failures_total",
                &[("cluster", c)],
                &[],
                s.connect_failures.get(),
            );
        }
        header(
            &mut out,
            "upstream_errors_total",
            "counter",
            "Upstream requests that failed after connecting (reset, protocol error).",
        );
        for (c, s) in &reg.clusters {
            sample(&mut out, "upstream_errors_total", &[("cluster", c)], &[], s.upstream_errors.get());
        }

        header(
            &mut out,
            "endpoint_healthy",
            "gauge",
            "Whether an endpoint is in rotation by its health (1) or out of it (0).",
        );
        for ((c, e), g) in &reg.endpoint_health {
            // Only endpoints of the config now serving: a gauge nothing holds is stale.
            if Arc::strong_count(g) > 1 {
                sample_i(&mut out, "endpoint_healthy", &[("cluster", c), ("endpoint", e)], g.get());
            }
        }
        header(&mut out, "health_checks_total", "counter", "Active health checks, by result.");
        for (c, h) in &reg.health_checks {
            sample(
                &mut out,
                "health_checks_total",
                &[("cluster", c)],
                &[("result", "success")],
                h.successes.get(),
            );
            sample(
                &mut out,
                "health_checks_total",
                &[("cluster", c)],
                &[("result", "failure")],
                h.failures.get(),
            );
        }

        render_policies(&reg, &mut out);

        header(&mut out, "tls_handshake_failures_total", "counter", "Downstream TLS handshakes that failed.");
        let _ = writeln!(out, "pymesh_tls_handshake_failures_total {}", self.tls_handshake_failures.get());
        header(&mut out, "config_version", "gauge", "Version of the config now serving.");
        let _ = writeln!(out, "pymesh_config_version {}", self.config_version.get());
        header(&mut out, "config_apply_errors_total", "counter", "Snapshots the core refused.");
        let _ = writeln!(out, "pymesh_config_apply_errors_total {}", self.config_apply_errors.get());
        out
    }
}

/// The policy counters (policy/): per cluster, and per route for route-level policies.
fn render_policies(reg: &Registry, out: &mut String) {
    use crate::policy::{breaker::Limit, timeouts::Kind};
    header(out, "timeouts_total", "counter", "Requests that ran out of time, by which timeout fired.");
    for (c, s) in &reg.clusters {
        for kind in Kind::ALL {
            let v = s.timeouts[kind as usize].get();
            sample(out, "timeouts_total", &[("cluster", c)], &[("kind", kind.label())], v);
        }
    }
    type Read = fn(&ClusterStats) -> u64;
    let per_cluster: [(&str, &str, Read); 4] = [
        ("retries_total", "Retries sent upstream.", |s| s.retries.get()),
        ("retry_budget_exhausted_total", "Retries refused because the cluster's budget was spent.", |s| {
            s.budget_exhausted.get()
        }),
        ("outlier_ejections_total", "Endpoints ejected by outlier detection.", |s| s.ejections.get()),
        ("mirrored_requests_total", "Copies of requests sent to this cluster as a shadow.", |s| {
            s.mirrored.get()
        }),
    ];
    for (name, help, get) in per_cluster {
        header(out, name, "counter", help);
        for (c, s) in &reg.clusters {
            sample(out, name, &[("cluster", c)], &[], get(s));
        }
    }
    header(out, "outlier_ejected_endpoints", "gauge", "Endpoints ejected now.");
    for (c, s) in &reg.clusters {
        sample_i(out, "outlier_ejected_endpoints", &[("cluster", c)], s.ejected.get());
    }
    header(
        out,
        "circuit_breaker_overflows_total",
        "counter",
        "Requests (or retries) refused by the cluster's circuit breaker, by limit.",
    );
    for (c, s) in &reg.clusters {
        for limit in Limit::ALL {
            let v = s.overflows[limit as usize].get();
            sample(out, "circuit_breaker_overflows_total", &[("cluster", c)], &[("limit", limit.label())], v);
        }
    }
    header(out, "rate_limited_total", "counter", "Requests answered 429 by the route's rate limit.");
    for ((l, r), s) in &reg.routes {
        sample(out, "rate_limited_total", &[("listener", l), ("route", r)], &[], s.rate_limited.get());
    }
    header(out, "faults_injected_total", "counter", "Requests given an injected fault, by kind.");
    for ((l, r), s) in &reg.routes {
        let labels = [("listener", l.as_str()), ("route", r.as_str())];
        sample(out, "faults_injected_total", &labels, &[("kind", "delay")], s.faults_delayed.get());
        sample(out, "faults_injected_total", &labels, &[("kind", "abort")], s.faults_aborted.get());
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP pymesh_{name} {help}\n# TYPE pymesh_{name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], extra: &[(&str, &str)], v: u64) {
    let _ = writeln!(out, "pymesh_{name}{} {v}", label_set(labels, extra));
}

fn sample_i(out: &mut String, name: &str, labels: &[(&str, &str)], v: i64) {
    let _ = writeln!(out, "pymesh_{name}{} {v}", label_set(labels, &[]));
}

fn label_set(labels: &[(&str, &str)], extra: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().chain(extra).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"");
        for ch in v.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

fn format_seconds(us: u64) -> String {
    let secs = us as f64 / 1e6;
    format!("{secs}")
}

#[cfg(test)]
mod tests;
