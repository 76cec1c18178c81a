//! The engine: its worker threads (workers.rs), the current tables behind one `ArcSwap`, the
//! running listeners, and the control operations (apply, drain, stats).
//!
//! Control operations are serialised by one mutex and run on the caller's thread; requests
//! never take it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value};

use crate::config::Snapshot;
use crate::echo::{self, Echo};
use crate::error::Error;
use crate::http::server::HttpServer;
use crate::listener::{self, Server};
use crate::metrics::{Gauge, Metrics};
use crate::observe::tap::{TapFilter, TapSubscription};
use crate::tables::{self, HealthCache, Tables, UpstreamCache};
use crate::workers::Workers;

/// What requests share: the tables and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) tables: ArcSwap<Tables>,
    pub(crate) metrics: Metrics,
    /// The live tap's subscribers (observe/tap.rs); kept across config changes.
    pub(crate) tap: Arc<crate::observe::tap::Tap>,
}

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Runtime worker threads; `None` is one per CPU.
    pub workers: Option<usize>,
}

/// A listener that is bound and serving.
#[derive(Debug)]
struct Running {
    /// The `listen` string it was bound for: the same name and string keep the socket.
    listen: String,
    slot: usize,
    server: Server,
}

#[derive(Debug, Default)]
struct Control {
    listeners: HashMap<String, Running>,
    next_slot: usize,
    upstreams: UpstreamCache,
    /// The health groups of the serving clusters, whose checkers run.
    health: HealthCache,
    echoes: Vec<Server>,
    /// Servers told to stop, whose connections may still be finishing.
    stopping: Vec<Server>,
    draining: bool,
}

pub struct Engine {
    /// One runtime per worker thread; a proxy listener has one socket and accept loop on each.
    workers: Workers,
    shared: Arc<Shared>,
    control: Mutex<Control>,
}

