//! Retries: which failures are retried, which requests may be replayed, and how long to wait
//! between tries.
//!
//! The replay rule is the one that keeps a proxy from doing harm: a request is retried only
//! when its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or the route marks
//! it so, or when the upstream provably never saw it (the connect failed, or HTTP/2 refused
//! the stream). A POST that reached the upstream is never replayed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::limits::{DownstreamBodyError, RequestBody};

use super::TryOutcome;
use crate::config::RetrySpec;
use crate::error::Error;

#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) attempts: u32,
    connect_failure: bool,
    reset: bool,
    refused_stream: bool,
    /// Bit `s - 100` set: status `s` is retried.
    statuses: [u64; 8],
    /// Bit `c` set: `grpc-status: c` is retried.
    grpc: u32,
    idempotent: bool,
    backoff: Duration,
    max_backoff: Duration,
    pub(crate) budget_percent: f64,
    pub(crate) min_retries_per_second: u32,
    pub(crate) buffer_limit: u64,
}

impl RetryPolicy {
    /// `None` when no retry can happen (0 attempts, or no condition).
    pub(crate) fn compile(spec: &RetrySpec, path: &str) -> Result<Option<Self>, Error> {
        let mut statuses = [0u64; 8];
        for (i, &s) in spec.on.statuses.iter().enumerate() {
            if !(100..=599).contains(&s) {
                return Err(Error::config(format!("{path}.on.statuses.{i}"), "a status is from 100 to 599"));
            }
            let bit = usize::from(s - 100);
            statuses[bit / 64] |= 1 << (bit % 64);
        }
        let mut grpc = 0u32;
        for (i, &c) in spec.on.grpc_statuses.iter().enumerate() {
            if c > 16 {
                return Err(Error::config(
                    format!("{path}.on.grpc_statuses.{i}"),
                    "a gRPC status is from 0 to 16",
                ));
            }
            grpc |= 1 << c;
        }
        if !(0.0..=1000.0).contains(&spec.budget_percent) {
            return Err(Error::config(format!("{path}.budget_percent"), "must be from 0 to 1000"));
        }
        if spec.max_backoff_ms < spec.backoff_ms {
            return Err(Error::config(format!("{path}.max_backoff_ms"), "must be at least backoff_ms"));
        }
        let any = spec.on.connect_failure
            || spec.on.reset
            || spec.on.refused_stream
            || statuses.iter().any(|w| *w != 0)
            || grpc != 0;
        if spec.attempts == 0 || !any {
            return Ok(None);
        }
        Ok(Some(Self {
            attempts: spec.attempts,
            connect_failure: spec.on.connect_failure,
            reset: spec.on.reset,
            refused_stream: spec.on.refused_stream,
            statuses,
            grpc,
            idempotent: spec.idempotent,
            backoff: Duration::from_millis(spec.backoff_ms),
            max_backoff: Duration::from_millis(spec.max_backoff_ms),
            budget_percent: spec.budget_percent,
            min_retries_per_second: spec.min_retries_per_second,
            buffer_limit: spec.buffer_limit,
        }))
    }

    fn status_retried(&self, status: u16) -> bool {
        (100..=599).contains(&status) && {
            let bit = usize::from(status - 100);
            self.statuses[bit / 64] & (1 << (bit % 64)) != 0
        }
    }

    /// Whether the route lets this request be replayed once the upstream may have seen it.
    pub(crate) fn may_replay(&self, method: &Method) -> bool {
        self.idempotent || is_idempotent(method)
    }

    /// Whether a try that ended so should be retried (ignoring attempts and budget).
    pub(crate) fn retries(&self, outcome: TryOutcome, method: &Method) -> bool {
        let wanted = match outcome {
            TryOutcome::Response { status, grpc } => {
                self.status_retried(status) || grpc.is_some_and(|c| c <= 16 && self.grpc & (1 << c) != 0)
            }
            TryOutcome::ConnectFailure | TryOutcome::ConnectTimeout => self.connect_failure,
            TryOutcome::RefusedStream => self.refused_stream || self.reset,
            TryOutcome::Reset => self.reset,
            // A try that timed out is a gateway error (504), as Envoy counts it.
            TryOutcome::PerTryTimeout => self.reset || self.status_retried(504),
        };
        wanted && (outcome.never_sent() || self.may_replay(method))
    }

