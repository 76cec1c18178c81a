//! Circuit breaking per cluster: limits on connections, pending requests, active requests
//! and active retries. Admission is one atomic add (and a subtract when over the limit), so
//! breakers cost no lock; a guard gives the place back when it drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::CircuitBreakerSpec;
use crate::error::Error;
use crate::metrics::ClusterStats;

/// Which limit a request ran into: the `limit` label of the overflow counter and the value
/// of the `x-pymesh-overflow` header's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Connections = 0,
    Pending = 1,
    Requests = 2,
    Retries = 3,
}

impl Limit {
    pub(crate) const ALL: [Self; 4] = [Self::Connections, Self::Pending, Self::Requests, Self::Retries];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Pending => "pending",
            Self::Requests => "requests",
            Self::Retries => "retries",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Limits of pending, requests and retries (connections are the pool's: see
    /// `PoolSettings::max_connections`).
    max: [u64; 4],
    active: [AtomicU64; 4],
    stats: Arc<ClusterStats>,
}

impl Breaker {
    pub(crate) fn compile(
        spec: &CircuitBreakerSpec,
        path: &str,
        stats: Arc<ClusterStats>,
    ) -> Result<Self, Error> {
        for (field, v) in [
            ("max_connections", spec.max_connections),
            ("max_pending", spec.max_pending),
            ("max_requests", spec.max_requests),
            ("max_retries", spec.max_retries),
        ] {
            if v == 0 && field != "max_retries" {
                return Err(Error::config(format!("{path}.{field}"), "must be at least 1"));
            }
        }
        Ok(Self {
            max: [spec.max_connections, spec.max_pending, spec.max_requests, spec.max_retries],
            active: Default::default(),
            stats,
        })
    }

    /// Take a place under `limit`, or count an overflow and answer `None`.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>, limit: Limit) -> Option<BreakerGuard> {
        let i = limit as usize;
        let before = self.active[i].fetch_add(1, Ordering::AcqRel);
        if before >= self.max[i] {
            self.active[i].fetch_sub(1, Ordering::AcqRel);
            self.stats.overflows[i].inc();
            return None;
        }
        Some(BreakerGuard { breaker: Arc::clone(self), limit })
    }

    #[cfg(test)]
    pub(crate) fn active(&self, limit: Limit) -> u64 {
        self.active[limit as usize].load(Ordering::Relaxed)
    }
}

/// A place under one limit, given back on drop.
#[derive(Debug)]
pub(crate) struct BreakerGuard {
    breaker: Arc<Breaker>,
    limit: Limit,
}

impl Drop for BreakerGuard {
    fn drop(&mut self) {
        self.breaker.active[self.limit as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(requests: u64, retries: u64) -> Arc<Breaker> {
        let spec = CircuitBreakerSpec {
            max_connections: 10,
            max_pending: 10,
            max_requests: requests,
            max_retries: retries,
        };
        Arc::new(Breaker::compile(&spec, "b", Arc::default()).unwrap())
    }

    #[test]
    fn admits_up_to_the_limit_then_overflows_and_counts() {
        let b = breaker(2, 0);
        let one = b.admit(Limit::Requests).unwrap();
        let _two = b.admit(Limit::Requests).unwrap();
        assert!(b.admit(Limit::Requests).is_none());
        assert_eq!(b.stats.overflows[Limit::Requests as usize].get(), 1);
        drop(one);
        assert!(b.admit(Limit::Requests).is_some(), "a released place is free again");
        assert!(b.admit(Limit::Retries).is_none(), "max_retries 0 allows no retry");
        assert_eq!(b.active(Limit::Requests), 1);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let b = breaker(8, 1);
        let peak = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(g) = b.admit(Limit::Requests) {
                            peak.fetch_max(b.active(Limit::Requests), Ordering::Relaxed);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(b.active(Limit::Requests), 0);
    }

    #[test]
    fn zero_limits_are_refused_with_their_path() {
        let spec = CircuitBreakerSpec { max_connections: 0, max_pending: 1, max_requests: 1, max_retries: 1 };
        let e = Breaker::compile(&spec, "clusters.0.policy.circuit_breaker", Arc::default()).unwrap_err();
        assert_eq!(e.path, "clusters.0.policy.circuit_breaker.max_connections");
    }
}
