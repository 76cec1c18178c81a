//! Random: each pick draws an endpoint in proportion to its weight. No shared state at all.

use super::lb::{Balancer, Member, PickContext, WeightedRandom};

#[derive(Debug)]
pub(crate) struct Random(WeightedRandom);

impl Random {
    pub(crate) fn new(members: &[Member]) -> Self {
        Self(WeightedRandom::new(members))
    }
}

impl Balancer for Random {
    #[inline]
    fn pick(&self, _: &PickContext) -> Option<usize> {
        Some(self.0.pick())
    }
}

#[cfg(test)]
mod tests {
    use super::super::lb::tests::{counts, members, near};
    use super::*;

    #[test]
    fn spreads_evenly() {
        let c = counts(&Random::new(&members(&[1, 1, 1])), 3, 30_000, |_| PickContext::default());
        assert!(c.iter().all(|&n| near(n, 10_000.0, 0.05)), "{c:?}");
    }

    #[test]
    fn respects_weights() {
        let c = counts(&Random::new(&members(&[3, 1])), 2, 40_000, |_| PickContext::default());
        assert!(near(c[0], 30_000.0, 0.03) && near(c[1], 10_000.0, 0.08), "{c:?}");
    }
}
