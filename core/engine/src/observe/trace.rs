//! Distributed tracing: trace context in and out, and spans exported over OTLP.
//!
//! [`Tracer::begin`] runs on every request head of a traced listener: it reads the caller's
//! context (W3C `traceparent`, else B3), continues it or starts a trace (drawing the sampling
//! decision), and rewrites the headers the upstream will get so that the upstream's span is
//! a child of the proxy's CLIENT span. A malformed `traceparent` is never passed on.
//!
//! A sampled request becomes two spans: SERVER (the proxy receiving the request; parent: the
//! caller's span) and CLIENT (the upstream call, child of the SERVER span; its id is the
//! parent id the upstream sees, as Envoy sends its egress span). [`Tracer::end`] hands the
//! finished request's record to a bounded queue and never waits: the exporter thread
//! (export.rs) batches, encodes (otlp.rs) and posts them; what does not fit is dropped and
//! counted.

pub(crate) mod context;
pub(crate) mod export;
pub(crate) mod otlp;

use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use self::context::{
    Incoming, B3, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, REQUEST_ID, TRACEPARENT, TRACESTATE,
};
use super::Record;
use crate::config::TracingSpec;
use crate::error::Error;
use crate::metrics::Counter;

/// The trace context of one request as the proxy continues it.
#[derive(Debug, Clone)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: [u8; 16],
    /// The proxy's SERVER span.
    pub(crate) span_id: [u8; 8],
    /// The caller's span, when it sent a valid context.
    pub(crate) parent_span_id: Option<[u8; 8]>,
    /// The proxy's CLIENT span: the parent id sent upstream.
    pub(crate) client_span_id: [u8; 8],
    pub(crate) sampled: bool,
    /// The caller's `tracestate`, kept only for sampled requests (the spans carry it).
    pub(crate) trace_state: Option<HeaderValue>,
}

/// Tracing counters; they live in `Metrics`, so they outlast a tracer that a new config
/// replaces.
#[derive(Debug, Default)]
pub(crate) struct TraceStats {
    /// Spans dropped: the queue was full, or their export failed.
    pub(crate) spans_dropped: Counter,
    /// Spans the collector accepted.
    pub(crate) spans_exported: Counter,
    /// Export requests that failed (connect error, timeout, non-2xx answer).
    pub(crate) export_failures: Counter,
}

/// The tracer of a config: its sampling, and the queue to its exporter thread.
#[derive(Debug)]
pub(crate) struct Tracer {
    spec: TracingSpec,
    /// `sampled` when a uniform u32 is below this (2^32: always).
    threshold: u64,
    request_id: bool,
    queue: SyncSender<Arc<Record>>,
    stats: Arc<TraceStats>,
}

