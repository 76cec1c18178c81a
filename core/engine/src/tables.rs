//! Compiling a snapshot into the runtime tables that requests read.
//!
//! Compilation is pure apart from metric handles: it binds no socket and changes nothing
//! that serves traffic, so a snapshot that fails here leaves the running one untouched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::health::HealthGroup;
use crate::cluster::Cluster;
use crate::config::{ListenerProtocol, ListenerSpec, RouteSpec, Snapshot, WeightedClusterSpec};
use crate::error::Error;
use crate::http::actions::{ForwardActions, Local};
use crate::http::client::{PoolSettings, Upstream};
use crate::http::limits::HttpLimits;
use crate::http::server::HttpServer;
use crate::metrics::{ListenerStats, Metrics, StatusCounters};
use crate::observe::Observe;
use crate::router::{Route, RouteAction, RouteMatch, Router, Target, Weighted};
use crate::tcp::{SniPattern, SniRouter, Split};

/// One listener's compiled routes and metric handles.
#[derive(Debug)]
pub(crate) struct ListenerTable {
    pub(crate) router: Router,
    /// Answers given before a route was chosen (404 no route matched).
    pub(crate) unrouted: Arc<StatusCounters>,
    /// What the listener's connections speak, read once per connection.
    pub(crate) kind: Arc<ListenerKind>,
}

/// How a listener's connections are handled.
#[derive(Debug)]
pub(crate) enum ListenerKind {
    /// HTTP/1.1 and HTTP/2; TLS first when configured.
    Http(Box<HttpListener>),
    Tcp {
        split: Split,
        idle: Duration,
    },
    TlsPassthrough {
        router: SniRouter,
        idle: Duration,
    },
}

/// An HTTP listener's connection settings, read once per connection.
#[derive(Debug)]
pub(crate) struct HttpListener {
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) server: HttpServer,
    pub(crate) limits: HttpLimits,
    /// Where refusals are counted: by kind, and as answers given before routing.
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) unrouted: Arc<StatusCounters>,
    /// Access log and tracing settings (observe.rs).
    pub(crate) observe: Arc<Observe>,
}

/// Everything a request reads, swapped as one value.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) version: u64,
    /// Indexed by listener slot: a slot is given to a bound socket once and kept for as long
    /// as that socket serves, so accept loops never look a listener up by name.
    pub(crate) listeners: Vec<Option<ListenerTable>>,
    pub(crate) clusters: BTreeMap<String, Arc<Cluster>>,
}

impl Tables {
    #[inline]
    pub(crate) fn listener(&self, slot: usize) -> Option<&ListenerTable> {
        self.listeners.get(slot).and_then(Option::as_ref)
    }
}

/// The upstream clients by cluster name, kept from one apply to the next so that a cluster
/// whose pool settings did not change keeps its warm connections.
pub(crate) type UpstreamCache = HashMap<String, Arc<Upstream>>;

/// The health groups by cluster name, kept from one apply to the next so that a cluster whose
/// health checks and endpoints did not change keeps its checkers and what they found.
pub(crate) type HealthCache = HashMap<String, Arc<HealthGroup>>;

