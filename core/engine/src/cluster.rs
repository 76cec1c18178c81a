//! Clusters: a named set of endpoints, the balancer that picks among those in rotation, their
//! health, and the pooled upstream client that carries requests to them.

mod ewma;
pub(crate) mod health;
mod lb;
mod least_request;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderName, COOKIE};
use http::uri::Authority;
use http::HeaderMap;

use crate::config::{ClusterSpec, HashOnSpec, HealthCheckSpec, LbKind};
use crate::error::Error;
use crate::http::client::Upstream;
use crate::metrics::Metrics;
use crate::policy::outlier::Outlier;
use crate::policy::ClusterPolicy;
use health::{CheckTransport, HealthGroup};
use lb::{Balancer, InFlight, Load, Member, PickContext};

/// The most an endpoint's weight may be (a bound that keeps ring and schedule sizes sane).
pub(crate) const MAX_WEIGHT: u32 = 1000;

/// One endpoint of a compiled cluster.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) authority: Authority,
    pub(crate) weight: u32,
    load: Arc<Load>,
}

/// A compiled cluster. Immutable but for atomics: endpoint loads, and the rotation, which is
/// rebuilt when health checks move an endpoint in or out.
#[derive(Debug)]
pub(crate) struct Cluster {
    // Read by tests today, and by access logs and tracing when they come.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: Arc<str>,
    endpoints: Box<[Endpoint]>,
    lb: LbKind,
    hash_on: Option<HashOn>,
    panic_threshold_percent: u32,
    pub(crate) health: Arc<HealthGroup>,
    rotation: ArcSwap<Rotation>,
    rebuilding: AtomicBool,
    pub(crate) upstream: Arc<Upstream>,
    /// Circuit breaker, outlier detection and retry budget (policy/).
    pub(crate) policy: ClusterPolicy,
}

/// The balancer over the endpoints in rotation, for one health epoch.
#[derive(Debug)]
struct Rotation {
    epoch: u64,
    /// The outlier detector's epoch it was built for (0 without outlier detection).
    ejection_epoch: u64,
    /// Endpoint index of each balancer member.
    members: Box<[usize]>,
    balancer: Box<dyn Balancer>,
}

/// Where a hashing balancer finds a request's key.
#[derive(Debug)]
enum HashOn {
    Header(HeaderName),
    Cookie(Box<str>),
    SourceIp,
}

impl Cluster {
    /// Compile a cluster spec (`path` is its place in the snapshot, for errors). `old_health`
    /// is the cluster's health group in the serving snapshot, kept if it still fits.
    pub(crate) fn compile(
        spec: &ClusterSpec,
        path: &str,
        upstream: Arc<Upstream>,
        old_health: Option<&Arc<HealthGroup>>,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        if spec.endpoints.is_empty() {
            return Err(Error::config(format!("{path}.endpoints"), "a cluster needs at least one endpoint"));
        }
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for (i, e) in spec.endpoints.iter().enumerate() {
            let at = format!("{path}.endpoints.{i}");
            let authority = parse_endpoint(e.address()).map_err(|m| Error::config(&at, m))?;
            if endpoints.iter().any(|x: &Endpoint| x.authority == authority) {
                return Err(Error::config(&at, format!("duplicate endpoint {:?}", e.address())));
            }
            let weight = e.weight();
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(Error::config(format!("{at}.weight"), format!("must be 1..={MAX_WEIGHT}")));
            }
            endpoints.push(Endpoint { authority, weight, load: Arc::default() });
        }
        let hash_on = compile_hash_on(spec.lb, spec.hash_on.as_ref(), &format!("{path}.hash_on"))?;
        if spec.panic_threshold_percent > 100 {
            return Err(Error::config(format!("{path}.panic_threshold_percent"), "must be 0..=100"));
        }
        if let Some(hc) = &spec.health_check {
            check_health_spec(hc, &format!("{path}.health_check"))?;
        }
        // HTTP checks speak the cluster's protocol, over its TLS when it has some.
        let transport = CheckTransport::new(spec.protocol, upstream.tls.as_ref());

