//! What happened to one request, recorded once when it ends: the metrics it feeds, and (only
//! when someone wants it) a [`Record`] for the access log, the live tap and the trace span.
//!
//! An [`Exchange`] starts when the request head is parsed and travels with the request
//! through routing and the tries; it collects what the request path learns (route, cluster,
//! endpoint, attempts, time to the upstream's first byte, why the proxy answered itself).
//! The response body is wrapped in an [`ObservedBody`] that counts the bytes sent and, at the
//! end of the stream or when the body is dropped early, finishes the exchange.
//!
//! The cost when nothing listens: no access log on the listener, the request not sampled
//! for tracing and no tap subscriber means no [`Detail`] is captured and no [`Record`] is
//! built; the exchange is then a few words moved along with the response, and its end is a
//! handful of relaxed atomic adds.

pub(crate) mod accesslog;
pub(crate) mod tap;
pub(crate) mod trace;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use hyper::body::{Body, Frame, SizeHint};

use crate::http::ProxyBody;
use crate::metrics::{GaugeGuard, RouteStats, StatusCounters};

/// Why the proxy answered (or ended) a request itself, as a set of Envoy's response flags,
/// whose short names operators of Envoy and Istio already read in access logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    /// NR: no route matched.
    pub(crate) const NO_ROUTE: Self = Self(1);
    /// UH: no healthy endpoint in the cluster.
    pub(crate) const NO_HEALTHY_UPSTREAM: Self = Self(1 << 1);
    /// UF: the upstream connection could not be made.
    pub(crate) const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 2);
    /// UO: a circuit breaker refused the request.
    pub(crate) const UPSTREAM_OVERFLOW: Self = Self(1 << 3);
    /// UT: a timeout fired (connect, per-try, request or upstream idle).
    pub(crate) const UPSTREAM_TIMEOUT: Self = Self(1 << 4);
    /// UR: the upstream reset the stream or broke the exchange.
    pub(crate) const UPSTREAM_RESET: Self = Self(1 << 5);
    /// URX: retries ran out (attempts or budget) on a retryable outcome.
    pub(crate) const RETRY_LIMIT_EXCEEDED: Self = Self(1 << 6);
    /// RL: the local rate limit refused the request.
    pub(crate) const RATE_LIMITED: Self = Self(1 << 7);
    /// DI: fault injection delayed the request.
    pub(crate) const DELAY_INJECTED: Self = Self(1 << 8);
    /// FI: fault injection aborted the request.
    pub(crate) const FAULT_INJECTED: Self = Self(1 << 9);
    /// DPE: the client sent what the proxy refuses (framing, limits, a bad body).
    pub(crate) const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 10);
    /// DC: the response ended before it was sent whole (the client left, or the upstream
    /// body broke mid-stream).
    pub(crate) const DOWNSTREAM_TERMINATED: Self = Self(1 << 11);

    const NAMES: [(Self, &'static str); 12] = [
        (Self::NO_ROUTE, "NR"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::UPSTREAM_RESET, "UR"),
        (Self::RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::RATE_LIMITED, "RL"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Self::DOWNSTREAM_TERMINATED, "DC"),
    ];

    #[inline]
    pub(crate) fn set(&mut self, flag: Self) {
        self.0 |= flag.0;
    }

    pub(crate) fn contains(self, flag: Self) -> bool {
        self.0 & flag.0 == flag.0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The short names of the flags set, in a fixed order.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().filter(move |(f, _)| self.contains(*f)).map(|(_, n)| n)
    }

    /// The flags as Envoy prints them: comma-separated short names, `-` for none.
    pub(crate) fn text(self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// One HTTP listener's observability settings, compiled with its snapshot.
#[derive(Debug)]
pub(crate) struct Observe {
    pub(crate) listener: Arc<str>,
    pub(crate) access_log: Option<Arc<accesslog::AccessLog>>,
    pub(crate) tracer: Option<Arc<trace::Tracer>>,
}

/// The facts of a request kept for its record, captured only when a record will be made.
#[derive(Debug)]
///
/// The four texts (authority, path, request id, user agent) are copied into one string: one
/// allocation per request. Not kept as the request's own `Uri` and header values, although
/// those would be free to clone: they are views of hyper's read buffer, and holding them until
/// the record is written (up to 20 ms later) stops hyper from reusing that buffer, which then
/// costs an allocation and a copy per request (measured: +5% proxy CPU per request).
pub(crate) struct Detail {
    pub(crate) time: SystemTime,
    pub(crate) method: Method,
    pub(crate) version: Version,
    pub(crate) peer: SocketAddr,
    /// Authority, path, request id and user agent, end to end; `ends` says where each ends.
    text: String,
    ends: [usize; 4],
    /// The request body's declared length (0 without a body; None when streamed unsized).
    pub(crate) request_bytes: Option<u64>,
    /// Whether the access log takes this request (its sampling drawn at the start).
    pub(crate) logged: bool,
}

/// What only a record of the request reads: made when an access log, a trace or the tap
/// wants the request, not at all otherwise (each of these an `Arc` reference count up and
/// down per request, for nothing).
#[derive(Debug)]
struct Recording {
    observe: Arc<Observe>,
    tap: Arc<tap::Tap>,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    endpoint: Option<Authority>,
    detail: Box<Detail>,
}

/// One request, in progress: a pointer, as it moves with the request through the request
/// path's layers and into the response body. Inline, its 184 bytes were copied by a `memmove`
/// call at each move (five per request); one allocation costs less.
#[derive(Debug)]
pub(crate) struct Exchange(Box<ExchangeState>);

impl std::ops::Deref for Exchange {
    type Target = ExchangeState;
    #[inline]
    fn deref(&self) -> &ExchangeState {
        &self.0
    }
}

impl std::ops::DerefMut for Exchange {
    #[inline]
    fn deref_mut(&mut self) -> &mut ExchangeState {
        &mut self.0
    }
}

/// What an [`Exchange`] records.
#[derive(Debug)]
pub(crate) struct ExchangeState {
    start: Instant,
    /// The route's stats, once a route took the request.
    pub(crate) route_stats: Option<Arc<RouteStats>>,
    /// The listener/route/cluster counters, once a cluster was chosen (gRPC status and the
    /// time to the upstream's first byte are counted there at the end).
    pub(crate) target_stats: Option<Arc<StatusCounters>>,
    /// The listener's active-requests gauge, held until the response ends (listener.rs).
    pub(crate) active: Option<GaugeGuard>,
    /// Tries sent upstream (0: answered locally).
    pub(crate) attempts: u32,
    pub(crate) flags: Flags,
    /// From the start of the request to the upstream's response head.
    pub(crate) upstream_first_byte: Option<Duration>,
    /// From the start of the request to its first try upstream (the CLIENT span's start).
    pub(crate) upstream_sent: Option<Duration>,
    pub(crate) grpc_status: Option<u32>,
    /// The request's trace context (trace.rs), when tracing is on for the listener.
    pub(crate) trace: Option<trace::SpanContext>,
    recording: Option<Box<Recording>>,
}

impl Exchange {
    /// When the request's head arrived: the request path's one clock reading, which the
    /// policies (rate limit, retry budget, timeouts) reuse.
    #[inline]
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// Start observing `req`: tracing headers first (trace.rs may set `x-request-id` and the
    /// propagated context), then, when an access log, a trace or a tap wants this request,
    /// its facts.
    pub(crate) fn begin<B: Body>(
        observe: &Arc<Observe>,
        tap: &Arc<tap::Tap>,
        req: &mut Request<B>,
        peer: SocketAddr,
    ) -> Self {
        let start = Instant::now();
        let trace = observe.tracer.as_ref().and_then(|t| t.begin(req.headers_mut()));
        let logged = observe.access_log.as_ref().is_some_and(|l| l.sampled());
        let sampled = trace.as_ref().is_some_and(|t| t.sampled);
        let recording = (logged || sampled || tap.active()).then(|| {
            Box::new(Recording {
                observe: Arc::clone(observe),
                tap: Arc::clone(tap),
                route: None,
                cluster: None,
                endpoint: None,
                detail: Box::new(Detail::of(req, peer, logged)),
            })
        });
        // Written straight into its box (`Box::new` of a value made first copies it in).
        Self(Box::write(
            Box::new_uninit(),
            ExchangeState {
                start,
                route_stats: None,
                target_stats: None,
                active: None,
                attempts: 0,
                flags: Flags::default(),
                upstream_first_byte: None,
                upstream_sent: None,
                grpc_status: None,
                trace,
                recording,
            },
        ))
    }

    /// The route that took the request, for its record.
    pub(crate) fn note_route(&mut self, name: &Arc<str>) {
        if let Some(r) = &mut self.recording {
            r.route = Some(Arc::clone(name));
        }
    }

    /// The cluster the request went to, for its record.
    pub(crate) fn note_cluster(&mut self, name: &Arc<str>) {
        if let Some(r) = &mut self.recording {
            r.cluster = Some(Arc::clone(name));
        }
    }

    /// The endpoint of the latest try, for its record.
    pub(crate) fn note_endpoint(&mut self, endpoint: &Authority) {
        if let Some(r) = &mut self.recording {
            r.endpoint = Some(endpoint.clone());
        }
    }

    /// Note that a try goes upstream now (only the first one is kept). Only a record reads
    /// it, so without one (no sink wants this request) no clock is read.
    #[inline]
    pub(crate) fn sending_upstream(&mut self) {
        if self.upstream_sent.is_none() && self.recording.is_some() {
            self.upstream_sent = Some(self.start.elapsed());
        }
    }

    /// Note the upstream's response head: now, and its `grpc-status` when it carries one.
    pub(crate) fn upstream_answered(&mut self, headers: &HeaderMap) {
        self.upstream_first_byte = Some(self.start.elapsed());
        // Each try's own (a retried try must not inherit the status of the one before).
        self.grpc_status = grpc_status(headers);
    }

    /// Wrap the response whose body ends this exchange.
    pub(crate) fn finish(self, resp: Response<ProxyBody>) -> Response<ObservedBody> {
        let status = resp.status().as_u16();
        resp.map(|inner| ObservedBody {
            inner,
            state: Some(Ending { ex: self, status, bytes: 0, whole: false }),
        })
    }
}

/// The `grpc-status` of a response head or trailers, when it carries a number.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    // A name made once: looked up by `&str`, the name is parsed again on every response.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

impl Detail {
    fn of<B: Body>(req: &Request<B>, peer: SocketAddr, logged: bool) -> Self {
        let headers = req.headers();
        let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or_default();
        let authority = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => header(HOST),
        };
        let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        Self::new(
            SystemTime::now(),
            req.method().clone(),
            req.version(),
            peer,
            [authority, path, header(REQUEST_ID), header(USER_AGENT)],
            req.body().size_hint().exact(),
            logged,
        )
    }

    /// `texts`: the authority, path and query, request id and user agent.
    pub(crate) fn new(
        time: SystemTime,
        method: Method,
        version: Version,
        peer: SocketAddr,
        texts: [&str; 4],
        request_bytes: Option<u64>,
        logged: bool,
    ) -> Self {
        let mut text = String::with_capacity(texts.iter().map(|t| t.len()).sum());
        let mut ends = [0; 4];
        for (t, end) in texts.iter().zip(&mut ends) {
            text.push_str(t);
            *end = text.len();
        }
        Self { time, method, version, peer, text, ends, request_bytes, logged }
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// The request's authority: the target's (absolute form, HTTP/2), else its `Host`.
    pub(crate) fn authority(&self) -> &str {
        self.field(0)
    }

    /// The path and query as the client sent them.
    pub(crate) fn path(&self) -> &str {
        self.field(1)
    }

    /// `x-request-id` (as the client sent it, or as tracing set it); empty when none.
    pub(crate) fn request_id(&self) -> &str {
        self.field(2)
    }

    /// `user-agent`; empty when none.
    pub(crate) fn user_agent(&self) -> &str {
        self.field(3)
    }
}

/// The request id header (`x-request-id`).
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What the access log, the tap and the tracer receive about one finished request.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) listener: Arc<str>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) endpoint: Option<Authority>,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<u32>,
    pub(crate) flags: Flags,
    pub(crate) attempts: u32,
    pub(crate) response_bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream_first_byte: Option<Duration>,
    pub(crate) upstream_sent: Option<Duration>,
    pub(crate) trace: Option<trace::SpanContext>,
    pub(crate) detail: Box<Detail>,
}