/// Compile `snap`. `slots[i]` is the slot of `snap.listeners[i]`. Answers the tables and the
/// upstream cache to keep if they are swapped in.
pub(crate) fn compile(
    snap: &Snapshot,
    slots: &[usize],
    metrics: &Metrics,
    old_upstreams: &UpstreamCache,
    old_health: &HealthCache,
) -> Result<(Tables, UpstreamCache), Error> {
    let mut upstreams = UpstreamCache::new();
    let mut clusters = BTreeMap::new();
    for (i, spec) in snap.clusters.iter().enumerate() {
        let path = format!("clusters.{i}");
        check_name(&spec.name, &format!("{path}.name"))?;
        if clusters.contains_key(&spec.name) {
            return Err(Error::config(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", spec.name),
            ));
        }
        let settings = PoolSettings {
            connect_timeout: positive_ms(spec.connect_timeout_ms, &format!("{path}.connect_timeout_ms"))?,
            max_idle_per_endpoint: spec.max_idle_per_endpoint,
            idle_timeout: positive_ms(spec.idle_timeout_ms, &format!("{path}.idle_timeout_ms"))?,
            protocol: spec.protocol,
            max_connections: spec
                .policy
                .as_ref()
                .and_then(|p| p.circuit_breaker.as_ref())
                .map(|b| b.max_connections),
        };
        let tls = match &spec.tls {
            Some(t) => Some((crate::tls::client_config(t, &format!("{path}.tls"))?, t.sni.clone())),
            None => None,
        };
        // A TLS cluster gets a new client on every apply, so that certificate files are
        // read again (the point of re-applying); plaintext pools survive unchanged settings.
        let upstream = match old_upstreams.get(&spec.name) {
            Some(u) if u.settings == settings && tls.is_none() && !u.is_tls() => Arc::clone(u),
            _ => Arc::new(Upstream::new(settings, tls, metrics.cluster(&spec.name))),
        };
        upstreams.insert(spec.name.clone(), Arc::clone(&upstream));
        let cluster = Cluster::compile(spec, &path, upstream, old_health.get(&spec.name), metrics)?;
        clusters.insert(spec.name.clone(), Arc::new(cluster));
    }

    let max_slot = slots.iter().copied().max().map_or(0, |m| m + 1);
    let mut listeners: Vec<Option<ListenerTable>> = (0..max_slot).map(|_| None).collect();
    let mut names = HashSet::new();
    for (i, spec) in snap.listeners.iter().enumerate() {
        let path = format!("listeners.{i}");
        check_name(&spec.name, &format!("{path}.name"))?;
        if !names.insert(spec.name.as_str()) {
            return Err(Error::config(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", spec.name),
            ));
        }
        let mut routes = Vec::with_capacity(spec.routes.len());
        let mut route_names = HashSet::new();
        for (j, r) in spec.routes.iter().enumerate() {
            let rpath = format!("{path}.routes.{j}");
            if !route_names.insert(r.name.as_str()) {
                return Err(Error::config(
                    format!("{rpath}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            let route = compile_route(r, &rpath, &spec.name, &clusters, metrics)?;
            routes.push(route);
        }
        let unrouted = metrics.target(&spec.name, "", "");
        let kind = compile_kind(spec, &path, &clusters, metrics, &unrouted)?;
        let table = ListenerTable { router: Router::new(routes), unrouted, kind: Arc::new(kind) };
        listeners[slots[i]] = Some(table);
    }
    Ok((Tables { version: snap.version, listeners, clusters }, upstreams))
}

fn compile_kind(
    spec: &ListenerSpec,
    path: &str,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    metrics: &Metrics,
    unrouted: &Arc<StatusCounters>,
) -> Result<ListenerKind, Error> {
    let only = |present: bool, field: &str, proto: &str| {
        if present {
            Err(Error::config(format!("{path}.{field}"), format!("only a {proto} listener takes {field}")))
        } else {
            Ok(())
        }
    };
    let idle = || positive_ms(spec.idle_timeout_ms, &format!("{path}.idle_timeout_ms"));
    match spec.protocol {
        ListenerProtocol::Http => {
            only(!spec.to.is_empty(), "to", "tcp")?;
            only(!spec.sni_routes.is_empty(), "sni_routes", "tls-passthrough")?;
            let tls = match &spec.tls {
                Some(t) => Some(crate::tls::server_config(t, &format!("{path}.tls"))?),
                None => None,
            };
            let Some(limits) = &spec.limits else {
                return Err(Error::config(format!("{path}.limits"), "an http listener needs limits"));
            };
            let limits = HttpLimits::compile(limits, &format!("{path}.limits"))?;
            Ok(ListenerKind::Http(Box::new(HttpListener {
                tls,
                server: HttpServer::new(&limits),
                limits,
                stats: metrics.listener(&spec.name),
                unrouted: Arc::clone(unrouted),
                observe: Arc::new(Observe {
                    listener: spec.name.as_str().into(),
                    access_log: None,
                    tracer: None,
                }),
            })))
        }
        ListenerProtocol::Tcp => {
            only(!spec.routes.is_empty(), "routes", "http")?;
            only(spec.tls.is_some(), "tls", "http")?;
            only(spec.limits.is_some(), "limits", "http")?;
            only(!spec.sni_routes.is_empty(), "sni_routes", "tls-passthrough")?;
            Ok(ListenerKind::Tcp { split: split(&spec.to, &format!("{path}.to"), clusters)?, idle: idle()? })
        }
        ListenerProtocol::TlsPassthrough => {
            only(!spec.routes.is_empty(), "routes", "http")?;
            only(spec.tls.is_some(), "tls", "http")?;
            only(spec.limits.is_some(), "limits", "http")?;
            only(!spec.to.is_empty(), "to", "tcp")?;
            let mut routes = Vec::with_capacity(spec.sni_routes.len());
            for (j, r) in spec.sni_routes.iter().enumerate() {
                let rpath = format!("{path}.sni_routes.{j}");
                let pattern =
                    SniPattern::parse(&r.sni).map_err(|m| Error::config(format!("{rpath}.sni"), m))?;
                routes.push((pattern, split(&r.to, &format!("{rpath}.to"), clusters)?));
            }
            Ok(ListenerKind::TlsPassthrough { router: SniRouter { routes: routes.into() }, idle: idle()? })
        }
    }
}

fn split(
    to: &[WeightedClusterSpec],
    path: &str,
    clusters: &BTreeMap<String, Arc<Cluster>>,
) -> Result<Split, Error> {
    let mut weighted = Vec::with_capacity(to.len());
    for (k, w) in to.iter().enumerate() {
        let cluster = clusters.get(&w.cluster).ok_or_else(|| {
            Error::config(format!("{path}.{k}.cluster"), format!("unknown cluster {:?}", w.cluster))
        })?;
        weighted.push((w.weight, Arc::clone(cluster)));
    }
    if weighted.iter().map(|(w, _)| u64::from(*w)).sum::<u64>() == 0 {
        return Err(Error::config(path, "give a cluster with a positive weight"));
    }
    Ok(Split::new(weighted))
}

// === routes ===

/// Compile one route: its match, and exactly one of its three actions.
fn compile_route(
    r: &RouteSpec,
    rpath: &str,
    listener: &str,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    metrics: &Metrics,
) -> Result<Route, Error> {
    let matcher = RouteMatch::compile(&r.matcher, &format!("{rpath}.match"))?;
    let route_stats = metrics.route(listener, &r.name);
    let forwards = !r.to.is_empty();
    if usize::from(forwards) + usize::from(r.direct_response.is_some()) + usize::from(r.redirect.is_some())
        != 1
    {
        return Err(Error::config(rpath, "set exactly one of to (non-empty), direct_response and redirect"));
    }
    if !forwards {
        let unused = [
            ("rewrite", r.rewrite.path_prefix.is_some() || r.rewrite.host.is_some()),
            (
                "request_headers",
                !r.request_headers.set.is_empty()
                    || !r.request_headers.add.is_empty()
                    || !r.request_headers.remove.is_empty(),
            ),
        ];
        if r.policy.is_some() {
            return Err(Error::config(
                format!("{rpath}.policy"),
                "traffic policies apply only to forwarded requests (a route with to)",
            ));
        }
        if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(Error::config(
                format!("{rpath}.{field}"),
                "applies only to forwarded requests (a route with to)",
            ));
        }
        // Local answers count under the route with an empty cluster label.
        let counters = metrics.target(listener, &r.name, "");
        let local = match (&r.direct_response, &r.redirect) {
            (Some(d), _) => Local::direct(d, &r.response_headers, rpath, counters, route_stats)?,
            (_, Some(rd)) => {
                Local::redirect(rd, &r.response_headers, &matcher.path, rpath, counters, route_stats)?
            }
            (None, None) => unreachable!("checked above"),
        };
        return Ok(Route::new(r.name.as_str().into(), matcher, RouteAction::Local(local)));
    }
    let actions = Arc::new(ForwardActions::compile(
        &r.rewrite,
        &r.request_headers,
        &r.response_headers,
        &matcher.path,
        rpath,
    )?);
    let policy =
        crate::policy::RoutePolicy::compile(r.policy.as_ref(), rpath, clusters, Arc::clone(&route_stats))?
            .map(Arc::new);
    let mut weighted = Vec::with_capacity(r.to.len());
    for (k, w) in r.to.iter().enumerate() {
        let cluster = clusters.get(&w.cluster).ok_or_else(|| {
            Error::config(format!("{rpath}.to.{k}.cluster"), format!("unknown cluster {:?}", w.cluster))
        })?;
        if policy.as_ref().is_some_and(|p| p.retry.is_some()) {
            cluster.policy.budget.enable();
        }
        let target = Target {
            cluster: Arc::clone(cluster),
            counters: metrics.target(listener, &r.name, &w.cluster),
            route_stats: Arc::clone(&route_stats),
            actions: Arc::clone(&actions),
            policy: policy.clone(),
        };
        weighted.push((w.weight, Arc::new(target)));
    }
    let total: u64 = weighted.iter().map(|(w, _)| u64::from(*w)).sum();
    if total == 0 {
        return Err(Error::config(format!("{rpath}.to"), "a route needs a cluster with a positive weight"));
    }
    if total > u64::from(u32::MAX) {
        return Err(Error::config(format!("{rpath}.to"), "the weights add up to more than 2^32-1"));
    }
    Ok(Route::new(r.name.as_str().into(), matcher, RouteAction::Forward(Weighted::new(weighted))))
}

fn check_name(name: &str, path: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(path, format!("{name:?} is not a name: use 1-128 of A-Z a-z 0-9 _ . -")))
    }
}

fn positive_ms(ms: u64, path: &str) -> Result<Duration, Error> {
    if ms == 0 {
        return Err(Error::config(path, "must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests;
