//! Timeouts: which one fired, the 504 that says so, the upstream-idle guard on response
//! bodies, and the downstream-idle watch on HTTP connections. Connect timeouts are the
//! connector's (`PoolSettings::connect_timeout`); per-try and whole-request timeouts wrap the
//! futures in `http/proxy.rs`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

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
    inner: Incoming,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    on_idle: Option<std::sync::Arc<crate::metrics::ClusterStats>>,
    _guard: Option<BreakerGuard>,
}

impl UpstreamBody {
    #[inline]
    pub(crate) fn plain(inner: Incoming) -> Self {
        Self { inner, idle: None, on_idle: None, _guard: None }
    }

    pub(crate) fn with_policy(
        inner: Incoming,
        idle: Option<Duration>,
        stats: &std::sync::Arc<crate::metrics::ClusterStats>,
        guard: Option<BreakerGuard>,
    ) -> Self {
        let idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
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
                if let Some((d, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if let Some((_, sleep)) = &mut this.idle {
                    if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
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

// === downstream idle ===

/// A downstream connection that notes when bytes last moved either way, so that
/// [`IdleWatch::expired`] can close it after a spell with none (the listener's
/// `idle_timeout`). One clock read per read or write that moved bytes.
#[derive(Debug)]
pub(crate) struct IdleIo<T> {
    inner: T,
    watch: IdleWatch,
}

/// The other end of an [`IdleIo`]: when its connection went quiet.
#[derive(Debug, Clone)]
pub(crate) struct IdleWatch {
    base: Instant,
    /// Milliseconds since `base` when bytes last moved.
    last: Arc<AtomicU64>,
}

impl<T> IdleIo<T> {
    pub(crate) fn new(inner: T) -> (Self, IdleWatch) {
        let watch = IdleWatch { base: Instant::now(), last: Arc::new(AtomicU64::new(0)) };
        (Self { inner, watch: watch.clone() }, watch)
    }

    #[inline]
    fn touch(&self) {
        let ms = u64::try_from(self.watch.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.watch.last.store(ms, Ordering::Relaxed);
    }
}

impl IdleWatch {
    /// Resolves once no bytes have moved for `idle`.
    pub(crate) async fn expired(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.base + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_idle_watch_fires_only_after_a_quiet_spell() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, watch) = IdleIo::new(a);
        let idle = Duration::from_millis(60);
        let start = Instant::now();
        let expired = tokio::spawn({
            let watch = watch.clone();
            async move { watch.expired(idle).await }
        });
        // Keep bytes moving for ~150 ms: the watch must not fire meanwhile.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            io.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b.read_exact(&mut one).await.unwrap();
            assert!(!expired.is_finished(), "fired while bytes moved");
        }
        expired.await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150 + 60));
    }

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
