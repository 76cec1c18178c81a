//! Active health checking: one tokio task per endpoint sends an HTTP `GET` (or opens a TCP
//! connection) every interval, and a small state machine turns the results into healthy /
//! unhealthy with the configured thresholds. HTTP checks speak what the cluster speaks: TLS
//! with the cluster's upstream TLS settings, and HTTP/1.1 or HTTP/2 as its `protocol` says
//! (`auto`: what the endpoint's ALPN picks).
//!
//! A cluster's [`HealthGroup`] outlives snapshots whose health-check settings and endpoint
//! addresses are unchanged for that cluster, so re-applying a config neither restarts the
//! checks nor forgets what they found. Each transition bumps the group's epoch; the cluster
//! sees the new epoch on its next pick and rebuilds its balancer over the endpoints in
//! rotation, so the request path reads one atomic when nothing changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::task::AbortHandle;

use crate::config::{ClusterProtocol, HealthCheckSpec};
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
    /// How checks reach the endpoints; read by the checkers at each check.
    transport: ArcSwap<CheckTransport>,
    /// The transport of the snapshot being compiled, taken up by `start` when that snapshot
    /// is swapped in (a refused snapshot's is replaced by the next compile's).
    staged: Mutex<Option<Arc<CheckTransport>>>,
}

/// How HTTP checks reach a cluster's endpoints: its protocol and its upstream TLS.
#[derive(Clone)]
pub(crate) struct CheckTransport {
    protocol: ClusterProtocol,
    /// The connector (the cluster's client config, ALPN by protocol) and the server name to
    /// send (none: the endpoint's host).
    tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for CheckTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckTransport")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl CheckTransport {
    pub(crate) fn new(
        protocol: ClusterProtocol,
        tls: Option<&(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
    ) -> Self {
        let tls = tls.map(|(config, sni)| {
            let mut config = rustls::ClientConfig::clone(config);
            config.alpn_protocols = match protocol {
                ClusterProtocol::Http1 => vec![b"http/1.1".to_vec()],
                ClusterProtocol::Http2 => vec![b"h2".to_vec()],
                ClusterProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            (tokio_rustls::TlsConnector::from(Arc::new(config)), sni.clone())
        });
        Self { protocol, tls }
    }

    /// Plaintext HTTP/1.1.
    #[cfg(test)]
    pub(crate) fn plain() -> Self {
        Self { protocol: ClusterProtocol::Http1, tls: None }
    }
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
        transport: CheckTransport,
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
            transport: ArcSwap::from_pointee(transport),
            staged: Mutex::default(),
        }
    }

