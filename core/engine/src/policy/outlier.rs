//! Outlier detection: passive health from real traffic. An endpoint is ejected (skipped by
//! the balancer) after `consecutive_5xx` 5xx answers, after `consecutive_gateway_errors`
//! gateway errors (502/503/504, connect failures, resets, timeouts), or when its success
//! rate over a window falls below a floor. Its n-th ejection lasts n × `base_ejection`, up
//! to `max_ejection`; at most `max_ejection_percent` of the endpoints are out at once (one
//! always may be, as in Envoy).
//!
//! The balancer-facing interface: [`Outlier::is_ejected`] (may endpoint `i` be in
//! rotation?), [`Outlier::observe`] (how did a try to endpoint `i` end?), and
//! [`Outlier::epoch`], which moves on every ejection and return, so that the cluster rebuilds
//! its rotation as it does for health-check transitions ([`Outlier::tick`], called per pick,
//! ends the ejections that are due: one atomic load while nothing is ejected). All state is
//! atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::TryOutcome;
use crate::config::OutlierSpec;
use crate::error::Error;
use crate::metrics::ClusterStats;

#[derive(Debug, Default)]
struct EndpointState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since `base` when the ejection ends; 0: not ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    window_ok: AtomicU64,
    window_total: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct SuccessRate {
    minimum_percent: f64,
    request_volume: u64,
    interval_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    success_rate: Option<SuccessRate>,
    base_ejection_ms: u64,
    max_ejection_ms: u64,
    max_ejected: usize,
    base: Instant,
    endpoints: Box<[EndpointState]>,
    ejected: AtomicUsize,
    window_start: AtomicU64,
    /// Moves on every ejection and every return.
    epoch: AtomicU64,
    /// The earliest end of a current ejection (ms since `base`); `u64::MAX`: none.
    next_return: AtomicU64,
    stats: Arc<ClusterStats>,
}

