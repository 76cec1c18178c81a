//! Compiling a snapshot into the runtime tables that requests read.
//!
//! Compilation is pure apart from metric handles: it binds no socket and changes nothing
//! that serves traffic, so a snapshot that fails here leaves the running one untouched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::health::HealthGroup;
use crate::cluster::Cluster;
use crate::config::{MatchSpec, Snapshot};
use crate::error::Error;
use crate::http::client::{PoolSettings, Upstream};
use crate::metrics::{Metrics, StatusCounters};
use crate::router::{PathMatch, Route, Router, Target};

/// One listener's compiled routes and metric handles.
#[derive(Debug)]
pub(crate) struct ListenerTable {
    pub(crate) router: Router,
    /// Answers given before a route was chosen (404 no route matched).
    pub(crate) unrouted: Arc<StatusCounters>,
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
        };
        let upstream = match old_upstreams.get(&spec.name) {
            Some(u) if u.settings == settings => Arc::clone(u),
            _ => Arc::new(Upstream::new(settings, metrics.cluster(&spec.name))),
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
            let matcher = compile_match(&r.matcher, &format!("{rpath}.match"))?;
            let route_stats = metrics.route(&spec.name, &r.name);
            let mut weighted = Vec::with_capacity(r.to.len());
            for (k, w) in r.to.iter().enumerate() {
                let cluster = clusters.get(&w.cluster).ok_or_else(|| {
                    Error::config(
                        format!("{rpath}.to.{k}.cluster"),
                        format!("unknown cluster {:?}", w.cluster),
                    )
                })?;
                let target = Target {
                    cluster: Arc::clone(cluster),
                    counters: metrics.target(&spec.name, &r.name, &w.cluster),
                    route_stats: Arc::clone(&route_stats),
                };
                weighted.push((w.weight, Arc::new(target)));
            }
            if weighted.iter().map(|(w, _)| u64::from(*w)).sum::<u64>() == 0 {
                return Err(Error::config(
                    format!("{rpath}.to"),
                    "a route needs a cluster with a positive weight",
                ));
            }
            if weighted.iter().map(|(w, _)| u64::from(*w)).sum::<u64>() > u64::from(u32::MAX) {
                return Err(Error::config(format!("{rpath}.to"), "the weights add up to more than 2^32-1"));
            }
            routes.push(Route::new(r.name.as_str().into(), matcher, weighted));
        }
        let table =
            ListenerTable { router: Router::new(routes), unrouted: metrics.target(&spec.name, "", "") };
        listeners[slots[i]] = Some(table);
    }
    Ok((Tables { version: snap.version, listeners, clusters }, upstreams))
}

fn compile_match(m: &MatchSpec, path: &str) -> Result<PathMatch, Error> {
    let (field, value, matcher): (_, _, fn(Box<str>) -> PathMatch) = match (&m.path, &m.path_prefix) {
        (Some(p), None) => ("path", p, PathMatch::Exact),
        (None, Some(p)) => ("path_prefix", p, PathMatch::Prefix),
        _ => return Err(Error::config(path, "set exactly one of path and path_prefix")),
    };
    if !value.starts_with('/') {
        return Err(Error::config(format!("{path}.{field}"), format!("{value:?} must start with \"/\"")));
    }
    Ok(matcher(value.as_str().into()))
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