        let addresses: Box<[Authority]> = endpoints.iter().map(|e| e.authority.clone()).collect();
        let health = match old_health {
            Some(g) if g.fits(spec.health_check.as_ref(), &addresses) => {
                g.stage(transport);
                Arc::clone(g)
            }
            _ => {
                let gauges =
                    addresses.iter().map(|a| metrics.endpoint_health(&spec.name, a.as_str())).collect();
                let stats = spec.health_check.as_ref().map(|_| metrics.health_checks(&spec.name));
                Arc::new(HealthGroup::new(spec.health_check.clone(), addresses, gauges, stats, transport))
            }
        };
        let policy = ClusterPolicy::compile(spec.policy.as_ref(), path, endpoints.len(), &upstream.stats)?;
        let rotation = build_rotation(
            &endpoints,
            &health,
            policy.outlier.as_ref(),
            spec.lb,
            spec.panic_threshold_percent,
        );
        Ok(Self {
            name: spec.name.as_str().into(),
            endpoints: endpoints.into(),
            lb: spec.lb,
            hash_on,
            panic_threshold_percent: spec.panic_threshold_percent,
            health,
            rotation: ArcSwap::from_pointee(rotation),
            rebuilding: AtomicBool::new(false),
            upstream,
            policy,
        })
    }

    /// The endpoint for this request, and the guard that counts it in flight until dropped;
    /// `None` when no endpoint is in rotation. `peer` is the client's address.
    #[inline]
    pub(crate) fn pick(&self, headers: &HeaderMap, peer: SocketAddr) -> Option<(&Authority, InFlight<'_>)> {
        self.pick_indexed(headers, peer).map(|(_, a, g)| (a, g))
    }

    /// As [`Cluster::pick`], with the endpoint's index (for `policy.outlier.observe`).
    #[inline]
    pub(crate) fn pick_indexed(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Option<(usize, &Authority, InFlight<'_>)> {
        let hash = self.hash_on.as_ref().and_then(|h| h.hash(headers, peer));
        self.pick_with(PickContext { hash }, self.lb == LbKind::Ewma)
    }

    /// The endpoint for a new TCP connection from `peer` (listeners with `protocol: tcp` or
    /// TLS passthrough): only `source_ip` is a key there, and the guard counts the connection
    /// in flight without timing it (a connection's length is not a latency).
    pub(crate) fn pick_connection(&self, peer: SocketAddr) -> Option<(&Authority, InFlight<'_>)> {
        let hash = match self.hash_on {
            Some(HashOn::SourceIp) => HashOn::SourceIp.hash(&HeaderMap::new(), peer),
            _ => None,
        };
        self.pick_with(PickContext { hash }, false).map(|(_, a, g)| (a, g))
    }

    /// The outlier detector's epoch, after ending the ejections that are due (0 without one).
    #[inline]
    fn ejection_epoch(&self) -> u64 {
        // --- policy: outlier ejection (policy/outlier.rs) takes endpoints out of rotation
        // like failed health checks; its epoch moves on every ejection and return ---
        self.policy.outlier.as_ref().map_or(0, |o| {
            o.tick();
            o.epoch()
        })
    }

    #[inline]
    fn pick_with(&self, ctx: PickContext, timed: bool) -> Option<(usize, &Authority, InFlight<'_>)> {
        let mut rotation = self.rotation.load();
        if rotation.epoch != self.health.epoch() || rotation.ejection_epoch != self.ejection_epoch() {
            self.rebuild();
            rotation = self.rotation.load();
        }
        let member = rotation.balancer.pick(&ctx)?;
        let index = rotation.members[member];
        let endpoint = &self.endpoints[index];
        // Only the balancers that read load pay for counting it (a shared atomic per request).
        let guard = match self.lb {
            LbKind::LeastRequest | LbKind::Ewma => endpoint.load.start(timed),
            _ => InFlight::untracked(),
        };
        Some((index, &endpoint.authority, guard))
    }

    /// Rebuild the rotation for a new health epoch. One request does it; the others keep
    /// using the previous rotation meanwhile.
    #[cold]
    fn rebuild(&self) {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let current = self.rotation.load();
        if current.epoch != self.health.epoch() || current.ejection_epoch != self.ejection_epoch() {
            let rotation = build_rotation(
                &self.endpoints,
                &self.health,
                self.policy.outlier.as_ref(),
                self.lb,
                self.panic_threshold_percent,
            );
            self.rotation.store(Arc::new(rotation));
        }
        self.rebuilding.store(false, Ordering::Release);
    }

    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter()
    }

    /// Whether endpoint `i` is healthy (always, without health checks).
    pub(crate) fn is_healthy(&self, i: usize) -> bool {
        self.health.endpoint(i).is_healthy()
    }
}