impl Outlier {
    /// `None` when every detector is off.
    pub(crate) fn compile(
        spec: &OutlierSpec,
        path: &str,
        endpoints: usize,
        stats: Arc<ClusterStats>,
    ) -> Result<Option<Self>, Error> {
        if spec.base_ejection_ms == 0 {
            return Err(Error::config(format!("{path}.base_ejection_ms"), "must be greater than zero"));
        }
        if spec.max_ejection_ms < spec.base_ejection_ms {
            return Err(Error::config(
                format!("{path}.max_ejection_ms"),
                "must be at least base_ejection_ms",
            ));
        }
        if spec.max_ejection_percent > 100 {
            return Err(Error::config(
                format!("{path}.max_ejection_percent"),
                "a percentage is from 0 to 100",
            ));
        }
        let success_rate = match &spec.success_rate {
            Some(s) => {
                let p = format!("{path}.success_rate");
                super::per_million(s.minimum_percent, &format!("{p}.minimum_percent"))?;
                if s.interval_ms == 0 {
                    return Err(Error::config(format!("{p}.interval_ms"), "must be greater than zero"));
                }
                Some(SuccessRate {
                    minimum_percent: s.minimum_percent,
                    request_volume: u64::from(s.request_volume.max(1)),
                    interval_ms: s.interval_ms,
                })
            }
            None => None,
        };
        if spec.consecutive_5xx == 0 && spec.consecutive_gateway_errors == 0 && success_rate.is_none() {
            return Ok(None);
        }
        let max_ejected = if spec.max_ejection_percent == 0 {
            0
        } else {
            (endpoints * spec.max_ejection_percent as usize / 100).max(1)
        };
        Ok(Some(Self {
            consecutive_5xx: spec.consecutive_5xx,
            consecutive_gateway: spec.consecutive_gateway_errors,
            success_rate,
            base_ejection_ms: spec.base_ejection_ms,
            max_ejection_ms: spec.max_ejection_ms,
            max_ejected,
            base: Instant::now(),
            endpoints: (0..endpoints).map(|_| EndpointState::default()).collect(),
            ejected: AtomicUsize::new(0),
            window_start: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            next_return: AtomicU64::new(u64::MAX),
            stats,
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether endpoint `i` is ejected now.
    #[inline]
    pub(crate) fn is_ejected(&self, i: usize) -> bool {
        // The common case (not ejected) reads no clock.
        self.endpoints[i].ejected_until.load(Ordering::Relaxed) != 0 && self.is_ejected_at(i, self.now_ms())
    }

    fn is_ejected_at(&self, i: usize, now: u64) -> bool {
        let e = &self.endpoints[i];
        let until = e.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        // The ejection is over: whoever clears it gives its place back.
        if e.ejected_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            self.stats.ejected.dec();
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        false
    }

    /// Changes whenever the set of ejected endpoints does.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// End the ejections that are due (moving the epoch). Cheap while nothing is ejected.
    #[inline]
    pub(crate) fn tick(&self) {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = self.now_ms();
        if now >= self.next_return.load(Ordering::Acquire) {
            self.end_due(now);
        }
    }

    #[cold]
    fn end_due(&self, now: u64) {
        // Reset, then lower again for every ejection still on; an ejection made meanwhile
        // lowers it too, so none is forgotten.
        self.next_return.store(u64::MAX, Ordering::Release);
        for i in 0..self.endpoints.len() {
            if self.is_ejected_at(i, now) {
                let until = self.endpoints[i].ejected_until.load(Ordering::Acquire);
                if until != 0 {
                    self.next_return.fetch_min(until, Ordering::AcqRel);
                }
            }
        }
    }

    /// Endpoints ejected now.
    #[cfg(test)]
    pub(crate) fn ejected_count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Record how a try to endpoint `i` ended.
    pub(crate) fn observe(&self, i: usize, outcome: TryOutcome) {
        // A success with nothing to reset and no success-rate window needs no clock.
        let e = &self.endpoints[i];
        if self.success_rate.is_none()
            && matches!(outcome, TryOutcome::Response { status, .. } if status < 500)
            && e.consecutive_5xx.load(Ordering::Relaxed) == 0
            && e.consecutive_gateway.load(Ordering::Relaxed) == 0
        {
            return;
        }
        self.observe_at(i, outcome, self.now_ms());
    }

    fn observe_at(&self, i: usize, outcome: TryOutcome, now: u64) {
        let e = &self.endpoints[i];
        let (is_5xx, is_gateway) = match outcome {
            TryOutcome::Response { status, .. } => (status >= 500, matches!(status, 502..=504)),
            // A refused stream says nothing bad about the endpoint's health.
            TryOutcome::RefusedStream => (false, false),
            _ => (true, true),
        };
        if self.success_rate.is_some() {
            e.window_total.fetch_add(1, Ordering::Relaxed);
            if !is_5xx {
                e.window_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        if is_5xx {
            let n = e.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
            if self.consecutive_5xx > 0 && n >= self.consecutive_5xx && self.eject(i, now) {
                e.consecutive_5xx.store(0, Ordering::Release);
            }
        } else if e.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            e.consecutive_5xx.store(0, Ordering::Release);
        }
        if is_gateway {
            let n = e.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1;
            if self.consecutive_gateway > 0 && n >= self.consecutive_gateway && self.eject(i, now) {
                e.consecutive_gateway.store(0, Ordering::Release);
            }
        } else if e.consecutive_gateway.load(Ordering::Relaxed) != 0 {
            e.consecutive_gateway.store(0, Ordering::Release);
        }
        if let Some(sr) = self.success_rate {
            let start = self.window_start.load(Ordering::Acquire);
            if now.saturating_sub(start) >= sr.interval_ms
                && self.window_start.compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                self.judge_window(sr, now);
            }
        }
    }

    /// The window closed: eject every endpoint with enough requests and too few successes.
    fn judge_window(&self, sr: SuccessRate, now: u64) {
        for (j, e) in self.endpoints.iter().enumerate() {
            let total = e.window_total.swap(0, Ordering::AcqRel);
            let ok = e.window_ok.swap(0, Ordering::AcqRel);
            #[allow(clippy::cast_precision_loss)]
            if total >= sr.request_volume && (ok as f64) * 100.0 < sr.minimum_percent * total as f64 {
                self.eject(j, now);
            }
        }
    }

    /// Eject endpoint `i` unless it is already out or too many are; answers whether it was.
    fn eject(&self, i: usize, now: u64) -> bool {
        let e = &self.endpoints[i];
        if self.is_ejected_at(i, now) {
            return false;
        }
        if self.ejected.fetch_add(1, Ordering::AcqRel) >= self.max_ejected {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let n = u64::from(e.times_ejected.fetch_add(1, Ordering::AcqRel)) + 1;
        let duration = self.base_ejection_ms.saturating_mul(n).min(self.max_ejection_ms);
        if e.ejected_until
            .compare_exchange(0, now + duration.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread ejected it meanwhile.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.next_return.fetch_min(now + duration.max(1), Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.stats.ejections.inc();
        self.stats.ejected.inc();
        true
    }
}

impl Drop for Outlier {
    /// A new config compiles a new detector (ejections start over); the gauge of ejected
    /// endpoints, which outlives it, must not keep this one's.
    fn drop(&mut self) {
        for _ in 0..self.ejected.load(Ordering::Acquire) {
            self.stats.ejected.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SuccessRateSpec;

    fn spec() -> OutlierSpec {
        OutlierSpec {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            success_rate: None,
            base_ejection_ms: 1000,
            max_ejection_ms: 2500,
            max_ejection_percent: 50,
        }
    }

    fn outlier(spec: &OutlierSpec, n: usize) -> Outlier {
        Outlier::compile(spec, "o", n, Arc::default()).unwrap().unwrap()
    }

    const FAIL: TryOutcome = TryOutcome::Response { status: 500, grpc: None };
    const OK: TryOutcome = TryOutcome::Response { status: 200, grpc: None };

    #[test]
    fn consecutive_5xx_eject_and_ejection_time_grows_up_to_the_cap() {
        let o = outlier(&spec(), 4);
        o.observe_at(1, FAIL, 0);
        o.observe_at(1, FAIL, 0);
        o.observe_at(1, OK, 0);
        o.observe_at(1, FAIL, 0);
        o.observe_at(1, FAIL, 0);
        assert!(!o.is_ejected_at(1, 0), "a success resets the count");
        o.observe_at(1, FAIL, 0);
        assert!(o.is_ejected_at(1, 999));
        assert!(!o.is_ejected_at(1, 1000), "the first ejection lasts base_ejection");
        assert_eq!(o.ejected_count(), 0);
        for _ in 0..3 {
            o.observe_at(1, FAIL, 5000);
        }
        assert!(o.is_ejected_at(1, 6999) && !o.is_ejected_at(1, 7000), "the second lasts twice as long");
        for _ in 0..3 {
            o.observe_at(1, FAIL, 10_000);
        }
        assert!(o.is_ejected_at(1, 12_499) && !o.is_ejected_at(1, 12_500), "capped at max_ejection");
        assert_eq!(o.stats.ejections.get(), 3);
    }

    #[test]
    fn at_most_max_ejection_percent_are_out_at_once() {
        let o = outlier(&spec(), 4);
        for i in 0..4 {
            for _ in 0..3 {
                o.observe_at(i, FAIL, 0);
            }
        }
        assert_eq!(o.ejected_count(), 2, "50% of 4");
        assert_eq!((0..4).filter(|&i| o.is_ejected_at(i, 1)).count(), 2);
        // One endpoint may always be ejected, even when the percentage rounds to zero.
        let one = outlier(&OutlierSpec { max_ejection_percent: 10, ..spec() }, 3);
        for i in 0..3 {
            for _ in 0..3 {
                one.observe_at(i, FAIL, 0);
            }
        }
        assert_eq!(one.ejected_count(), 1);
    }

    #[test]
    fn gateway_errors_count_separately_and_refused_streams_not_at_all() {
        let s = OutlierSpec { consecutive_5xx: 0, consecutive_gateway_errors: 2, ..spec() };
        let o = outlier(&s, 2);
        o.observe_at(0, TryOutcome::Response { status: 500, grpc: None }, 0);
        o.observe_at(0, TryOutcome::RefusedStream, 0);
        o.observe_at(0, TryOutcome::ConnectFailure, 0);
        assert!(!o.is_ejected_at(0, 0), "a 500 breaks the run of gateway errors");
        o.observe_at(0, TryOutcome::Reset, 0);
        assert!(o.is_ejected_at(0, 0));
    }

    #[test]
    fn success_rate_ejects_at_the_end_of_a_window() {
        let s = OutlierSpec {
            consecutive_5xx: 0,
            success_rate: Some(SuccessRateSpec {
                minimum_percent: 80.0,
                request_volume: 10,
                interval_ms: 100,
            }),
            ..spec()
        };
        let o = outlier(&s, 2);
        for k in 0..10 {
            o.observe_at(0, if k < 7 { OK } else { FAIL }, 10);
            o.observe_at(1, OK, 10);
        }
        assert!(!o.is_ejected_at(0, 50), "judged only when the window closes");
        o.observe_at(1, OK, 150);
        assert!(o.is_ejected_at(0, 150), "70% < 80%");
        assert!(!o.is_ejected_at(1, 150));
    }

    #[test]
    fn the_epoch_moves_on_ejection_and_return_and_tick_ends_due_ejections() {
        let o = outlier(&OutlierSpec { max_ejection_percent: 100, base_ejection_ms: 1, ..spec() }, 2);
        let e0 = o.epoch();
        o.tick();
        assert_eq!(o.epoch(), e0, "nothing ejected: nothing moves");
        for _ in 0..3 {
            o.observe(1, FAIL);
        }
        assert!(o.epoch() > e0);
        let e1 = o.epoch();
        poll_until(|| {
            o.tick();
            o.epoch() > e1
        });
        assert!(!o.is_ejected(1));
        assert_eq!(o.ejected_count(), 0);
    }

    fn poll_until(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::yield_now();
        }
    }

    #[test]
    fn dropping_a_detector_gives_back_its_ejections_in_the_gauge() {
        let stats = Arc::new(ClusterStats::default());
        let o = Outlier::compile(&spec(), "o", 2, Arc::clone(&stats)).unwrap().unwrap();
        for _ in 0..3 {
            o.observe(0, FAIL);
        }
        assert_eq!(stats.ejected.get(), 1);
        drop(o);
        assert_eq!(stats.ejected.get(), 0);
    }

    #[test]
    fn bad_specs_name_their_field() {
        let e = Outlier::compile(&OutlierSpec { max_ejection_ms: 10, ..spec() }, "x", 1, Arc::default())
            .unwrap_err();
        assert_eq!(e.path, "x.max_ejection_ms");
        assert!(Outlier::compile(&OutlierSpec { consecutive_5xx: 0, ..spec() }, "x", 1, Arc::default())
            .unwrap()
            .is_none());
    }
}