    /// How long to wait before retry number `n` (1-based): exponential from `backoff`,
    /// capped at `max_backoff`, with jitter over its upper half.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        backoff(self.backoff, self.max_backoff, n, fastrand::f64())
    }
}

// === bodies kept for replay ===

/// Read a body of known length up to `limit` to its end (the client has committed to sending
/// it), for every try to get a copy; `None`: it cannot be read so (unknown length, or too
/// long). Bodies of unknown length go through a [`Tee`] instead.
pub(crate) async fn buffer_known(body: &mut RequestBody, limit: u64) -> Option<Result<Bytes, ()>> {
    if body.size_hint().exact().is_none_or(|n| n > limit) {
        return None;
    }
    let mut whole = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame.map(Frame::into_data) {
            Ok(Ok(data)) => whole.extend_from_slice(&data),
            Ok(Err(_)) => {}
            Err(_) => return Some(Err(())),
        }
    }
    Some(Ok(whole.freeze()))
}

/// A body of unknown length (HTTP/1.1 chunked, most HTTP/2 and gRPC requests) streamed to the
/// first try as it arrives, never waiting for the client, while a copy is kept on the side up
/// to `limit`. If the try fails after the whole body went through within the limit, the copy
/// is complete and later tries replay it; otherwise there is nothing to replay. The copy is
/// behind a mutex that only this request's tasks touch (uncontended).
#[derive(Debug)]
pub(crate) struct Tee {
    inner: RequestBody,
    copy: Arc<Mutex<Copy>>,
}

#[derive(Debug, Default)]
pub(crate) struct Copy {
    chunks: Vec<Bytes>,
    size: u64,
    limit: u64,
    complete: bool,
    /// Too long, or it had trailers (which a replay does not carry): no replay.
    spoiled: bool,
}

impl Tee {
    pub(crate) fn new(inner: RequestBody, limit: u64) -> (Self, Arc<Mutex<Copy>>) {
        let copy = Arc::new(Mutex::new(Copy { limit, ..Copy::default() }));
        (Self { inner, copy: Arc::clone(&copy) }, copy)
    }
}

