//! Traffic policies, enforced per request with no Python: timeouts, retries and their
//! budget, circuit breaking, outlier ejection, local rate limits, fault injection and
//! mirroring. One concern per module; the request path that strings them together is
//! `http/proxy.rs`.
//!
//! Everything is compiled with the snapshot (the Python policy engine resolved the layered
//! policies into it), and a route with no policy carries `None`: it pays one branch.

pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod fault;
pub(crate) mod mirror;
pub(crate) mod outlier;
pub(crate) mod ratelimit;
pub(crate) mod retry;
pub(crate) mod timeouts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::config::{ClusterPolicySpec, RoutePolicySpec};
use crate::error::Error;
use crate::metrics::{ClusterStats, RouteStats};

/// How one try ended, as retries and outlier detection see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryOutcome {
    /// A response head came back (`grpc` is its `grpc-status` header, if any).
    Response { status: u16, grpc: Option<u32> },
    /// No connection could be made: the request was never sent.
    ConnectFailure,
    /// The connect timeout fired: never sent either.
    ConnectTimeout,
    /// The HTTP/2 server refused the stream (REFUSED_STREAM): never processed.
    RefusedStream,
    /// The connection failed after the request may have been sent.
    Reset,
    /// The per-try timeout fired before the response head.
    PerTryTimeout,
}

impl TryOutcome {
    /// Whether the upstream provably never saw the request (so any method may be retried).
    pub(crate) fn never_sent(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::ConnectTimeout | Self::RefusedStream)
    }
}

/// A route's compiled policies, shared by its targets.
#[derive(Debug)]
pub(crate) struct RoutePolicy {
    pub(crate) timeout: Option<Duration>,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) retry: Option<retry::RetryPolicy>,
    pub(crate) rate_limit: Option<ratelimit::RateLimit>,
    pub(crate) fault: Option<fault::Fault>,
    pub(crate) mirror: Option<mirror::Mirror>,
    pub(crate) stats: Arc<RouteStats>,
}

impl RoutePolicy {
    /// Whether the whole-request timeout is all this policy does (the default route policy),
    /// which the request path runs as a deadline on its one try (http/proxy.rs).
    pub(crate) fn only_timeout(&self) -> bool {
        let Self { timeout: _, per_try_timeout, idle_timeout, retry, rate_limit, fault, mirror, stats: _ } =
            self;
        per_try_timeout.is_none()
            && idle_timeout.is_none()
            && retry.is_none()
            && rate_limit.is_none()
            && fault.is_none()
            && mirror.is_none()
    }

    /// `None` when the spec turns nothing on.
    pub(crate) fn compile(
        spec: Option<&RoutePolicySpec>,
        path: &str,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        stats: Arc<RouteStats>,
    ) -> Result<Option<Self>, Error> {
        let Some(spec) = spec else { return Ok(None) };
        let path = format!("{path}.policy");
        let ms = |v: Option<u64>, field: &str| -> Result<Option<Duration>, Error> {
            match v {
                Some(0) => Err(Error::config(format!("{path}.{field}"), "must be greater than zero")),
                v => Ok(v.map(Duration::from_millis)),
            }
        };
        let timeout = ms(spec.timeout_ms, "timeout_ms")?;
        let per_try_timeout = ms(spec.per_try_timeout_ms, "per_try_timeout_ms")?;
        if let (Some(t), Some(p)) = (timeout, per_try_timeout) {
            if p > t {
                return Err(Error::config(
                    format!("{path}.per_try_timeout_ms"),
                    "a try cannot outlast the whole request (per_try_timeout_ms > timeout_ms)",
                ));
            }
        }
        let policy = Self {
            timeout,
            per_try_timeout,
            idle_timeout: ms(spec.idle_timeout_ms, "idle_timeout_ms")?,
            retry: match &spec.retry {
                Some(r) => retry::RetryPolicy::compile(r, &format!("{path}.retry"))?,
                None => None,
            },
            rate_limit: match &spec.rate_limit {
                Some(r) => Some(ratelimit::RateLimit::compile(r, &format!("{path}.rate_limit"))?),
                None => None,
            },
            fault: match &spec.fault {
                Some(f) => fault::Fault::compile(f, &format!("{path}.fault"))?,
                None => None,
            },
            mirror: match &spec.mirror {
                Some(m) => mirror::Mirror::compile(m, &format!("{path}.mirror"), clusters)?,
                None => None,
            },
            stats,
        };
        let nothing = policy.timeout.is_none()
            && policy.per_try_timeout.is_none()
            && policy.idle_timeout.is_none()
            && policy.retry.is_none()
            && policy.rate_limit.is_none()
            && policy.fault.is_none()
            && policy.mirror.is_none();
        Ok(if nothing { None } else { Some(policy) })
    }
}

/// A cluster's compiled policies. The retry budget is always there (its bookkeeping starts
/// only once a route with retries points at the cluster).
#[derive(Debug)]
pub(crate) struct ClusterPolicy {
    pub(crate) breaker: Option<Arc<breaker::Breaker>>,
    pub(crate) outlier: Option<outlier::Outlier>,
    pub(crate) budget: budget::Budget,
}

impl ClusterPolicy {
    pub(crate) fn compile(
        spec: Option<&ClusterPolicySpec>,
        path: &str,
        endpoints: usize,
        stats: &Arc<ClusterStats>,
    ) -> Result<Self, Error> {
        let path = format!("{path}.policy");
        let (breaker, outlier) = match spec {
            None => (None, None),
            Some(s) => (
                match &s.circuit_breaker {
                    Some(b) => Some(Arc::new(breaker::Breaker::compile(
                        b,
                        &format!("{path}.circuit_breaker"),
                        Arc::clone(stats),
                    )?)),
                    None => None,
                },
                match &s.outlier_detection {
                    Some(o) => outlier::Outlier::compile(
                        o,
                        &format!("{path}.outlier_detection"),
                        endpoints,
                        Arc::clone(stats),
                    )?,
                    None => None,
                },
            ),
        };
        Ok(Self { breaker, outlier, budget: budget::Budget::default() })
    }
}

/// `percent` (0-100) as parts per million, for cheap integer rolls.
pub(crate) fn per_million(percent: f64, path: &str) -> Result<u32, Error> {
    if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
        return Err(Error::config(path, "a percentage is from 0 to 100"));
    }
    // In range by the check above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((percent * 10_000.0).round() as u32)
}

/// True for `ppm` parts per million of calls (thread-local RNG: no shared state).
#[inline]
pub(crate) fn roll(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && fastrand::u32(0..1_000_000) < ppm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_parts_per_million() {
        assert_eq!(per_million(50.0, "p").unwrap(), 500_000);
        assert_eq!(per_million(0.01, "p").unwrap(), 100);
        assert!(per_million(100.5, "p").is_err());
        assert!(per_million(f64::NAN, "p").is_err());
    }

    #[test]
    fn rolls_hit_their_share() {
        assert!(roll(1_000_000));
        assert!(!roll(0));
        let hits = (0..100_000).filter(|_| roll(250_000)).count();
        assert!((23_500..26_500).contains(&hits), "{hits}");
    }
}
