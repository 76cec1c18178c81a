//! Active health checking: one tokio task per endpoint sends an HTTP `GET` (or opens a TCP
//! connection) every interval, and a small state machine turns the results into healthy /
//! unhealthy with the configured thresholds.
//!
//! A cluster's [`HealthGroup`] outlives snapshots whose health-check settings and endpoint
//! addresses are unchanged for that cluster, so re-applying a config neither restarts the
//! checks nor forgets what they found. Each transition bumps the group's epoch; the cluster
//! sees the new epoch on its next pick and rebuilds its balancer over the endpoints in
//! rotation, so the request path reads one atomic when nothing changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::AbortHandle;

use crate::config::HealthCheckSpec;
use crate::metrics::{Gauge, HealthCheckStats};

/// The health of one endpoint as the request path reads it.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    healthy: AtomicBool,
    /// `pymesh_endpoint_healthy{cluster,endpoint}`.
    gauge: Arc<Gauge>,
}

impl EndpointHealth {
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        self.gauge.set(i64::from(healthy));
    }
}

/// The health of a cluster's endpoints (in endpoint order) and the checkers that keep it.
#[derive(Debug)]
pub(crate) struct HealthGroup {
    /// What this group was made for; a snapshot with the same keeps the group.
    spec: Option<HealthCheckSpec>,
    addresses: Box<[Authority]>,
    endpoints: Box<[EndpointHealth]>,
    /// Bumped on every transition.
    epoch: AtomicU64,
    stats: Option<Arc<HealthCheckStats>>,
    tasks: Mutex<Vec<AbortHandle>>,
    started: AtomicBool,
}

impl HealthGroup {
    /// A new group. Without a health check every endpoint is healthy for good. With one,
    /// endpoints start unhealthy, as Envoy's do, and the first passing check brings each in
    /// (until then the panic threshold keeps traffic flowing over all of them).
    pub(crate) fn new(
        spec: Option<HealthCheckSpec>,
        addresses: Box<[Authority]>,
        gauges: Vec<Arc<Gauge>>,
        stats: Option<Arc<HealthCheckStats>>,
    ) -> Self {
        let healthy = spec.is_none();
        let endpoints = gauges
            .into_iter()
            .map(|gauge| EndpointHealth { healthy: AtomicBool::new(healthy), gauge })
            .collect();
        Self {
            spec,
            addresses,
            endpoints,
            epoch: AtomicU64::new(0),
            stats,
            tasks: Mutex::default(),
            started: AtomicBool::new(false),
        }
    }

    /// Whether this group serves a cluster with these settings and endpoints.
    pub(crate) fn fits(&self, spec: Option<&HealthCheckSpec>, addresses: &[Authority]) -> bool {
        self.spec.as_ref() == spec && *self.addresses == *addresses
    }

    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn endpoint(&self, i: usize) -> &EndpointHealth {
        &self.endpoints[i]
    }

    /// Publish the health gauges and start the checkers (once; a kept group is already
    /// running). Called when the group's snapshot is swapped in, within the runtime: a
    /// snapshot that is refused never touches the gauges.
    pub(crate) fn start(self: &Arc<Self>) {
        for e in self.endpoints.iter() {
            e.gauge.set(i64::from(e.is_healthy()));
        }
        let Some(spec) = &self.spec else { return };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = Checker::client(spec);
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for i in 0..self.endpoints.len() {
            let checker = Checker { group: Arc::clone(self), index: i, client: client.clone() };
            tasks.push(tokio::spawn(checker.run()).abort_handle());
        }
    }

