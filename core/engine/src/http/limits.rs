//! What a downstream client may send an HTTP listener, and the checks hyper leaves to us.
//!
//! hyper enforces most of RFC 9112/9113 framing itself (conflicting Content-Length, bad
//! chunk sizes, obs-fold, bare CR, header count and head size on HTTP/1, the header list
//! size and stream concurrency on HTTP/2) and answers or resets before a request reaches
//! the proxy. [`admit`] adds what it does not: the header count on HTTP/2, the Host rules
//! (exactly one Host on HTTP/1.1; an absolute-form target wins over Host; HTTP/2's
//! `:authority` wins over Host), and the request body limit, up front by Content-Length and
//! while the body streams ([`RequestBody`]).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{local_reply, ProxyBody};
use crate::config::LimitsSpec;
use crate::error::Error;
use crate::metrics::{ProtocolErrorKind, ProtocolErrors, RouteStats, StatusCounters};

/// hyper's smallest HTTP/1 read buffer, which bounds the request head.
pub(crate) const MIN_HEADER_BYTES: u32 = 8192;

/// An HTTP listener's compiled limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    pub(crate) max_headers: usize,
    pub(crate) max_header_bytes: u32,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_concurrent_streams: u32,
    /// `u64::MAX`: unlimited.
    pub(crate) max_body: u64,
}

impl HttpLimits {
    pub(crate) fn compile(spec: &LimitsSpec, path: &str) -> Result<Self, Error> {
        let positive = |v: u64, field: &str| {
            if v == 0 {
                Err(Error::config(format!("{path}.{field}"), "must be greater than zero"))
            } else {
                Ok(v)
            }
        };
        positive(u64::from(spec.max_request_headers), "max_request_headers")?;
        positive(u64::from(spec.max_concurrent_streams), "max_concurrent_streams")?;
        if spec.max_request_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::config(
                format!("{path}.max_request_header_bytes"),
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        Ok(Self {
            max_headers: spec.max_request_headers as usize,
            max_header_bytes: spec.max_request_header_bytes,
            header_read_timeout: Duration::from_millis(positive(
                spec.header_read_timeout_ms,
                "header_read_timeout_ms",
            )?),
            idle_timeout: Duration::from_millis(positive(spec.idle_timeout_ms, "idle_timeout_ms")?),
            max_concurrent_streams: spec.max_concurrent_streams,
            max_body: spec.max_request_body_bytes.unwrap_or(u64::MAX),
        })
    }
}

/// The counters [`admit`] and the connection keep for one listener.
#[derive(Debug)]
pub(crate) struct Refusals<'a> {
    pub(crate) errors: &'a ProtocolErrors,
    /// The listener's answers given before routing (`route=""`, `cluster=""`).
    pub(crate) replies: &'a StatusCounters,
}

/// Marks a response the proxy gave because of what the client sent, once it found out
/// while forwarding (a body over the limit, a broken body): the listener counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused(pub(crate) ProtocolErrorKind);

impl Refusals<'_> {
    /// Count a response to a forwarded request if it is marked [`Refused`]; answers whether
    /// it was.
    #[inline]
    pub(crate) fn count<B>(&self, resp: &Response<B>) -> bool {
        match resp.extensions().get::<Refused>() {
            Some(Refused(kind)) => {
                self.errors.inc(*kind);
                true
            }
            None => false,
        }
    }
}

