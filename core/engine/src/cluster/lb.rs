//! The balancer trait and what every algorithm shares: the members it is built over, the
//! live load of each endpoint, weighted random choice, and the stable hash.
//!
//! A balancer is built (once per snapshot, and again when the set of healthy endpoints
//! changes) over the members in rotation, and is then read-only apart from its own atomics:
//! picking takes no lock. Adding an algorithm is adding one module and one arm in [`build`].

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{ewma, least_request, maglev, random, ring_hash, round_robin};
use crate::config::LbKind;

/// What a balancer may look at for one request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PickContext {
    /// The request's key hashed with [`hash_key`], for `ring_hash` and `maglev`; `None` when
    /// the request has no key (they then pick at random).
    pub(crate) hash: Option<u64>,
}

/// One load-balancing algorithm over a fixed list of members.
pub(crate) trait Balancer: Send + Sync + Debug {
    /// The index (into the members it was built over) of the endpoint for this request, or
    /// `None` when it has no member.
    fn pick(&self, ctx: &PickContext) -> Option<usize>;
}

/// An endpoint as a balancer sees it when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The endpoint's address: what consistent hashing places, so that a member keeps its
    /// place when others come and go.
    pub(crate) key: Arc<str>,
    pub(crate) weight: u32,
    pub(crate) load: Arc<Load>,
}

/// Build the balancer of kind `kind` over `members` (which may be empty).
pub(crate) fn build(kind: LbKind, members: &[Member]) -> Box<dyn Balancer> {
    if members.is_empty() {
        return Box::new(Empty);
    }
    match kind {
        LbKind::RoundRobin => Box::new(round_robin::RoundRobin::new(members)),
        LbKind::Random => Box::new(random::Random::new(members)),
        LbKind::LeastRequest => Box::new(least_request::LeastRequest::new(members)),
        LbKind::Ewma => Box::new(ewma::Ewma::new(members)),
        LbKind::RingHash => Box::new(ring_hash::RingHash::new(members)),
        LbKind::Maglev => Box::new(maglev::Maglev::new(members, maglev::DEFAULT_TABLE_SIZE)),
    }
}

/// No endpoint in rotation.
#[derive(Debug)]
struct Empty;

impl Balancer for Empty {
    fn pick(&self, _: &PickContext) -> Option<usize> {
        None
    }
}

// === impl WeightedRandom ===

/// Random choice in proportion to weight: a uniform draw when all weights are equal, else a
/// binary search of cumulative weights. The fallback of every balancer that needs one.
#[derive(Debug)]
pub(crate) struct WeightedRandom {
    /// Cumulative weights; empty when every weight is equal.
    cumulative: Box<[u64]>,
    len: usize,
    total: u64,
}

impl WeightedRandom {
    pub(crate) fn new(members: &[Member]) -> Self {
        let equal = members.windows(2).all(|w| w[0].weight == w[1].weight);
        let mut total = 0u64;
        let cumulative = if equal {
            Box::default()
        } else {
            members
                .iter()
                .map(|m| {
                    total += u64::from(m.weight.max(1));
                    total
                })
                .collect()
        };
        Self { cumulative, len: members.len(), total }
    }

    #[inline]
    pub(crate) fn pick(&self) -> usize {
        if self.cumulative.is_empty() {
            return fastrand::usize(0..self.len);
        }
        let at = fastrand::u64(0..self.total);
        self.cumulative.partition_point(|&c| c <= at)
    }
}

// === impl Load ===

/// How long a latency observation takes to fade to 1/e of its weight (Linkerd's default).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint never observed: low, so that a new endpoint is tried.
const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(1);
/// The latency recorded for a request the endpoint failed (refused, reset): a refused connect
/// is the fastest answer there is, and must not make a dead endpoint look like the best one.
const EWMA_FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The live load of one endpoint: requests in flight, and the peak-EWMA of its latency.
/// Updated with relaxed atomics; a race between two updates loses a little precision, never
/// correctness of the pick.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: AtomicU64,
    /// Latency estimate in nanoseconds, as `f64` bits; 0 = never observed.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated, in nanoseconds since [`epoch`].
    updated_ns: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Load {
    #[inline]
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Start a request on this endpoint; the guard ends it. `observe` asks the guard to feed
    /// the request's latency to the EWMA when it ends.
    #[inline]
    pub(crate) fn start(&self, observe: bool) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { load: Some(self), started: observe.then(Instant::now), failed: false }
    }

    /// Peak-EWMA: a latency above the estimate replaces it at once (so a slowing endpoint is
    /// avoided quickly); one below it pulls the estimate down in proportion to the time since
    /// the last update.
    pub(crate) fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, now_ns());
    }

    fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let last = self.updated_ns.swap(now, Ordering::Relaxed);
        let weight = decay(now.saturating_sub(last));
        let _ = self.rtt_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if old == 0.0 || rtt > old { rtt } else { old * weight + rtt * (1.0 - weight) };
            Some(new.to_bits())
        });
    }

    /// The estimate now: the stored one faded by the time since it was made (as tower's
    /// PeakEwma does), so an endpoint once slow is tried again; the default if never observed.
    pub(crate) fn rtt_ns(&self) -> f64 {
        self.rtt_ns_at(now_ns())
    }

    fn rtt_ns_at(&self, now: u64) -> f64 {
        let stored = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        if stored == 0.0 {
            return EWMA_DEFAULT_RTT.as_nanos() as f64;
        }
        let since = now.saturating_sub(self.updated_ns.load(Ordering::Relaxed));
        stored * decay(since)
    }
}

fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / EWMA_DECAY.as_nanos() as f64).exp()
}

/// A request in flight on an endpoint: counted until dropped, and timed when the balancer
/// learns from latency (ewma).
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    /// `None` when the balancer reads no load: no shared counter is touched at all.
    load: Option<&'a Load>,
    started: Option<Instant>,
    failed: bool,
}

impl InFlight<'_> {
    /// A guard that counts nothing, for balancers that do not read load.
    pub(crate) fn untracked() -> Self {
        Self { load: None, started: None, failed: false }
    }

    /// The endpoint failed this request (no answer from it): it counts as a very slow one.
    pub(crate) fn failed(&mut self) {
        self.failed = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(load) = self.load else { return };
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(started) = self.started {
            let rtt = started.elapsed();
            load.observe(if self.failed { rtt.max(EWMA_FAILURE_PENALTY) } else { rtt });
        }
    }
}

// === hashing ===

/// Seed of request keys. Fixed: a key must land on the same endpoint after a restart.
const KEY_SEED: u64 = 0x7079_6d65_7368_6b31;

/// The hash of a request key (a header or cookie value, or a client address's bytes).
/// xxh3 is specified and stable across versions and platforms.
#[inline]
pub(crate) fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

/// The hash that places member `key` (replica `replica`) in a ring or a Maglev permutation.
pub(crate) fn hash_member(key: &str, seed: u64) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), seed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Members `a:1`, `b:1`... with the given weights.
    pub(crate) fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member { key: format!("10.0.0.{i}:80").into(), weight, load: Arc::default() })
            .collect()
    }

    /// How many of `n` picks land on each member.
    pub(crate) fn counts(
        b: &dyn Balancer,
        len: usize,
        n: usize,
        ctx: impl Fn(usize) -> PickContext,
    ) -> Vec<usize> {
        let mut out = vec![0; len];
        for i in 0..n {
            out[b.pick(&ctx(i)).unwrap()] += 1;
        }
        out
    }

    /// `count` is within `tolerance` (a fraction) of `expected`.
    pub(crate) fn near(count: usize, expected: f64, tolerance: f64) -> bool {
        (count as f64 - expected).abs() <= expected * tolerance
    }

    #[test]
    fn weighted_random_follows_weights() {
        let wr = WeightedRandom::new(&members(&[3, 1]));
        let mut c = [0usize; 2];
        for _ in 0..40_000 {
            c[wr.pick()] += 1;
        }
        assert!(near(c[0], 30_000.0, 0.03) && near(c[1], 10_000.0, 0.08), "{c:?}");
    }

    #[test]
    fn empty_balancers_pick_nothing() {
        for kind in [
            LbKind::RoundRobin,
            LbKind::Random,
            LbKind::LeastRequest,
            LbKind::Ewma,
            LbKind::RingHash,
            LbKind::Maglev,
        ] {
            assert_eq!(build(kind, &[]).pick(&PickContext { hash: Some(1) }), None);
            assert_eq!(build(kind, &members(&[1])).pick(&PickContext { hash: Some(1) }), Some(0));
        }
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let load = Load::default();
        let a = load.start(false);
        let b = load.start(false);
        assert_eq!(load.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn a_failed_request_counts_as_a_slow_one() {
        let load = Load::default();
        let mut guard = load.start(true);
        guard.failed();
        drop(guard);
        assert!(load.rtt_ns() >= EWMA_FAILURE_PENALTY.as_nanos() as f64 * 0.99);
        // Unless timed (other balancers), nothing is recorded.
        let other = Load::default();
        let mut guard = other.start(false);
        guard.failed();
        drop(guard);
        assert_eq!(other.rtt_ns(), EWMA_DEFAULT_RTT.as_nanos() as f64);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let load = Load::default();
        assert_eq!(load.rtt_ns_at(0), EWMA_DEFAULT_RTT.as_nanos() as f64);
        load.observe_at(Duration::from_millis(10), 1_000);
        assert!((load.rtt_ns_at(1_000) - 10e6).abs() < 1.0);
        // A peak replaces the estimate at once.
        load.observe_at(Duration::from_millis(100), 2_000);
        assert!((load.rtt_ns_at(2_000) - 100e6).abs() < 1.0);
        // A fast answer ten seconds later (one decay period) pulls it most of the way down.
        let later = 2_000 + EWMA_DECAY.as_nanos() as u64;
        load.observe_at(Duration::from_millis(10), later);
        let est = load.rtt_ns_at(later);
        assert!(est > 10e6 && est < 50e6, "{est}");
        // Without news the estimate fades, so a once-slow endpoint gets tried again.
        assert!(load.rtt_ns_at(later + 5 * EWMA_DECAY.as_nanos() as u64) < est / 100.0);
    }

    #[test]
    fn hashes_are_stable_across_builds_and_restarts() {
        // Fixed values: a change here moves every user's sticky key to another endpoint.
        assert_eq!(hash_key(b"user-1"), 0x5cdc_3e32_939e_ada8);
        assert_eq!(hash_member("10.0.0.1:80", 7), 0xb4b6_bf92_5f0d_e8c1);
        assert_ne!(hash_key(b"user-1"), hash_key(b"user-2"));
    }
}