/// The end of an exchange, carried by its response body.
#[derive(Debug)]
struct Ending {
    ex: Exchange,
    status: u16,
    bytes: u64,
    /// The body reached its end (not dropped part way).
    whole: bool,
}

impl Ending {
    fn done(self) {
        let Ending { mut ex, status, bytes, whole } = self;
        let duration = ex.start.elapsed();
        if !whole {
            ex.flags.set(Flags::DOWNSTREAM_TERMINATED);
        }
        if let Some(stats) = &ex.route_stats {
            stats.response_bytes.add(bytes);
            stats.duration.record(duration);
        }
        if let Some(target) = &ex.target_stats {
            if let Some(first) = ex.upstream_first_byte {
                target.upstream_first_byte.record(first);
            }
            if let Some(grpc) = ex.grpc_status {
                target.record_grpc(grpc);
            }
        }
        // The request is over for the active-requests gauge, whatever the sinks take.
        drop(ex.active.take());
        let Some(rec) = ex.recording.take() else { return };
        let Recording { observe, tap, route, cluster, endpoint, detail } = *rec;
        let record = Arc::new(Record {
            listener: Arc::clone(&observe.listener),
            route,
            cluster,
            endpoint,
            status,
            grpc_status: ex.grpc_status,
            flags: ex.flags,
            attempts: ex.attempts,
            response_bytes: bytes,
            duration,
            upstream_first_byte: ex.upstream_first_byte,
            upstream_sent: ex.upstream_sent,
            trace: ex.trace.take(),
            detail,
        });
        if record.detail.logged {
            if let Some(log) = &observe.access_log {
                log.log(&record);
            }
        }
        if record.trace.as_ref().is_some_and(|t| t.sampled) {
            if let Some(tracer) = &observe.tracer {
                tracer.end(&record);
            }
        }
        if tap.active() {
            tap.publish(&record);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and finishes its exchange when it ends
    /// or is dropped.
    #[derive(Debug)]
    pub(crate) struct ObservedBody {
        #[pin]
        inner: ProxyBody,
        state: Option<Ending>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut ending) = this.state.take() {
                // hyper stops polling a body that says it has ended (an empty or
                // fully sent sized one): that is a whole response, not a cut one.
                ending.whole = this.inner.as_ref().get_ref().is_end_stream();
                ending.done();
            }
        }
    }
}

impl crate::http::h1server::PassedHead for ObservedBody {
    fn passed_head(&self) -> Option<&crate::http::h1pool::RawHead> {
        match &self.inner {
            http_body_util::Either::Left(upstream) => upstream.raw_head(),
            http_body_util::Either::Right(_) => None,
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(state) = this.state.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        state.bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        // A gRPC response's status comes in its trailers (in the head only
                        // for a trailers-only answer, which `upstream_answered` reads).
                        if let Some(s) = grpc_status(trailers) {
                            state.ex.grpc_status = Some(s);
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(state) = this.state.as_mut() {
                    state.ex.flags.set(Flags::UPSTREAM_RESET);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut ending) = this.state.take() {
                    ending.whole = true;
                    ending.done();
                }
            }
            Poll::Pending => {}
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

#[cfg(test)]
mod tests;
