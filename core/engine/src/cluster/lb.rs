//! Load balancers. Round robin is the only one so far; the others (random, least request,
//! EWMA, ring hash, Maglev) will come with a trait once there is a second implementation.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Strict rotation over the endpoints, shared by every thread: one relaxed atomic add per
/// pick, so N requests land exactly N/len on each endpoint whatever the thread mix.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    #[inline]
    pub(crate) fn pick(&self, len: usize) -> usize {
        debug_assert!(len > 0);
        self.next.fetch_add(1, Ordering::Relaxed) % len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..7).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_is_even_across_threads() {
        let rr = std::sync::Arc::new(RoundRobin::default());
        let counts = std::sync::Arc::new([const { AtomicUsize::new(0) }; 4]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (rr, counts) = (rr.clone(), counts.clone());
                s.spawn(move || {
                    for _ in 0..1000 {
                        counts[rr.pick(4)].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        for c in counts.iter() {
            assert_eq!(c.load(Ordering::Relaxed), 1000);
        }
    }
}