/// The endpoints in rotation: the healthy ones (and not ejected by outlier detection), or all
/// of them when fewer than the panic threshold's share are (Envoy's panic mode: better to try
/// every endpoint than to crush the few that are left). The epochs are read first, so a
/// transition during the build leaves the rotation stale and the next pick rebuilds it again.
fn build_rotation(
    endpoints: &[Endpoint],
    health: &HealthGroup,
    outlier: Option<&Outlier>,
    lb: LbKind,
    panic_threshold: u32,
) -> Rotation {
    let epoch = health.epoch();
    let ejection_epoch = outlier.map_or(0, Outlier::epoch);
    let healthy: Vec<usize> = (0..endpoints.len())
        .filter(|&i| health.endpoint(i).is_healthy() && !outlier.is_some_and(|o| o.is_ejected(i)))
        .collect();
    let panic = (healthy.len() as u64) * 100 < u64::from(panic_threshold) * endpoints.len() as u64;
    let members: Box<[usize]> = if panic { (0..endpoints.len()).collect() } else { healthy.into() };
    let balanced: Vec<Member> = members
        .iter()
        .map(|&i| {
            let e = &endpoints[i];
            Member { key: e.authority.as_str().into(), weight: e.weight, load: Arc::clone(&e.load) }
        })
        .collect();
    Rotation { epoch, ejection_epoch, balancer: lb::build(lb, &balanced), members }
}

fn compile_hash_on(lb: LbKind, spec: Option<&HashOnSpec>, path: &str) -> Result<Option<HashOn>, Error> {
    let Some(spec) = spec else {
        if lb.is_hashing() {
            return Err(Error::config(
                path,
                "ring_hash and maglev need hash_on (header, cookie or source_ip)",
            ));
        }
        return Ok(None);
    };
    if !lb.is_hashing() {
        return Err(Error::config(path, "hash_on is only for the ring_hash and maglev balancers"));
    }
    match (&spec.header, &spec.cookie, spec.source_ip) {
        (Some(h), None, false) => HeaderName::from_bytes(h.as_bytes())
            .map(|n| Some(HashOn::Header(n)))
            .map_err(|_| Error::config(format!("{path}.header"), format!("{h:?} is not a header name"))),
        (None, Some(c), false) => {
            let ok = !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if ok {
                Ok(Some(HashOn::Cookie(c.as_str().into())))
            } else {
                Err(Error::config(format!("{path}.cookie"), format!("{c:?} is not a cookie name")))
            }
        }
        (None, None, true) => Ok(Some(HashOn::SourceIp)),
        _ => Err(Error::config(path, "set exactly one of header, cookie and source_ip")),
    }
}

fn check_health_spec(hc: &HealthCheckSpec, path: &str) -> Result<(), Error> {
    match (&hc.path, hc.tcp) {
        (None, true) => {}
        (Some(p), false) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {}
        (Some(p), false) => {
            return Err(Error::config(format!("{path}.path"), format!("{p:?} is not a request path")));
        }
        _ => return Err(Error::config(path, "set path for an HTTP check, or tcp for a TCP check, not both")),
    }
    if !hc.tcp
        && (hc.expected_statuses.is_empty() || hc.expected_statuses.iter().any(|s| !(100..=599).contains(s)))
    {
        return Err(Error::config(
            format!("{path}.expected_statuses"),
            "list one or more statuses 100..=599",
        ));
    }
    for (field, v) in [("interval_ms", hc.interval_ms), ("timeout_ms", hc.timeout_ms)] {
        if v == 0 {
            return Err(Error::config(format!("{path}.{field}"), "must be greater than zero"));
        }
    }
    for (field, v) in
        [("healthy_threshold", hc.healthy_threshold), ("unhealthy_threshold", hc.unhealthy_threshold)]
    {
        if v == 0 {
            return Err(Error::config(format!("{path}.{field}"), "must be at least 1"));
        }
    }
    Ok(())
}

// === impl HashOn ===

impl HashOn {
    /// The hash of the request's key (from its `headers`, or the client's address `peer`);
    /// `None` when the request has none.
    #[inline]
    fn hash(&self, headers: &HeaderMap, peer: SocketAddr) -> Option<u64> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| lb::hash_key(v.as_bytes())),
            Self::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes()))
                .map(lb::hash_key),
            Self::SourceIp => Some(match peer.ip().to_canonical() {
                std::net::IpAddr::V4(ip) => lb::hash_key(&ip.octets()),
                std::net::IpAddr::V6(ip) => lb::hash_key(&ip.octets()),
            }),
        }
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`). By hand: a scan of the
/// header's bytes, where a cookie crate would allocate a parsed jar per request.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// An endpoint is `host:port` with a port; nothing else (no scheme, path or user info).
pub(crate) fn parse_endpoint(text: &str) -> Result<Authority, String> {
    let authority: Authority =
        text.parse().map_err(|e| format!("{text:?} is not a host:port endpoint ({e})"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{text:?}: user info is not allowed in an endpoint"));
    }
    match authority.port_u16() {
        Some(0) | None => Err(format!("{text:?} needs a port from 1 to 65535")),
        Some(_) => Ok(authority),
    }
}

#[cfg(test)]
mod tests;
