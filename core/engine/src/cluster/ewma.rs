//! Peak-EWMA, as Linkerd balances: draw two endpoints (by weight) and take the one whose
//! expected wait, latency estimate x (requests in flight + 1), is lower. The estimate jumps
//! up with a slow answer and decays with fast ones and with time (see [`Load`]), so a slowing
//! endpoint sheds traffic at once and is tried again once it has had time to recover.

use std::sync::Arc;

use super::lb::{Balancer, Load, Member, PickContext, WeightedRandom};
use super::least_request::two_choices;

#[derive(Debug)]
pub(crate) struct Ewma {
    draw: WeightedRandom,
    loads: Box<[Arc<Load>]>,
}

impl Ewma {
    pub(crate) fn new(members: &[Member]) -> Self {
        Self {
            draw: WeightedRandom::new(members),
            loads: members.iter().map(|m| Arc::clone(&m.load)).collect(),
        }
    }
}

fn cost(load: &Load) -> f64 {
    load.rtt_ns() * (load.in_flight() + 1) as f64
}

impl Balancer for Ewma {
    fn pick(&self, _: &PickContext) -> Option<usize> {
        let (a, b) = two_choices(&self.draw, self.loads.len());
        Some(if cost(&self.loads[b]) < cost(&self.loads[a]) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::lb::tests::{counts, members, near};
    use super::*;

    #[test]
    fn prefers_the_faster_endpoint() {
        let m = members(&[1, 1, 1]);
        m[0].load.observe(Duration::from_millis(50));
        m[1].load.observe(Duration::from_millis(2));
        m[2].load.observe(Duration::from_millis(10));
        let c = counts(&Ewma::new(&m), 3, 30_000, |_| PickContext::default());
        // The slowest only ever loses; the fastest wins every draw it is in (2/3 of them).
        assert_eq!(c[0], 0, "{c:?}");
        assert!(near(c[1], 20_000.0, 0.05), "{c:?}");
    }

    #[test]
    fn in_flight_requests_weigh_on_a_fast_endpoint() {
        let m = members(&[1, 1]);
        m[0].load.observe(Duration::from_millis(1));
        m[1].load.observe(Duration::from_millis(3));
        let e = Ewma::new(&m);
        assert_eq!(e.pick(&PickContext::default()), Some(0));
        // Three waiting on the fast one: 1ms x 4 > 3ms x 1.
        let held: Vec<_> = (0..3).map(|_| m[0].load.start(false)).collect();
        assert_eq!(e.pick(&PickContext::default()), Some(1));
        drop(held);
    }

    #[test]
    fn spreads_evenly_when_equal() {
        let c = counts(&Ewma::new(&members(&[1, 1, 1])), 3, 30_000, |_| PickContext::default());
        assert!(c.iter().all(|&n| near(n, 10_000.0, 0.05)), "{c:?}");
    }

    #[test]
    fn weights_set_how_often_an_endpoint_is_a_candidate() {
        let c = counts(&Ewma::new(&members(&[3, 1])), 2, 40_000, |_| PickContext::default());
        assert!(near(c[0], 30_000.0, 0.03) && near(c[1], 10_000.0, 0.08), "{c:?}");
    }
}