    /// The transport for checks once the snapshot being compiled is swapped in (a kept
    /// group follows the cluster's new TLS files and protocol).
    pub(crate) fn stage(&self, transport: CheckTransport) {
        *self.staged.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(transport));
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
        if let Some(t) = self.staged.lock().unwrap_or_else(PoisonError::into_inner).take() {
            self.transport.store(t);
        }
        if self.spec.is_none() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for i in 0..self.endpoints.len() {
            let checker = Checker { group: Arc::clone(self), index: i };
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Each check opens a fresh connection (not the cluster's pool): it tells whether the
/// endpoint accepts new connections, and never queues behind traffic.
struct Checker {
    group: Arc<HealthGroup>,
    index: usize,
}

impl Checker {
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
        let transport = self.group.transport.load_full();
        match tokio::time::timeout(timeout, http_check(address, path, &transport)).await {
            Ok(Ok(status)) => spec.expected_statuses.contains(&status.as_u16()),
            _ => false,
        }
    }
}

/// One HTTP check on a new connection: TCP, TLS when the cluster has it, then HTTP/1.1 or
/// HTTP/2 as the cluster's protocol (or the endpoint's ALPN) says; answers the status.
async fn http_check(
    address: &Authority,
    path: &str,
    transport: &CheckTransport,
) -> Result<StatusCode, BoxError> {
    let tcp = tokio::net::TcpStream::connect(address.as_str()).await?;
    tcp.set_nodelay(true)?;
    let Some((connector, sni)) = &transport.tls else {
        let h2 = transport.protocol == ClusterProtocol::Http2;
        return exchange(TokioIo::new(tcp), h2, "http", address, path).await;
    };
    let name = match sni {
        Some(n) => n.clone(),
        None => {
            ServerName::try_from(address.host().trim_start_matches('[').trim_end_matches(']').to_owned())?
        }
    };
    let tls = connector.connect(name, tcp).await?;
    let h2 = match transport.protocol {
        ClusterProtocol::Http1 => false,
        ClusterProtocol::Http2 => true,
        ClusterProtocol::Auto => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    };
    exchange(TokioIo::new(tls), h2, "https", address, path).await
}

/// `GET path` over a fresh connection, driven here until the response head is back; the
/// connection closes when this returns. HTTP/2 sends the endpoint as `:authority`,
/// HTTP/1.1 as `Host`.
async fn exchange<IO>(
    io: IO,
    h2: bool,
    scheme: &str,
    address: &Authority,
    path: &str,
) -> Result<StatusCode, BoxError>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let builder = Request::get(path).header(header::USER_AGENT, "pymesh-health-check");
    if h2 {
        let uri = Uri::builder().scheme(scheme).authority(address.clone()).path_and_query(path).build()?;
        let req = builder.uri(uri).body(Empty::<Bytes>::new())?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        let (mut sender, conn) = b.handshake(io).await?;
        let sent = sender.send_request(req);
        Ok(drive(sent, conn).await??.status())
    } else {
        let req = builder.header(header::HOST, address.as_str()).body(Empty::<Bytes>::new())?;
        let (mut sender, conn) = http1::handshake(io).await?;
        let sent = sender.send_request(req);
        Ok(drive(sent, conn).await??.status())
    }
}

/// Wait for the response while driving the connection. A connection that ends first (the
/// server answered and closed) has settled the response already: take it then.
async fn drive<R, C>(sent: R, conn: C) -> Result<R::Output, BoxError>
where
    R: std::future::Future,
    C: std::future::Future,
{
    tokio::pin!(sent, conn);
    tokio::select! {
        biased;
        r = &mut sent => return Ok(r),
        _ = &mut conn => {}
    }
    Ok(sent.await)
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
        group_over(spec, address, CheckTransport::plain())
    }

    fn group_over(
        spec: HealthCheckSpec,
        address: std::net::SocketAddr,
        t: CheckTransport,
    ) -> Arc<HealthGroup> {
        let addresses: Box<[Authority]> = Box::new([address.to_string().parse().unwrap()]);
        let stats = Arc::new(HealthCheckStats::default());
        Arc::new(HealthGroup::new(Some(spec), addresses, vec![Arc::default()], Some(stats), t))
    }

    type Seen = Arc<Mutex<Vec<(http::Version, String)>>>;

