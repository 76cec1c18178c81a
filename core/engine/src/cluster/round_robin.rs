//! Round robin: a strict rotation shared by every thread, one relaxed atomic add per pick.
//! With weights, the rotation runs over `sum(weights)` slots and a fixed stride permutes the
//! slots, so each cycle gives every endpoint exactly its weight's share, interleaved rather
//! than in bursts.

use std::sync::atomic::{AtomicU64, Ordering};

use super::lb::{Balancer, Member, PickContext};

#[derive(Debug)]
pub(crate) struct RoundRobin {
    next: AtomicU64,
    len: u64,
    /// Weighted only: cumulative weights, and the stride (coprime with their sum).
    cumulative: Box<[u64]>,
    stride: u64,
}

impl RoundRobin {
    pub(crate) fn new(members: &[Member]) -> Self {
        let len = members.len() as u64;
        let equal = members.windows(2).all(|w| w[0].weight == w[1].weight);
        if equal {
            return Self { next: AtomicU64::new(0), len, cumulative: Box::default(), stride: 1 };
        }
        let mut total = 0;
        let cumulative: Box<[u64]> = members
            .iter()
            .map(|m| {
                total += u64::from(m.weight.max(1));
                total
            })
            .collect();
        // Any stride coprime with the total visits every slot once per cycle; one near the
        // golden ratio of the total spreads each endpoint's slots evenly over the cycle.
        let mut stride = ((total as f64 * 0.618_033_988_75) as u64).max(1);
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        Self { next: AtomicU64::new(0), len: total, cumulative, stride }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Balancer for RoundRobin {
    #[inline]
    fn pick(&self, _: &PickContext) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.cumulative.is_empty() {
            return usize::try_from(n % self.len).ok();
        }
        let slot = (n % self.len) * self.stride % self.len;
        Some(self.cumulative.partition_point(|&c| c <= slot))
    }
}

#[cfg(test)]
mod tests {
    use super::super::lb::tests::{counts, members};
    use super::*;

    #[test]
    fn visits_every_endpoint_in_turn() {
        let rr = RoundRobin::new(&members(&[1, 1, 1]));
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&PickContext::default()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn is_exactly_even_across_threads() {
        let rr = RoundRobin::new(&members(&[1, 1, 1, 1]));
        let c = std::sync::Mutex::new(vec![0; 4]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let local = counts(&rr, 4, 1000, |_| PickContext::default());
                    let mut all = c.lock().unwrap();
                    for (i, n) in local.iter().enumerate() {
                        all[i] += n;
                    }
                });
            }
        });
        assert_eq!(*c.lock().unwrap(), [1000; 4]);
    }

    #[test]
    fn weights_give_exact_shares_interleaved() {
        let rr = RoundRobin::new(&members(&[3, 1, 2]));
        assert_eq!(counts(&rr, 3, 600, |_| PickContext::default()), [300, 100, 200]);
        // Interleaved: no endpoint takes more than its weight's worth of picks in a row.
        let rr = RoundRobin::new(&members(&[3, 1]));
        let picks: Vec<_> = (0..8).map(|_| rr.pick(&PickContext::default()).unwrap()).collect();
        assert!(picks.windows(4).all(|w| w.contains(&1)), "{picks:?}");
    }
}