/// Check a request against the listener's limits and the Host rules hyper leaves to us:
/// the request to route (its body counted against the limit), or the local answer. hyper's
/// requests and those of our own HTTP/1.1 server (http/h1server.rs, bodiless) both come
/// here, their bodies already wrapped (`RequestBody::new`, `RequestBody::empty`).
#[allow(clippy::result_large_err, reason = "the Err is the answer itself, built once and moved out")]
pub(crate) fn admit(
    mut req: Request<RequestBody>,
    limits: &HttpLimits,
    refusals: &Refusals<'_>,
) -> Result<Request<RequestBody>, Response<ProxyBody>> {
    let refuse = |kind: ProtocolErrorKind, status: StatusCode, text: &'static str| {
        refusals.errors.inc(kind);
        refusals.replies.record(status.as_u16());
        let mut resp = local_reply(status, text);
        // The client's framing is still good; the body it may be sending is not read.
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    // HTTP/1 counts are hyper's (it answers 431 first); HTTP/2 has no count limit in h2.
    if req.headers().len() > limits.max_headers {
        return Err(refuse(
            ProtocolErrorKind::HeadersTooLarge,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers\n",
        ));
    }
    if let Err(text) = check_host(&mut req) {
        return Err(refuse(ProtocolErrorKind::Malformed, StatusCode::BAD_REQUEST, text));
    }
    if limits.max_body != u64::MAX {
        // hyper has already refused an unparsable or conflicting Content-Length (HTTP/1)
        // and holds the HTTP/2 body to it; its exact size is the body's size hint.
        let declared = req.body().size_hint().exact();
        if declared.is_some_and(|n| n > limits.max_body) {
            return Err(refuse(
                ProtocolErrorKind::BodyTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
    }
    Ok(req)
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and a proxy given an
/// absolute-form target replaces Host with the target's authority. An HTTP/2 request whose
/// Host differs from `:authority` (RFC 9113 §8.3.1: SHOULD be malformed) gets the same
/// treatment rather than a 400, because this proxy itself sends such requests over HTTP/2
/// upstreams (`:authority` is the endpoint). Either way the router and the upstream see the
/// same host.
fn check_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    if host.is_some_and(|h| !is_host(h.as_bytes())) {
        return Err("invalid Host header\n");
    }
    match (req.uri().authority(), host) {
        (Some(authority), Some(h)) if !authority.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            let value = HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid request target\n")?;
            req.headers_mut().insert(HOST, value);
        }
        (None, None) if req.version() == Version::HTTP_11 => return Err("missing Host header\n"),
        _ => {}
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 3986): unreserved, percent-encoded and sub-delim characters,
/// `:` and the brackets of an IPv6 literal. No userinfo, path, space or control character,
/// so that what the router matches is what the upstream is told. Checked by hand: parsing
/// into an `Authority` would allocate per request.
fn is_host(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

// === impl RequestBody ===

/// The downstream request body on its way upstream, counted against the listener's limit,
/// and its bytes counted into the route's `request_bytes` once routing hands it the route.
#[derive(Debug)]
pub(crate) struct RequestBody {
    /// None: no body at all (a bodiless request read by our own HTTP/1.1 server).
    inner: Option<Incoming>,
    remaining: u64,
    /// Bytes read and not yet added to `stats`: added once at the end of the body (or when
    /// it is dropped), not per frame, so that concurrent uploads on one route do not fight
    /// over its counter's cache line for every frame.
    read: u64,
    stats: Option<Arc<RouteStats>>,
}

impl RequestBody {
    /// hyper's body of a request, limited to `max_body` bytes.
    pub(crate) fn new(inner: Incoming, max_body: u64) -> Self {
        Self { inner: Some(inner), remaining: max_body, read: 0, stats: None }
    }

    /// The body of a request that has none.
    pub(crate) fn empty() -> Self {
        Self { inner: None, remaining: 0, read: 0, stats: None }
    }

    /// Whether the request was read by our own HTTP/1.1 server (http/h1server.rs), which
    /// also writes its response: the only bodies made with [`RequestBody::empty`].
    pub(crate) fn read_by_own_server(&self) -> bool {
        self.inner.is_none()
    }

    /// Count this body's bytes into `stats` (the route that took the request).
    pub(crate) fn count_into(&mut self, stats: Arc<RouteStats>) {
        self.stats = Some(stats);
    }

    fn flush(&mut self) {
        if let Some(stats) = &self.stats {
            if self.read > 0 {
                stats.request_bytes.add(self.read);
                self.read = 0;
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Why the downstream request body stopped: found in the upstream client's error chain, it
/// tells the proxy to answer 413 or 400 (the client's fault) instead of 502.
#[derive(Debug)]
pub(crate) enum DownstreamBodyError {
    TooLarge,
    Read(hyper::Error),
}

impl fmt::Display for DownstreamBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("request body over the listener's limit"),
            Self::Read(e) => write!(f, "reading the request body: {e}"),
        }
    }
}

impl StdError for DownstreamBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::TooLarge => None,
            Self::Read(e) => Some(e),
        }
    }
}

impl DownstreamBodyError {
    /// The answer for a request whose upstream exchange failed with `err`, when the
    /// downstream body was the cause.
    pub(crate) fn status_of(err: &(dyn StdError + 'static)) -> Option<StatusCode> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(body) = e.downcast_ref::<Self>() {
                return Some(match body {
                    Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    Self::Read(_) => StatusCode::BAD_REQUEST,
                });
            }
            cur = e.source();
        }
        None
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else { return Poll::Ready(None) };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return Poll::Ready(Some(Err(DownstreamBodyError::TooLarge)));
                    }
                    if this.remaining != u64::MAX {
                        this.remaining -= n;
                    }
                    this.read += n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(DownstreamBodyError::Read(e)))),
            Poll::Ready(None) => {
                this.flush();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests;