impl Engine {
    pub fn new(options: EngineOptions) -> Result<Self, Error> {
        let count = match options.workers {
            Some(0) => return Err(Error::config("workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        };
        Ok(Self { workers: Workers::start(count)?, shared: Arc::default(), control: Mutex::default() })
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parse and apply a snapshot in its JSON form.
    pub fn apply_json(&self, text: &str) -> Result<u64, Error> {
        let snap =
            Snapshot::from_json(text).inspect_err(|_| self.shared.metrics.config_apply_errors.inc())?;
        self.apply(&snap)
    }

    /// Compile `snap`, bind its new listeners, and swap it in; then stop the listeners it no
    /// longer names. On any error nothing changes and the old snapshot keeps serving.
    pub fn apply(&self, snap: &Snapshot) -> Result<u64, Error> {
        let result = self.try_apply(snap);
        if result.is_err() {
            self.shared.metrics.config_apply_errors.inc();
            self.shared.metrics.forget_unused();
        }
        result
    }

    fn try_apply(&self, snap: &Snapshot) -> Result<u64, Error> {
        let mut control = self.control();
        if control.draining {
            return Err(Error::internal("the proxy is draining; it takes no new config"));
        }

        // Slots: a listener keeps its socket (and slot) when its name and listen string are
        // unchanged; every other listener gets a new slot and a new socket.
        let mut slots = Vec::with_capacity(snap.listeners.len());
        let mut to_bind = Vec::new();
        let mut next_slot = control.next_slot;
        for (i, spec) in snap.listeners.iter().enumerate() {
            match control.listeners.get(&spec.name) {
                Some(running) if running.listen == spec.listen => slots.push(running.slot),
                _ => {
                    let addr: SocketAddr = spec.listen.parse().map_err(|_| {
                        Error::config(
                            format!("listeners.{i}.listen"),
                            format!("{:?} is not an ip:port address", spec.listen),
                        )
                    })?;
                    slots.push(next_slot);
                    to_bind.push((i, next_slot, addr));
                    next_slot += 1;
                }
            }
        }

        let old_tracer = self.shared.tables.load().tracer.clone();
        let (tables, upstreams) = tables::compile(
            snap,
            &slots,
            &self.shared.metrics,
            &control.upstreams,
            &control.health,
            old_tracer.as_ref(),
        )?;

        // Bind every new socket before anything changes; if one fails, the others close.
        let mut bound = Vec::with_capacity(to_bind.len());
        for (i, slot, addr) in to_bind {
            let socket = listener::bind(addr, self.workers.count()).map_err(|e| {
                Error::bind(format!("listeners.{i}.listen"), format!("cannot bind {addr}: {e}"))
            })?;
            bound.push((i, slot, socket));
        }

        let version = snap.version;
        let health: HealthCache =
            tables.clusters.iter().map(|(name, c)| (name.clone(), Arc::clone(&c.health))).collect();
        self.shared.tables.store(Arc::new(tables));
        self.shared.metrics.config_version.set(i64::try_from(version).unwrap_or(i64::MAX));
        control.upstreams = upstreams;
        control.next_slot = next_slot;

        let _entered = self.workers.enter();
        // Health checkers: start the new groups, stop those no cluster keeps.
        for group in health.values() {
            group.start();
        }
        for (name, old) in std::mem::replace(&mut control.health, health) {
            if !control.health.get(&name).is_some_and(|g| Arc::ptr_eq(g, &old)) {
                old.stop();
            }
        }
        let mut listeners = HashMap::with_capacity(snap.listeners.len());
        for (i, slot, socket) in bound {
            let spec = &snap.listeners[i];
            let server = self.serve_proxy(&spec.name, slot, socket)?;
            defer_accept(&server, spec);
            listeners.insert(spec.name.clone(), Running { listen: spec.listen.clone(), slot, server });
        }
        for spec in &snap.listeners {
            if let Some(running) = control.listeners.remove(&spec.name) {
                if running.listen == spec.listen {
                    // The socket stays; its protocol may not have.
                    defer_accept(&running.server, spec);
                    listeners.insert(spec.name.clone(), running);
                } else {
                    running.server.stop();
                    control.stopping.push(running.server);
                }
            }
        }
        let removed = std::mem::replace(&mut control.listeners, listeners);
        for (_, gone) in removed {
            gone.server.stop();
            control.stopping.push(gone.server);
        }
        control.stopping.retain(|s| s.active.get() > 0);
        Ok(version)
    }

    fn serve_proxy(
        &self,
        name: &str,
        slot: usize,
        socket: Vec<std::net::TcpListener>,
    ) -> Result<Server, Error> {
        let stats = self.shared.metrics.listener(name);
        let shared = Arc::clone(&self.shared);
        listener::serve(
            socket,
            self.workers.handles(),
            Arc::clone(&stats.active_connections),
            Some(stats),
            move |stream, peer, stop| {
                listener::proxy_connection(Arc::clone(&shared), slot, stream, peer, stop)
            },
        )
        .map_err(|e| Error::internal(format!("cannot serve listener {name}: {e}")))
    }

    /// Serve the echo test upstream on `listen`; answers the bound address.
    pub fn start_echo(&self, listen: &str, id: Option<&str>) -> Result<SocketAddr, Error> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| Error::config("listen", format!("{listen:?} is not an ip:port address")))?;
        let socket = listener::bind(addr, self.workers.count())
            .map_err(|e| Error::bind("listen", format!("cannot bind {addr}: {e}")))?;
        let bound = socket[0].local_addr().map_err(|e| Error::internal(e.to_string()))?;
        let id = id.map_or_else(|| bound.to_string(), str::to_owned);
        let echo = Arc::new(Echo::new(&id).map_err(|m| Error::config("id", m))?);
        let _entered = self.workers.enter();
        let http = Arc::new(HttpServer::new(&echo::LIMITS));
        let server = listener::serve(
            socket,
            self.workers.handles(),
            Arc::new(Gauge::default()),
            None,
            move |stream, _peer, stop| {
                let echo = Arc::clone(&echo);
                let http = Arc::clone(&http);
                async move {
                    let handle = move |req| Box::pin(echo::respond(Arc::clone(&echo), req));
                    let stream = crate::lazy::LazyStream::new(stream);
                    http.serve(stream, handle, false, false, stop, None).await;
                }
            },
        )
        .map_err(|e| Error::internal(format!("cannot serve echo: {e}")))?;
        // HTTP: the client speaks first (listener.rs `Server::defer_accept`).
        let _ = server.defer_accept(true);
        self.control().echoes.push(server);
        Ok(bound)
    }

    pub fn version(&self) -> u64 {
        self.shared.tables.load().version
    }

    /// Each listener's name and bound address, sorted by name.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let control = self.control();
        let mut out: Vec<_> = control.listeners.iter().map(|(n, r)| (n.clone(), r.server.addr)).collect();
        out.sort();
        out
    }

    /// Downstream connections open on proxy listeners, including ones being drained.
    pub fn active_connections(&self) -> i64 {
        let control = self.control();
        control.listeners.values().map(|r| r.server.active.get()).sum::<i64>()
            + control.stopping.iter().map(|s| s.active.get()).sum::<i64>()
    }

    /// Stop accepting everywhere and wait up to `timeout` for open connections to finish.
    /// Answers whether they all did. Blocks the calling thread (never a runtime thread).
    pub fn drain(&self, timeout: Duration) -> bool {
        let servers_active: Vec<Arc<Gauge>> = {
            let mut control = self.control();
            control.draining = true;
            let mut gauges = Vec::new();
            for r in control.listeners.values() {
                r.server.stop();
                gauges.push(Arc::clone(&r.server.active));
            }
            for s in control.echoes.iter().chain(&control.stopping) {
                s.stop();
                gauges.push(Arc::clone(&s.active));
            }
            gauges
        };
        let deadline = Instant::now() + timeout;
        loop {
            if servers_active.iter().all(|g| g.get() <= 0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn metrics_text(&self) -> String {
        let mut out = self.shared.metrics.render();
        let tap = &self.shared.tap;
        let _ = write!(
            out,
            "# HELP pymesh_tap_subscribers Live tap subscribers now listening.\n\
             # TYPE pymesh_tap_subscribers gauge\npymesh_tap_subscribers {}\n\
             # HELP pymesh_tap_records_total Request records published to the live tap.\n\
             # TYPE pymesh_tap_records_total counter\npymesh_tap_records_total {}\n\
             # HELP pymesh_tap_dropped_total Tap records a slow subscriber lost (its queue was full).\n\
             # TYPE pymesh_tap_dropped_total counter\npymesh_tap_dropped_total {}\n",
            tap.subscribers(),
            tap.records.get(),
            tap.dropped.get(),
        );
        out
    }

    /// Listen to the live tap: a record of every finished HTTP request that `filter` takes.
    /// Records come through a bounded queue: a subscriber that reads too slowly loses
    /// records (counted in `pymesh_tap_dropped_total`). Dropping the subscription leaves.
    pub fn tap(&self, filter: &TapFilter) -> Result<TapSubscription, Error> {
        self.shared.tap.subscribe(filter, crate::observe::tap::QUEUE_CAPACITY)
    }

    /// Live tap subscribers now listening.
    pub fn tap_subscribers(&self) -> usize {
        self.shared.tap.subscribers()
    }

    /// Counters and gauges as one JSON object, for `GET /stats`.
    pub fn stats_json(&self) -> String {
        let metrics = &self.shared.metrics;
        let tables = self.shared.tables.load();
        let mut listeners = Map::new();
        let mut downstream = 0;
        for (name, addr) in self.listeners() {
            let stats = metrics.listener(&name);
            downstream += stats.active_connections.get();
            listeners.insert(
                name.clone(),
                json!({
                    "address": addr.to_string(),
                    "active_connections": stats.active_connections.get(),
                    "connections_total": stats.connections_total.get(),
                    "requests_total": metrics.listener_requests(&name),
                }),
            );
        }
        let mut clusters = Map::new();
        let mut upstream = 0;
        for (name, cluster) in &tables.clusters {
            let stats = &cluster.upstream.stats;
            upstream += stats.active_connections.get();
            let endpoints: Vec<Value> =
                cluster.endpoints().map(|e| Value::from(e.authority.as_str())).collect();
            let endpoint_status: Vec<Value> = cluster
                .endpoints()
                .enumerate()
                .map(|(i, e)| {
                    let ejected = cluster.policy.outlier.as_ref().is_some_and(|o| o.is_ejected(i));
                    json!({
                        "address": e.authority.as_str(),
                        "weight": e.weight,
                        "healthy": cluster.is_healthy(i),
                        "ejected": ejected,
                    })
                })
                .collect();
            clusters.insert(
                name.clone(),
                json!({
                    "endpoints": endpoints,
                    "endpoint_status": endpoint_status,
                    "requests_total": metrics.cluster_requests(name),
                    "active_connections": stats.active_connections.get(),
                    "connections_total": stats.connections_total.get(),
                    "connect_failures_total": stats.connect_failures.get(),
                    "upstream_errors_total": stats.upstream_errors.get(),
                }),
            );
        }
        json!({
            "version": tables.version,
            "listeners": listeners,
            "clusters": clusters,
            "requests_total": metrics.requests_total(),
            "active_downstream_connections": downstream,
            "active_upstream_connections": upstream,
            "config_apply_errors_total": metrics.config_apply_errors.get(),
            "access_log_dropped_total": metrics.access_log_dropped.get(),
            "tap": {
                "subscribers": self.shared.tap.subscribers(),
                "records_total": self.shared.tap.records.get(),
                "dropped_total": self.shared.tap.dropped.get(),
            },
        })
        .to_string()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        {
            let control = self.control();
            for r in control.listeners.values() {
                r.server.stop();
            }
            for s in control.echoes.iter().chain(&control.stopping) {
                s.stop();
            }
        }
        // The workers stop and their threads are joined when `workers` drops, after this.
    }
}

/// Defer accepting a listener's connections until the client speaks (listener.rs
/// `Server::defer_accept`) where the client speaks first: HTTP (plaintext or TLS) and TLS
/// passthrough; not raw TCP, whose server may greet first. Setting a TCP option on a live
/// listening socket does not fail; if it did, connections would still be accepted, later or
/// sooner, so an error leaves the apply as it is.
fn defer_accept(server: &listener::Server, spec: &crate::config::ListenerSpec) {
    let client_first = !matches!(spec.protocol, crate::config::ListenerProtocol::Tcp);
    let _ = server.defer_accept(client_first);
}

#[cfg(test)]
mod tests;
