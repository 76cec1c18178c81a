//! The retry budget of a cluster, as Linkerd's: retries may add at most `percent` of the
//! cluster's request rate, plus `min_retries_per_second`, over a sliding 10-second window.
//!
//! The window is ten one-second slots of atomic counters; a slot whose second has passed
//! is reset by whichever request first lands in it. Recording a request is a clock read and
//! an atomic add; only a retry sums the window. Each route brings its own percentages, the
//! counts are the cluster's: the budget is per cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

const SLOTS: u64 = 10;

#[derive(Debug)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Budget {
    base: Instant,
    /// Off until a route with retries targets the cluster: others pay one load per request.
    enabled: AtomicBool,
    slots: [Slot; SLOTS as usize],
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            enabled: AtomicBool::new(false),
            slots: std::array::from_fn(|_| Slot {
                second: AtomicU64::new(u64::MAX),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        }
    }
}

impl Budget {
    /// Start counting (called when a route with retries is compiled against the cluster).
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_secs()
    }

    fn slot(&self, second: u64) -> &Slot {
        // Indexing by `second % SLOTS` is always in range.
        #[allow(clippy::cast_possible_truncation)]
        let slot = &self.slots[(second % SLOTS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot.second.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Count an original request (not a retry) to the cluster, which arrived `at` (the
    /// request path's one clock reading).
    #[inline]
    pub(crate) fn record_request(&self, at: Instant) {
        if self.enabled.load(Ordering::Relaxed) {
            self.record_request_at(at.saturating_duration_since(self.base).as_secs());
        }
    }

    fn record_request_at(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Take one retry from the budget; false when it is spent.
    pub(crate) fn try_retry(&self, percent: f64, min_per_second: u32) -> bool {
        self.try_retry_at(self.now(), percent, min_per_second)
    }

    fn try_retry_at(&self, second: u64, percent: f64, min_per_second: u32) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Acquire);
            if s != u64::MAX && s <= second && second - s < SLOTS {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let allowed = f64::from(min_per_second) * SLOTS as f64 + percent / 100.0 * requests as f64;
        #[allow(clippy::cast_precision_loss)]
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_percent_of_requests_plus_the_minimum() {
        let b = Budget::default();
        for _ in 0..1000 {
            b.record_request_at(5);
        }
        // 20% of 1000 plus 1/s over the 10 s window: 210 retries, no more.
        let granted = (0..1000).filter(|_| b.try_retry_at(5, 20.0, 1)).count();
        assert_eq!(granted, 210);
    }

    #[test]
    fn the_minimum_alone_allows_a_trickle() {
        let b = Budget::default();
        let granted = (0..100).filter(|_| b.try_retry_at(0, 20.0, 2)).count();
        assert_eq!(granted, 20, "2 per second over a 10 s window");
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let b = Budget::default();
        for _ in 0..100 {
            b.record_request_at(1);
        }
        assert_eq!((0..100).filter(|_| b.try_retry_at(1, 50.0, 0)).count(), 50);
        // Ten seconds later the requests and the retries of second 1 are forgotten.
        assert!(!b.try_retry_at(10, 50.0, 0));
        assert!(b.try_retry_at(11, 0.0, 1));
        for _ in 0..10 {
            b.record_request_at(11);
        }
        assert_eq!((0..100).filter(|_| b.try_retry_at(11, 50.0, 0)).count(), 4, "5 allowed, 1 taken");
    }
}
