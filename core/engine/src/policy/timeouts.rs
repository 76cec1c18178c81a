//! Timeouts: which one fired, the 504 that says so, and the upstream-idle guard on response
//! bodies. Connect timeouts are the connector's (`PoolSettings::connect_timeout`); per-try
//! and whole-request timeouts wrap the futures in `http/proxy.rs`; downstream idle is the
//! listener's `limits` (http/limits.rs).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use crate::http::client::UpstreamResponseBody;
use crate::workers::Deadline;

use super::breaker::BreakerGuard;
use crate::http::{local_reply, ProxyBody};

/// The kinds of timeout, in the order of the `kind` label's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect = 0,
    PerTry = 1,
    Request = 2,
    Idle = 3,
}

impl Kind {
    pub(crate) const ALL: [Self; 4] = [Self::Connect, Self::PerTry, Self::Request, Self::Idle];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::PerTry => "per_try",
            Self::Request => "request",
            Self::Idle => "idle",
        }
    }
}

/// The 504 for an expired request: the body names the timeout, and so does the
/// `x-pymesh-timeout` header (for scripts).
pub(crate) fn reply(kind: Kind) -> Response<ProxyBody> {
    let text = match kind {
        Kind::Connect => "upstream connect timeout\n",
        Kind::PerTry => "upstream per-try timeout\n",
        Kind::Request => "upstream request timeout\n",
        Kind::Idle => "upstream idle timeout\n",
    };
    let mut resp = local_reply(StatusCode::GATEWAY_TIMEOUT, text);
    resp.headers_mut().insert("x-pymesh-timeout", HeaderValue::from_static(kind.label()));
    resp
}

/// An upstream response body, with what must live as long as it: the breaker's place for the
/// request (released when the body ends), and the upstream-idle timer (none: no timer, no
/// allocation).
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: UpstreamResponseBody,
    idle: Option<(Duration, Deadline)>,
    on_idle: Option<std::sync::Arc<crate::metrics::ClusterStats>>,
    _guard: Option<BreakerGuard>,
}

impl UpstreamBody {
    /// The response head as read, when it is passed on that way (h1pool.rs).
    pub(crate) fn raw_head(&self) -> Option<&crate::http::h1pool::RawHead> {
        self.inner.raw_head()
    }

    #[inline]
    pub(crate) fn plain(inner: UpstreamResponseBody) -> Self {
        Self { inner, idle: None, on_idle: None, _guard: None }
    }

    pub(crate) fn with_policy(
        inner: UpstreamResponseBody,
        idle: Option<Duration>,
        stats: &std::sync::Arc<crate::metrics::ClusterStats>,
        guard: Option<BreakerGuard>,
    ) -> Self {
        let idle = idle.map(|d| (d, Deadline::at(tokio::time::Instant::now() + d)));
        let on_idle = idle.as_ref().map(|_| std::sync::Arc::clone(stats));
        Self { inner, idle, on_idle, _guard: guard }
    }
}

#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((d, timer)) = &mut this.idle {
                    timer.reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some((_, timer)) = &mut this.idle {
                    if timer.poll(cx).is_ready() {
                        if let Some(stats) = &this.on_idle {
                            stats.timeouts[Kind::Idle as usize].inc();
                        }
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_504_names_the_timeout() {
        for kind in Kind::ALL {
            let resp = reply(kind);
            assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(resp.headers()["x-pymesh-timeout"], kind.label());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let text = std::str::from_utf8(&body).unwrap().replace('-', "_");
            assert!(text.contains(kind.label()), "{text}");
        }
    }
}