    /// A server speaking HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or by ALPN behind TLS
    /// when `tls` is given): 200 on /ok, 503 elsewhere. Records each request's version and
    /// authority (`:authority`, or the `Host` header).
    async fn versatile_server(tls: Option<Arc<rustls::ServerConfig>>) -> (std::net::SocketAddr, Seen) {
        use hyper_util::server::conn::auto;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let log = Arc::clone(&log);
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| req.headers().get(header::HOST).map(|h| h.to_str().unwrap().to_owned()))
                        .unwrap_or_default();
                    log.lock().unwrap().push((req.version(), authority));
                    let status = if req.uri().path() == "/ok" {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let mut resp = http::Response::new(Empty::<Bytes>::new());
                    *resp.status_mut() = status;
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let tls = tls.clone();
                tokio::spawn(async move {
                    let server = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = server.serve_connection(TokioIo::new(sock), service).await;
                        }
                        Some(config) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(sock).await
                            else {
                                return;
                            };
                            let _ = server.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A server config for `localhost` with ALPN h2 and http/1.1, and a client config that
    /// trusts it.
    fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let (server, client) = crate::testing::tls_pair(&[b"h2", b"http/1.1"]);
        (Arc::new(server), Arc::new(client))
    }

    async fn wait_for_failures(g: &HealthGroup, n: u64) {
        let stats = g.stats.as_ref().unwrap();
        for _ in 0..500 {
            if stats.failures.get() >= n {
                return;
            }
            // Poll interval of a bounded wait (5 s): checks run on their own timer.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} failed checks");
    }

    /// Checks of `/ok` over `t` find the endpoint healthy; checks of `/down` find it not.
    async fn good_and_bad_paths(addr: std::net::SocketAddr, t: CheckTransport) {
        let good = group_over(spec(false, Some("/ok")), addr, t.clone());
        let bad = group_over(spec(false, Some("/down")), addr, t);
        good.start();
        bad.start();
        wait_for(&good, true).await;
        wait_for_failures(&bad, 2).await;
        assert!(!bad.endpoint(0).is_healthy());
        good.stop();
        bad.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_checks_speak_h2c_to_http2_clusters() {
        let (addr, seen) = versatile_server(None).await;
        good_and_bad_paths(addr, CheckTransport::new(ClusterProtocol::Http2, None)).await;
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|(v, a)| *v == http::Version::HTTP_2 && *a == addr.to_string()), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_checks_go_over_tls_with_the_protocol_of_the_cluster() {
        let (server, client) = tls_pair();
        let sni = Some(ServerName::try_from("localhost").unwrap());
        for (protocol, version) in [
            (ClusterProtocol::Http1, http::Version::HTTP_11),
            (ClusterProtocol::Http2, http::Version::HTTP_2),
            // The server's ALPN prefers h2.
            (ClusterProtocol::Auto, http::Version::HTTP_2),
        ] {
            // A server of its own per protocol: a stopped checker's last check may still land
            // after the next protocol's checks begin.
            let (addr, seen) = versatile_server(Some(Arc::clone(&server))).await;
            let t = CheckTransport::new(protocol, Some(&(Arc::clone(&client), sni.clone())));
            good_and_bad_paths(addr, t).await;
            let seen = seen.lock().unwrap();
            assert!(seen.iter().any(|(v, _)| *v == version), "{protocol:?}: {seen:?}");
            assert!(seen.iter().all(|(v, _)| *v == version), "{protocol:?}: {seen:?}");
        }
        // A server name the certificate does not cover: the handshake fails, the check too.
        let wrong = Some(ServerName::try_from("other.test").unwrap());
        let (addr, _) = versatile_server(Some(server)).await;
        let t = CheckTransport::new(ClusterProtocol::Http1, Some(&(client, wrong)));
        let g = group_over(spec(false, Some("/ok")), addr, t);
        g.start();
        wait_for_failures(&g, 2).await;
        assert!(!g.endpoint(0).is_healthy());
        assert_eq!(g.stats.as_ref().unwrap().successes.get(), 0);
        g.stop();
    }

    #[test]
    fn a_staged_transport_takes_over_when_the_group_starts() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let g = group(spec(true, None), "127.0.0.1:1".parse().unwrap());
        assert_eq!(g.transport.load().protocol, ClusterProtocol::Http1);
        g.stage(CheckTransport::new(ClusterProtocol::Http2, None));
        // Staged only: a snapshot that is refused after compiling changes nothing.
        assert_eq!(g.transport.load().protocol, ClusterProtocol::Http1);
        g.start();
        assert_eq!(g.transport.load().protocol, ClusterProtocol::Http2);
        g.stop();
    }

    async fn wait_for(g: &HealthGroup, healthy: bool) {
        for _ in 0..500 {
            if g.endpoint(0).is_healthy() == healthy {
                return;
            }
            // Poll interval of a bounded wait (5 s): checks run on their own timer.
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
        wait_for_failures(&bad, 3).await;
        assert!(!bad.endpoint(0).is_healthy());
        assert_eq!(bad.stats.as_ref().unwrap().successes.get(), 0);
        good.stop();
        bad.stop();
    }
}
