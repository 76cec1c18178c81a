//! Clusters: a named set of endpoints, the balancer that picks among them, and the pooled
//! upstream client that carries requests to them.

mod lb;

use std::sync::Arc;

use http::uri::Authority;

use crate::config::{ClusterSpec, LbKind};
use crate::error::Error;
use crate::http::client::Upstream;
use crate::policy::ClusterPolicy;
use lb::RoundRobin;

/// A compiled cluster. Immutable but for the balancer's own atomic state.
#[derive(Debug)]
pub(crate) struct Cluster {
    // Read by tests today, and by access logs and tracing when they come.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: Arc<str>,
    endpoints: Box<[Authority]>,
    lb: RoundRobin,
    pub(crate) upstream: Arc<Upstream>,
    /// Circuit breaker, outlier detection and retry budget (policy/).
    pub(crate) policy: ClusterPolicy,
}

impl Cluster {
    /// Compile a cluster spec (`path` is its place in the snapshot, for errors).
    pub(crate) fn compile(spec: &ClusterSpec, path: &str, upstream: Arc<Upstream>) -> Result<Self, Error> {
        if spec.endpoints.is_empty() {
            return Err(Error::config(format!("{path}.endpoints"), "a cluster needs at least one endpoint"));
        }
        let endpoints = spec
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| parse_endpoint(e).map_err(|m| Error::config(format!("{path}.endpoints.{i}"), m)))
            .collect::<Result<Box<[_]>, _>>()?;
        let lb = match spec.lb {
            LbKind::RoundRobin => RoundRobin::default(),
        };
        let policy = ClusterPolicy::compile(spec.policy.as_ref(), path, endpoints.len(), &upstream.stats)?;
        Ok(Self { name: spec.name.as_str().into(), endpoints, lb, upstream, policy })
    }

    /// The endpoint for the next request, and its index (for `policy.outlier.observe`).
    #[inline]
    pub(crate) fn pick(&self) -> (usize, &Authority) {
        let len = self.endpoints.len();
        let mut i = self.lb.pick(len);
        // --- policy: outlier ejection (policy/outlier.rs) skips ejected endpoints ---
        if let Some(outlier) = &self.policy.outlier {
            i = outlier.admit(i, len, || self.lb.pick(len));
        }
        // --- end policy ---
        (i, &self.endpoints[i])
    }

    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Authority> {
        self.endpoints.iter()
    }
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
