//! Least request by the power of two choices: draw two endpoints (by weight) and take the one
//! with fewer requests in flight per unit of weight; a tie goes to the first draw, so idle
//! endpoints share requests in proportion to their weights. As good as scanning every endpoint in
//! practice, at the cost of two loads, and it never herds every thread onto one endpoint.

use std::sync::Arc;

use super::lb::{Balancer, Load, Member, PickContext, WeightedRandom};

#[derive(Debug)]
pub(crate) struct LeastRequest {
    draw: WeightedRandom,
    loads: Box<[(Arc<Load>, u32)]>,
}

impl LeastRequest {
    pub(crate) fn new(members: &[Member]) -> Self {
        let loads = members.iter().map(|m| (Arc::clone(&m.load), m.weight.max(1))).collect();
        Self { draw: WeightedRandom::new(members), loads }
    }
}

/// Two distinct draws when there are two or more members (a few redraws, then any other).
pub(crate) fn two_choices(draw: &WeightedRandom, len: usize) -> (usize, usize) {
    let a = draw.pick();
    if len == 1 {
        return (a, a);
    }
    for _ in 0..3 {
        let b = draw.pick();
        if b != a {
            return (a, b);
        }
    }
    (a, (a + 1 + fastrand::usize(0..len - 1)) % len)
}

impl Balancer for LeastRequest {
    fn pick(&self, _: &PickContext) -> Option<usize> {
        let (a, b) = two_choices(&self.draw, self.loads.len());
        let ((la, wa), (lb, wb)) = (&self.loads[a], &self.loads[b]);
        // in_flight / weight, compared without division.
        let cost_a = la.in_flight() * u64::from(*wb);
        let cost_b = lb.in_flight() * u64::from(*wa);
        Some(if cost_b < cost_a { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lb::tests::{counts, members, near};
    use super::*;

    #[test]
    fn spreads_evenly_when_idle() {
        let c = counts(&LeastRequest::new(&members(&[1, 1, 1])), 3, 30_000, |_| PickContext::default());
        assert!(c.iter().all(|&n| near(n, 10_000.0, 0.05)), "{c:?}");
    }

    #[test]
    fn prefers_the_less_loaded() {
        let m = members(&[1, 1, 1]);
        let busy: Vec<_> = (0..5).map(|_| m[0].load.start(false)).collect();
        let c = counts(&LeastRequest::new(&m), 3, 30_000, |_| PickContext::default());
        // Endpoint 0 wins only when drawn twice, which distinct draws never do.
        assert_eq!(c[0], 0, "{c:?}");
        assert!(near(c[1], 15_000.0, 0.05), "{c:?}");
        drop(busy);
    }

    #[test]
    fn holding_requests_open_balances_them() {
        // Picks that stay in flight: p2c keeps the counts within a few of each other.
        let m = members(&[1, 1, 1, 1]);
        let lr = LeastRequest::new(&m);
        let mut held = Vec::new();
        for _ in 0..400 {
            let i = lr.pick(&PickContext::default()).unwrap();
            held.push(m[i].load.start(false));
        }
        let loads: Vec<_> = m.iter().map(|x| x.load.in_flight()).collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 6, "{loads:?}");
        drop(held);
    }

    #[test]
    fn respects_weights() {
        let c = counts(&LeastRequest::new(&members(&[3, 1])), 2, 40_000, |_| PickContext::default());
        // Idle: every pick is a tie, won by the first draw, which follows the weights.
        assert!(near(c[0], 30_000.0, 0.03) && near(c[1], 10_000.0, 0.08), "{c:?}");
        // Loaded in proportion to weight, p2c keeps that proportion.
        let m = members(&[3, 1]);
        let lr = LeastRequest::new(&m);
        let mut held = Vec::new();
        for _ in 0..400 {
            let i = lr.pick(&PickContext::default()).unwrap();
            held.push(m[i].load.start(false));
        }
        assert!(near(m[0].load.in_flight() as usize, 300.0, 0.05), "{}", m[0].load.in_flight());
        drop(held);
    }
}