    /// Set an endpoint's health as a checker would (for tests of the rotation).
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, i: usize, healthy: bool) {
        self.endpoints[i].set(healthy);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Stop the checkers: the cluster left the config, or its checks changed.
    pub(crate) fn stop(&self) {
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

// === impl HealthState ===

/// What one endpoint's checker remembers between checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthState {
    pub(crate) healthy: bool,
    /// Whether the endpoint has ever been healthy: until then one passing check is enough
    /// (Envoy's rule for new hosts), so a fresh config comes into service after one interval.
    ever_healthy: bool,
    successes: u32,
    failures: u32,
}

impl HealthState {
    pub(crate) fn new(healthy: bool) -> Self {
        Self { healthy, ever_healthy: healthy, successes: 0, failures: 0 }
    }

    /// Record one check; answers the new health when it changed.
    pub(crate) fn observe(
        &mut self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && (!self.ever_healthy || self.successes >= healthy_threshold) {
                self.healthy = true;
                self.ever_healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= unhealthy_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

// === impl Checker ===

type CheckClient = Client<HttpConnector, Empty<Bytes>>;

struct Checker {
    group: Arc<HealthGroup>,
    index: usize,
    client: CheckClient,
}

impl Checker {
    /// A client of its own (not the cluster's pool): a check opens a fresh connection, so it
    /// tells whether the endpoint accepts new connections, and never queues behind traffic.
    fn client(spec: &HealthCheckSpec) -> CheckClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(spec.timeout_ms)));
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(http)
    }

    async fn run(self) {
        let spec = self.group.spec.clone().expect("checkers run only with a health check");
        let endpoint = &self.group.endpoints[self.index];
        let mut state = HealthState::new(endpoint.is_healthy());
        let mut ticks = tokio::time::interval(Duration::from_millis(spec.interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ok = self.check(&spec).await;
            if let Some(stats) = &self.group.stats {
                if ok {
                    stats.successes.inc()
                } else {
                    stats.failures.inc()
                }
            }
            if let Some(healthy) = state.observe(ok, spec.healthy_threshold, spec.unhealthy_threshold) {
                endpoint.set(healthy);
                self.group.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    async fn check(&self, spec: &HealthCheckSpec) -> bool {
        let address = &self.group.addresses[self.index];
        let timeout = Duration::from_millis(spec.timeout_ms);
        let Some(path) = spec.path.as_deref().filter(|_| !spec.tcp) else {
            let connect = tokio::net::TcpStream::connect(address.as_str());
            return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
        };
        let Ok(uri) = Uri::builder().scheme("http").authority(address.clone()).path_and_query(path).build()
        else {
            return false;
        };
        let Ok(req) = Request::get(uri)
            .header(header::HOST, address.as_str())
            .header(header::USER_AGENT, "pymesh-health-check")
            .body(Empty::new())
        else {
            return false;
        };
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => spec.expected_statuses.contains(&resp.status().as_u16()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_gate_each_transition() {
        let mut s = HealthState::new(true);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        // A pass resets the failure count.
        assert_eq!(s.observe(true, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), Some(false));
        assert_eq!(s.observe(false, 2, 3), None);
        // Back in only after `healthy_threshold` passes in a row.
        assert_eq!(s.observe(true, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), Some(true));
        assert!(s.healthy);
    }

    #[test]
    fn a_new_endpoint_needs_one_pass_to_come_in() {
        let mut s = HealthState::new(false);
        assert_eq!(s.observe(false, 3, 2), None);
        assert_eq!(s.observe(true, 3, 2), Some(true));
        // Once it has been in, the full threshold applies.
        assert_eq!(s.observe(false, 3, 2), None);
        assert_eq!(s.observe(false, 3, 2), Some(false));
        assert_eq!(s.observe(true, 3, 2), None);
        assert_eq!(s.observe(true, 3, 2), None);
        assert_eq!(s.observe(true, 3, 2), Some(true));
    }

    fn spec(tcp: bool, path: Option<&str>) -> HealthCheckSpec {
        HealthCheckSpec {
            tcp,
            path: path.map(str::to_owned),
            expected_statuses: vec![200],
            interval_ms: 20,
            timeout_ms: 500,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        }
    }

    fn group(spec: HealthCheckSpec, address: std::net::SocketAddr) -> Arc<HealthGroup> {
        let addresses: Box<[Authority]> = Box::new([address.to_string().parse().unwrap()]);
        let stats = Arc::new(HealthCheckStats::default());
        Arc::new(HealthGroup::new(Some(spec), addresses, vec![Arc::default()], Some(stats)))
    }

    async fn wait_for(g: &HealthGroup, healthy: bool) {
        for _ in 0..500 {
            if g.endpoint(0).is_healthy() == healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the endpoint never became healthy={healthy}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_checks_follow_a_listener_that_comes_and_goes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let g = group(spec(true, None), addr);
        assert!(!g.endpoint(0).is_healthy(), "checked endpoints start unhealthy");
        g.start();
        wait_for(&g, true).await;
        assert_eq!(g.endpoint(0).gauge.get(), 1);
        let epoch = g.epoch();
        drop(listener);
        wait_for(&g, false).await;
        assert_eq!(g.endpoint(0).gauge.get(), 0);
        assert!(g.epoch() > epoch);
        assert!(g.stats.as_ref().unwrap().failures.get() > 0);
        g.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_checks_want_an_expected_status() {
        // A one-shot HTTP server per connection: 200 on /ok, 503 elsewhere.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0; 1024];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let ok = buf[..n].starts_with(b"GET /ok ");
                    let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                    let reply =
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        let good = group(spec(false, Some("/ok")), addr);
        let bad = group(spec(false, Some("/down")), addr);
        good.start();
        bad.start();
        wait_for(&good, true).await;
        let stats = bad.stats.as_ref().unwrap();
        for _ in 0..500 {
            if stats.failures.get() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stats.failures.get() >= 3);
        assert!(!bad.endpoint(0).is_healthy());
        assert_eq!(stats.successes.get(), 0);
        good.stop();
        bad.stop();
    }
}