impl Copy {
    /// The whole body, if all of it went through and was kept.
    pub(crate) fn whole(&self) -> Option<Bytes> {
        if !self.complete || self.spoiled {
            return None;
        }
        let mut whole = BytesMut::with_capacity(usize::try_from(self.size).unwrap_or(0));
        for chunk in &self.chunks {
            whole.extend_from_slice(chunk);
        }
        Some(whole.freeze())
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamBodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(step) = &polled {
            let mut copy = self.copy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match step {
                Some(Ok(frame)) => match frame.data_ref() {
                    Some(data) if !copy.spoiled => {
                        copy.size += data.len() as u64;
                        if copy.size > copy.limit {
                            copy.spoiled = true;
                            copy.chunks = Vec::new();
                        } else {
                            copy.chunks.push(data.clone());
                        }
                    }
                    Some(_) => {}
                    None => copy.spoiled = true,
                },
                Some(Err(_)) => copy.spoiled = true,
                None => copy.complete = true,
            }
            // hyper sends END_STREAM with the last frame once the body says it has ended,
            // and then never polls it for the `None` that would say so.
            if self.inner.is_end_stream() {
                copy.complete = true;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// RFC 9110's idempotent methods (TRACE included), the ones a proxy may replay.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// `base * 2^(n-1)`, capped at `max`, scaled by a random factor in `[0.5, 1]` (`unit` is
/// uniform in `[0, 1)`): never more than the cap, never less than half the step.
pub(crate) fn backoff(base: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    let step = base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max);
    step.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOnSpec;

    fn spec(statuses: Vec<u16>, idempotent: bool) -> RetrySpec {
        RetrySpec {
            attempts: 2,
            on: RetryOnSpec {
                connect_failure: true,
                reset: true,
                refused_stream: true,
                statuses,
                grpc_statuses: vec![14],
            },
            idempotent,
            backoff_ms: 25,
            max_backoff_ms: 250,
            budget_percent: 20.0,
            min_retries_per_second: 10,
            buffer_limit: 65536,
        }
    }

    const S503: TryOutcome = TryOutcome::Response { status: 503, grpc: None };

    #[test]
    fn idempotent_methods_are_replayed_and_post_only_when_never_sent() {
        let p = RetryPolicy::compile(&spec(vec![503], false), "r").unwrap().unwrap();
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(p.retries(S503, &m), "{m}");
            assert!(p.retries(TryOutcome::Reset, &m), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!p.retries(S503, &m), "a {m} that reached the upstream is never replayed");
            assert!(!p.retries(TryOutcome::Reset, &m));
            assert!(!p.retries(TryOutcome::PerTryTimeout, &m));
            assert!(p.retries(TryOutcome::ConnectFailure, &m), "never sent");
            assert!(p.retries(TryOutcome::RefusedStream, &m), "never processed");
        }
        let marked = RetryPolicy::compile(&spec(vec![503], true), "r").unwrap().unwrap();
        assert!(marked.retries(S503, &Method::POST), "the route's opt-in");
    }

    #[test]
    fn only_chosen_statuses_and_grpc_codes_are_retried() {
        let p = RetryPolicy::compile(&spec(vec![502, 503], false), "r").unwrap().unwrap();
        assert!(p.retries(TryOutcome::Response { status: 502, grpc: None }, &Method::GET));
        assert!(!p.retries(TryOutcome::Response { status: 500, grpc: None }, &Method::GET));
        assert!(!p.retries(TryOutcome::Response { status: 200, grpc: None }, &Method::GET));
        assert!(p.retries(TryOutcome::Response { status: 200, grpc: Some(14) }, &Method::GET));
        assert!(!p.retries(TryOutcome::Response { status: 200, grpc: Some(13) }, &Method::GET));
        assert!(!p.retries(TryOutcome::Response { status: 200, grpc: Some(99) }, &Method::GET));
    }

    #[test]
    fn backoff_grows_and_stays_within_its_jitter_bounds() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        for n in 1..=8 {
            let step = (base * (1 << (n - 1))).min(max);
            assert_eq!(backoff(base, max, n, 0.0), step / 2);
            assert!(backoff(base, max, n, 0.999_999) <= step);
            let p = RetryPolicy::compile(&spec(vec![503], false), "r").unwrap().unwrap();
            for _ in 0..100 {
                let d = p.backoff(n);
                assert!(d >= step / 2 && d <= step, "{n}: {d:?}");
            }
        }
        assert_eq!(backoff(base, max, 40, 0.0), max / 2, "no overflow for large n");
    }

    #[test]
    fn a_kept_copy_replays_only_a_whole_body_within_the_limit() {
        let copy = |chunks: &[&'static str], complete: bool, spoiled: bool| Copy {
            chunks: chunks.iter().map(|c| Bytes::from_static(c.as_bytes())).collect(),
            size: chunks.iter().map(|c| c.len() as u64).sum(),
            limit: 100,
            complete,
            spoiled,
        };
        assert_eq!(copy(&["ab", "cd"], true, false).whole().unwrap(), "abcd");
        assert!(copy(&["ab"], false, false).whole().is_none(), "the body had not ended");
        assert!(copy(&[], true, true).whole().is_none(), "too long, or with trailers");
    }

    #[test]
    fn nothing_to_retry_is_no_policy_and_bad_values_name_their_field() {
        assert!(RetryPolicy::compile(&RetrySpec { attempts: 0, ..spec(vec![503], false) }, "r")
            .unwrap()
            .is_none());
        let e = RetryPolicy::compile(&spec(vec![700], false), "r").unwrap_err();
        assert_eq!(e.path, "r.on.statuses.0");
    }
}
