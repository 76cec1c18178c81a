//! Local rate limiting: token buckets per route, one for the route or one per key (a
//! header's value, or the client's IP), kept in a bounded table.
//!
//! Each bucket is one atomic: the GCRA form of a token bucket stores the "theoretical
//! arrival time" of the next request, and a request is admitted when that time is at most
//! `burst` intervals ahead of now (one compare-and-swap). A bucket whose time has passed
//! is full, exactly as a fresh one: so a keyed slot can be handed to another key whenever
//! its bucket is idle, and the table needs no eviction scan or lock. When every slot a key
//! may use is busy with other keys, the key shares one (it can only be limited harder,
//! never looser), and the spill is counted.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::HeaderMap;

use crate::config::RateLimitSpec;
use crate::error::Error;

/// Slots a key may take: its hash's slot and the next few.
const PROBES: usize = 4;

#[derive(Debug, Default)]
struct Slot {
    /// Key hash owning the slot (0: none yet).
    key: AtomicU64,
    /// Nanoseconds since `base` at which the bucket is next empty-by-one (GCRA TAT).
    tat: AtomicU64,
}

#[derive(Debug)]
enum Key {
    Route,
    Header(HeaderName),
    ClientIp,
}

#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now the TAT may run: `(burst - 1) * interval`... plus one interval.
    tolerance: u64,
    key: Key,
    slots: Box<[Slot]>,
    hasher: std::hash::RandomState,
    base: Instant,
}

impl RateLimit {
    pub(crate) fn compile(spec: &RateLimitSpec, path: &str) -> Result<Self, Error> {
        if !(spec.requests_per_second > 0.0 && spec.requests_per_second <= 1e9) {
            return Err(Error::config(
                format!("{path}.requests_per_second"),
                "must be above 0 and at most 1e9",
            ));
        }
        if spec.burst == 0 {
            return Err(Error::config(format!("{path}.burst"), "must be at least 1"));
        }
        let key = match (&spec.key_header, spec.key_client_ip) {
            (Some(_), true) => {
                return Err(Error::config(
                    format!("{path}.key_header"),
                    "key by a header or by client IP, not both",
                ))
            }
            (Some(h), false) => Key::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                Error::config(format!("{path}.key_header"), format!("{h:?} is not a header name"))
            })?),
            (None, true) => Key::ClientIp,
            (None, false) => Key::Route,
        };
        let slots = match key {
            Key::Route => 1,
            _ => {
                if spec.max_keys == 0 || spec.max_keys > 1 << 20 {
                    return Err(Error::config(format!("{path}.max_keys"), "must be from 1 to 1048576"));
                }
                spec.max_keys as usize
            }
        };
        // 1e9 / rps is at least 1 ns by the check above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let interval = (1e9 / spec.requests_per_second).round().max(1.0) as u64;
        Ok(Self {
            interval,
            tolerance: interval * u64::from(spec.burst),
            key,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            hasher: std::hash::RandomState::new(),
            base: Instant::now(),
        })
    }

    /// Admit a request, or answer how long until one would be admitted (for `Retry-After`).
    #[inline]
    /// Take a token for a request that arrived `at` (the request path passes the time it
    /// read when the request's head arrived, so that the check reads no clock).
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        at: Instant,
    ) -> Result<(), Duration> {
        let now = u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.check_at(self.slot(headers, client, now), now)
    }

    fn slot(&self, headers: &HeaderMap, client: Option<IpAddr>, now: u64) -> &Slot {
        let hash = match &self.key {
            Key::Route => return &self.slots[0],
            // A missing header (or client address) is one key of its own.
            Key::Header(name) => self.hasher.hash_one(headers.get(name).map(http::HeaderValue::as_bytes)),
            Key::ClientIp => self.hasher.hash_one(client),
        };
        let hash = hash.max(1);
        let n = self.slots.len();
        #[allow(clippy::cast_possible_truncation)]
        let start = (hash % n as u64) as usize;
        let probes = PROBES.min(n);
        for k in 0..probes {
            let slot = &self.slots[(start + k) % n];
            let owner = slot.key.load(Ordering::Acquire);
            if owner == hash {
                return slot;
            }
            // Free, or idle (a full bucket is as good as a fresh one): take it over.
            if (owner == 0 || slot.tat.load(Ordering::Acquire) <= now)
                && slot.key.compare_exchange(owner, hash, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                return slot;
            }
        }
        &self.slots[start]
    }

    fn check_at(&self, slot: &Slot, now: u64) -> Result<(), Duration> {
        let mut tat = slot.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.tolerance {
                return Err(Duration::from_nanos(next - now - self.tolerance));
            }
            match slot.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rps: f64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests_per_second: rps,
            burst,
            key_header: None,
            key_client_ip: false,
            max_keys: 16,
        }
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let rl = RateLimit::compile(&spec(10.0, 5), "r").unwrap();
        let slot = &rl.slots[0];
        let admitted = (0..20).filter(|_| rl.check_at(slot, 0).is_ok()).count();
        assert_eq!(admitted, 5, "a full bucket holds `burst` tokens");
        let wait = rl.check_at(slot, 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one token per 100 ms");
        assert!(rl.check_at(slot, 100_000_000).is_ok());
        assert!(rl.check_at(slot, 100_000_000).is_err());
        // After a long idle spell the bucket is full again, never fuller.
        let later = 10_000_000_000;
        assert_eq!((0..20).filter(|_| rl.check_at(slot, later).is_ok()).count(), 5);
    }

    #[test]
    fn keys_get_their_own_buckets_and_the_table_is_bounded() {
        let mut s = spec(1.0, 1);
        s.key_header = Some("x-user".into());
        s.max_keys = 4;
        let rl = RateLimit::compile(&s, "r").unwrap();
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", v.parse().unwrap());
            h
        };
        assert!(rl.check(&headers("a"), None, Instant::now()).is_ok());
        assert!(rl.check(&headers("a"), None, Instant::now()).is_err(), "a's bucket is empty");
        assert!(rl.check(&headers("b"), None, Instant::now()).is_ok(), "b has a bucket of its own");
        // Many keys: the table never grows past max_keys, and nobody gets more than a burst.
        let admitted =
            (0..100).filter(|k| rl.check(&headers(&format!("k{k}")), None, Instant::now()).is_ok()).count();
        assert!(admitted <= 4, "{admitted}");
        assert_eq!(rl.slots.len(), 4);
    }

    #[test]
    fn client_ip_keys_and_bad_specs() {
        let mut s = spec(1.0, 1);
        s.key_client_ip = true;
        let rl = RateLimit::compile(&s, "r").unwrap();
        let h = HeaderMap::new();
        assert!(rl.check(&h, Some([127, 0, 0, 1].into()), Instant::now()).is_ok());
        assert!(rl.check(&h, Some([127, 0, 0, 1].into()), Instant::now()).is_err());
        assert!(rl.check(&h, Some([127, 0, 0, 2].into()), Instant::now()).is_ok());
        s.key_header = Some("x".into());
        assert_eq!(RateLimit::compile(&s, "r").unwrap_err().path, "r.key_header");
        assert_eq!(RateLimit::compile(&spec(0.0, 1), "r").unwrap_err().path, "r.requests_per_second");
        assert_eq!(RateLimit::compile(&spec(1.0, 0), "r").unwrap_err().path, "r.burst");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
