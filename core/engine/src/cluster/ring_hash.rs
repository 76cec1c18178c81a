//! Ring hash (consistent hashing, as ketama and Envoy's `RING_HASH`): every endpoint puts
//! points on a 64-bit ring, as many as its weight asks; a request goes to the first point at
//! or after its key's hash. Points are hashed from the endpoint's address, so an endpoint
//! that leaves takes only its own points with it: only the keys it held move (about 1/N).

use super::lb::{hash_member, Balancer, Member, PickContext, WeightedRandom};

/// Points per unit of weight while the ring stays under [`MAX_POINTS`]: enough that three
/// equal endpoints share keys within a few percent of a third each.
const POINTS_PER_WEIGHT: u64 = 512;
/// A bound on the ring's memory (16 bytes a point); past it, points per weight shrink.
const MAX_POINTS: u64 = 1 << 18;

#[derive(Debug)]
pub(crate) struct RingHash {
    /// `(point, member)`, sorted by point.
    ring: Box<[(u64, u32)]>,
    /// For requests without a key.
    fallback: WeightedRandom,
}

impl RingHash {
    pub(crate) fn new(members: &[Member]) -> Self {
        let total: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        let per_weight = (MAX_POINTS / total.max(1)).clamp(1, POINTS_PER_WEIGHT);
        let mut ring = Vec::with_capacity(usize::try_from(total * per_weight).unwrap_or(0));
        for (i, m) in members.iter().enumerate() {
            let index = u32::try_from(i).expect("fewer than 2^32 endpoints");
            for replica in 0..u64::from(m.weight.max(1)) * per_weight {
                ring.push((hash_member(&m.key, replica), index));
            }
        }
        ring.sort_unstable();
        Self { ring: ring.into(), fallback: WeightedRandom::new(members) }
    }
}

impl Balancer for RingHash {
    #[inline]
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        let Some(hash) = ctx.hash else {
            return Some(self.fallback.pick());
        };
        let at = self.ring.partition_point(|&(point, _)| point < hash);
        let (_, member) = self.ring.get(at).or_else(|| self.ring.first())?;
        Some(*member as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::lb::hash_key;
    use super::super::lb::tests::{counts, members, near};
    use super::*;

    fn keyed(i: usize) -> PickContext {
        PickContext { hash: Some(hash_key(format!("user-{i}").as_bytes())) }
    }

    #[test]
    fn spreads_keys_evenly() {
        let c = counts(&RingHash::new(&members(&[1, 1, 1])), 3, 30_000, keyed);
        assert!(c.iter().all(|&n| near(n, 10_000.0, 0.10)), "{c:?}");
    }

    #[test]
    fn respects_weights() {
        let c = counts(&RingHash::new(&members(&[3, 1])), 2, 40_000, keyed);
        assert!(near(c[0], 30_000.0, 0.05) && near(c[1], 10_000.0, 0.15), "{c:?}");
    }

    #[test]
    fn a_key_sticks_to_its_endpoint_across_builds() {
        let a = RingHash::new(&members(&[1, 1, 1]));
        let b = RingHash::new(&members(&[1, 1, 1]));
        for i in 0..1000 {
            assert_eq!(a.pick(&keyed(i)), b.pick(&keyed(i)));
            assert_eq!(a.pick(&keyed(i)), a.pick(&keyed(i)));
        }
    }

    #[test]
    fn an_endpoint_leaving_moves_only_its_keys() {
        let all = members(&[1, 1, 1, 1]);
        let before = RingHash::new(&all);
        // Endpoint 2 leaves; the others keep their addresses (their indices shift).
        let rest: Vec<_> = [0, 1, 3].iter().map(|&i| all[i].clone()).collect();
        let after = RingHash::new(&rest);
        let (mut moved, n) = (0, 20_000);
        for i in 0..n {
            let was = &all[before.pick(&keyed(i)).unwrap()].key;
            let now = &rest[after.pick(&keyed(i)).unwrap()].key;
            if was != now {
                assert_eq!(was, &all[2].key, "a key moved between two endpoints that stayed");
                moved += 1;
            }
        }
        assert!(near(moved, n as f64 / 4.0, 0.15), "{moved} of {n} keys moved");
    }

    #[test]
    fn keyless_requests_pick_at_random() {
        let c = counts(&RingHash::new(&members(&[1, 1])), 2, 20_000, |_| PickContext::default());
        assert!(c.iter().all(|&n| near(n, 10_000.0, 0.05)), "{c:?}");
    }
}
