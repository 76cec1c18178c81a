//! Fault injection per route, for chaos testing: a fixed delay for a percentage of
//! requests, and an abort with a chosen status for a percentage of requests. Rolls use the
//! thread-local RNG: no shared state, no lock.

use std::time::Duration;

use http::StatusCode;

use super::{per_million, roll};
use crate::config::FaultSpec;
use crate::error::Error;

#[derive(Debug)]
pub(crate) struct Fault {
    delay: Option<(Duration, u32)>,
    abort: Option<(StatusCode, u32)>,
}

impl Fault {
    /// `None` when neither fault can fire.
    pub(crate) fn compile(spec: &FaultSpec, path: &str) -> Result<Option<Self>, Error> {
        let delay = match &spec.delay {
            Some(d) => {
                if d.duration_ms == 0 {
                    return Err(Error::config(
                        format!("{path}.delay.duration_ms"),
                        "must be greater than zero",
                    ));
                }
                let ppm = per_million(d.percent, &format!("{path}.delay.percent"))?;
                (ppm > 0).then_some((Duration::from_millis(d.duration_ms), ppm))
            }
            None => None,
        };
        let abort = match &spec.abort {
            Some(a) => {
                let status = StatusCode::from_u16(a.status)
                    .ok()
                    .filter(|s| (200..=599).contains(&s.as_u16()))
                    .ok_or_else(|| {
                        Error::config(format!("{path}.abort.status"), "must be from 200 to 599")
                    })?;
                let ppm = per_million(a.percent, &format!("{path}.abort.percent"))?;
                (ppm > 0).then_some((status, ppm))
            }
            None => None,
        };
        Ok((delay.is_some() || abort.is_some()).then_some(Self { delay, abort }))
    }

    /// The delay to inject into this request, if it is one of the delayed.
    #[inline]
    pub(crate) fn delay(&self) -> Option<Duration> {
        self.delay.and_then(|(d, ppm)| roll(ppm).then_some(d))
    }

    /// The status to abort this request with, if it is one of the aborted.
    #[inline]
    pub(crate) fn abort(&self) -> Option<StatusCode> {
        self.abort.and_then(|(s, ppm)| roll(ppm).then_some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FaultAbortSpec, FaultDelaySpec};

    #[test]
    fn faults_fire_for_their_percentage() {
        let spec = FaultSpec {
            delay: Some(FaultDelaySpec { duration_ms: 5, percent: 100.0 }),
            abort: Some(FaultAbortSpec { status: 503, percent: 50.0 }),
        };
        let f = Fault::compile(&spec, "f").unwrap().unwrap();
        assert_eq!(f.delay(), Some(Duration::from_millis(5)));
        let aborted = (0..10_000).filter(|_| f.abort() == Some(StatusCode::SERVICE_UNAVAILABLE)).count();
        assert!((4_700..5_300).contains(&aborted), "{aborted}");
    }

    #[test]
    fn zero_percent_is_no_fault_and_bad_values_are_refused() {
        let none = FaultSpec { delay: None, abort: Some(FaultAbortSpec { status: 500, percent: 0.0 }) };
        assert!(Fault::compile(&none, "f").unwrap().is_none());
        let bad = FaultSpec { delay: None, abort: Some(FaultAbortSpec { status: 99, percent: 1.0 }) };
        assert_eq!(Fault::compile(&bad, "f").unwrap_err().path, "f.abort.status");
        let pct = FaultSpec { delay: Some(FaultDelaySpec { duration_ms: 1, percent: 101.0 }), abort: None };
        assert_eq!(Fault::compile(&pct, "f").unwrap_err().path, "f.delay.percent");
    }
}