impl Tracer {
    /// Check `spec` (its fields at `path`) and start its exporter thread.
    pub(crate) fn new(spec: &TracingSpec, path: &str, stats: Arc<TraceStats>) -> Result<Self, Error> {
        let target = export::Target::parse(&spec.otlp_endpoint, &format!("{path}.otlp_endpoint"))?;
        if !(0.0..=100.0).contains(&spec.sample_percent) {
            return Err(Error::config(format!("{path}.sample_percent"), "must be between 0 and 100"));
        }
        if spec.service_name.is_empty() {
            return Err(Error::config(format!("{path}.service_name"), "must not be empty"));
        }
        let positive = |v: u64, field: &str| {
            if v == 0 {
                Err(Error::config(format!("{path}.{field}"), "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive(u64::from(spec.max_queue_spans), "max_queue_spans")?;
        positive(u64::from(spec.batch_size), "batch_size")?;
        positive(spec.flush_interval_ms, "flush_interval_ms")?;
        positive(spec.export_timeout_ms, "export_timeout_ms")?;
        if spec.max_queue_spans > 1_000_000 {
            return Err(Error::config(format!("{path}.max_queue_spans"), "must be at most 1000000"));
        }
        if spec.batch_size > spec.max_queue_spans {
            return Err(Error::config(format!("{path}.batch_size"), "must be at most max_queue_spans"));
        }
        // The queue holds finished requests; each makes up to two spans.
        let capacity = usize::try_from(spec.max_queue_spans.div_ceil(2)).unwrap_or(usize::MAX);
        let (queue, rx) = mpsc::sync_channel(capacity);
        export::Exporter::start(target, spec, rx, Arc::clone(&stats))?;
        // Truncation is fine: the threshold is a fraction of 2^32.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = (spec.sample_percent / 100.0 * 4_294_967_296.0) as u64;
        Ok(Self {
            spec: TracingSpec { listeners: None, ..spec.clone() },
            threshold,
            request_id: spec.request_id,
            queue,
            stats,
        })
    }

    /// Whether this tracer serves `spec` as it is (the listeners it covers aside), so that a
    /// re-applied config keeps it, its exporter and the spans queued.
    pub(crate) fn serves(&self, spec: &TracingSpec) -> bool {
        self.spec == TracingSpec { listeners: None, ..spec.clone() }
    }

    /// Read (or start) the request's trace context and rewrite its headers for the upstream.
    pub(crate) fn begin(&self, headers: &mut HeaderMap) -> Option<SpanContext> {
        let incoming = read(headers);
        let (trace_id, parent_span_id) = match incoming.ids {
            Some((t, s)) => (t, Some(s)),
            None => (context::random_id(), None),
        };
        let sampled = incoming.sampled.unwrap_or_else(|| u64::from(fastrand::u32(..)) < self.threshold);
        let span_id = context::random_id();
        let client_span_id = context::random_id();

        let tp = context::format_traceparent(&trace_id, &client_span_id, sampled);
        headers.insert(TRACEPARENT, context::header_value(&tp));
        if parent_span_id.is_none() {
            // A new trace: a `tracestate` belonged to the context that was not continued.
            headers.remove(TRACESTATE);
        }
        if headers.contains_key(B3) {
            let (b3, len) = context::format_b3_single(
                &trace_id,
                incoming.short_trace_id,
                &client_span_id,
                sampled,
                &span_id,
            );
            headers.insert(B3, context::header_value(&b3[..len]));
        }
        if headers.contains_key(B3_TRACE_ID)
            || headers.contains_key(B3_SPAN_ID)
            || headers.contains_key(B3_SAMPLED)
        {
            let mut buf = [0u8; 32];
            let trace = if incoming.short_trace_id { &trace_id[8..] } else { &trace_id[..] };
            context::write_hex(&mut buf, trace);
            headers.insert(B3_TRACE_ID, context::header_value(&buf[..trace.len() * 2]));
            context::write_hex(&mut buf, &client_span_id);
            headers.insert(B3_SPAN_ID, context::header_value(&buf[..16]));
            context::write_hex(&mut buf, &span_id);
            headers.insert(B3_PARENT_SPAN_ID, context::header_value(&buf[..16]));
            headers.insert(B3_SAMPLED, HeaderValue::from_static(if sampled { "1" } else { "0" }));
        }
        if self.request_id && !headers.contains_key(REQUEST_ID) {
            headers.insert(REQUEST_ID, context::header_value(&context::uuid_v4()));
        }
        let trace_state = if sampled { headers.get(TRACESTATE).cloned() } else { None };
        Some(SpanContext { trace_id, span_id, parent_span_id, client_span_id, sampled, trace_state })
    }

    /// Queue the spans of a finished, sampled request for export; never waits. A full queue
    /// drops them and counts it.
    pub(crate) fn end(&self, record: &Arc<Record>) {
        if self.queue.try_send(Arc::clone(record)).is_err() {
            self.stats.spans_dropped.add(otlp::spans_of(record));
        }
    }
}

/// The caller's context: a valid `traceparent` (exactly one) wins; otherwise the single
/// `b3` header, then the multi-header B3 form. A malformed `traceparent` counts as absent.
fn read(headers: &HeaderMap) -> Incoming {
    let mut tps = headers.get_all(TRACEPARENT).iter();
    if let (Some(tp), None) = (tps.next(), tps.next()) {
        if let Some(found) = context::parse_traceparent(tp.as_bytes()) {
            return found;
        }
    }
    if let Some(found) = headers.get(B3).and_then(|v| context::parse_b3_single(v.as_bytes())) {
        return found;
    }
    context::parse_b3_multi(headers).unwrap_or_default()
}

#[cfg(test)]
mod tests;
