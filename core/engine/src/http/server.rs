//! The server side of HTTP connections: HTTP/1.1 (with upgrades) or HTTP/2, chosen by the
//! connection's first bytes (h2c prior knowledge) or by TLS ALPN; each listener's limits
//! applied (http/limits.rs), and idle connections closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::h1server::{self, NoDelay};
use super::limits::{HttpLimits, RequestBody};
use crate::listener::Stop;
use crate::metrics::{ProtocolErrorKind, ProtocolErrors};
use crate::workers::Deadline;

/// How long an idle connection told to close may take to close before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// hyper's own HTTP/1 header count without a `max_headers` call (parsed on the stack).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/2 connection preface (RFC 9113 §3.4), which tells h2c by prior knowledge apart.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read of a sniffed connection: room for a whole ordinary request head.
const FIRST_READ: usize = 4096;

/// One listener's HTTP server settings: hyper's builders made from its limits, our own
/// HTTP/1.1 path's (http/h1server.rs), and the idle timeout this module enforces itself
/// (hyper has none for servers).
#[derive(Debug)]
pub(crate) struct HttpServer {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    own: h1server::Settings,
    max_body: u64,
    idle_timeout: Duration,
}

impl HttpServer {
    pub(crate) fn new(limits: &HttpLimits) -> Self {
        let header_bytes = limits.max_header_bytes as usize;
        let mut h1 = http1::Builder::new();
        {
            h1.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                // The read buffer bounds the request head: a head that does not fit gets 431.
                // Bodies stream through it, so it is never smaller than the limit needs.
                .max_buf_size(header_bytes);
            if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
                // Any other count makes hyper parse headers on the heap; the default keeps
                // them on the stack.
                h1.max_headers(limits.max_headers);
            }
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes);
        let own = h1server::Settings {
            max_head: header_bytes,
            header_read_timeout: limits.header_read_timeout,
            tls: false,
        };
        Self { h1, h2, own, max_body: limits.max_body, idle_timeout: limits.idle_timeout }
    }

    /// Serve one connection until it ends, until `stop` fires and its in-flight requests end,
    /// or until it has been idle (no request in flight, no byte either way) for the idle
    /// timeout. `handle` answers each request, whichever path read it. `h2_only` skips the
    /// preface sniffing (ALPN already chose HTTP/2); `tls` says `io` is a TLS stream. What
    /// hyper refused on the connection is counted in `errors`.
    pub(crate) async fn serve<I, F, Fut, B>(
        &self,
        io: I,
        handle: F,
        tls: bool,
        h2_only: bool,
        mut stop: Stop,
        errors: Option<&ProtocolErrors>,
    ) where
        I: AsyncRead + AsyncWrite + NoDelay + Unpin + Send + 'static,
        F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + h1server::PassedHead + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Arc::new(Activity::default());
        let mut io = Tracked { inner: io, activity: Arc::clone(&activity), first: Bytes::new() };
        // One watchdog for the connection's whole life, whichever server has it: one timer.
        let mut idle = std::pin::pin!(activity.idle(self.idle_timeout));
        // --- HTTP/1.1 or HTTP/2: ALPN said, or the first bytes say (bounded like the rest of
        // the connection by the stop and the idle timeout) ---
        let (h2, first) = if h2_only {
            (true, BytesMut::new())
        } else {
            let sniffed = tokio::select! {
                // The work first: the other branches only end it.
                biased;
                r = sniff(&mut io) => r,
                () = stop.wait() => return,
                () = idle.as_mut() => return,
            };
            match sniffed {
                Ok(Some(found)) => found,
                // Closed (or failed) before saying anything.
                Ok(None) | Err(_) => return,
            }
        };
        // --- HTTP/1.1: our own path while the requests are ones it takes, then hyper ---
        io.first = if h2 {
            first.freeze()
        } else {
            let own = h1server::Settings { tls, ..self.own };
            let served = tokio::select! {
                // The work first: the other branches only end it.
                biased;
                s = h1server::serve(&mut io, first, &handle, own, &mut stop, &activity, errors) => s,
                () = idle.as_mut() => return,
            };
            match served {
                h1server::Served::Closed => return,
                h1server::Served::Fallback(rest) => rest,
            }
        };
        // --- the rest of the connection, served by hyper: HTTP/2, or HTTP/1.1 from a request
        // our own path does not take (`io.first` holds the bytes read and not consumed).
        // Boxed: hyper's connection state is kilobytes, and most connections never need it;
        // inline, every connection's task would carry it (and be allocated and moved with it).
        let counted = Arc::clone(&activity);
        Box::pin(async move {
            if h2 {
                // Many writes, on many streams: none may wait for another's acknowledgement.
                io.set_nodelay();
            }
            let io = TokioIo::new(io);
            let max_body = self.max_body;
            let service = Counted {
                inner: service_fn(move |req: Request<Incoming>| {
                    let answer = handle(req.map(|body| RequestBody::new(body, max_body)));
                    async move { Ok::<_, Infallible>(answer.await) }
                }),
                activity: counted,
            };
            // The two connection types share no trait with `graceful_shutdown`, so one macro
            // serves both the same way.
            macro_rules! run_until_stopped {
                ($conn:expr) => {{
                    let conn = $conn;
                    tokio::pin!(conn);
                    tokio::select! {
                        // The work first: the other branches only end it.
                        biased;
                        r = conn.as_mut() => r.map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into),
                        () = stop.wait() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await.map_err(Into::into)
                        }
                        () = idle.as_mut() => {
                            conn.as_mut().graceful_shutdown();
                            // Nothing is in flight: HTTP/1 closes at once; HTTP/2 waits for the
                            // client's PING answer, which a hostile client never sends.
                            tokio::time::timeout(self.idle_timeout.min(IDLE_CLOSE_GRACE), conn).await.unwrap_or(Ok(())).map_err(Into::into)
                        }
                    }
                }};
            }
            let result = if h2 {
                run_until_stopped!(self.h2.serve_connection(io, service))
            } else {
                run_until_stopped!(self.h1.serve_connection(io, service).with_upgrades())
            };
            if let (Err(e), Some(errors)) = (result, errors) {
                if let Some(kind) = classify(&*e) {
                    errors.inc(kind);
                }
            }
        })
        .await;
    }
}

/// Read a connection's first bytes and tell HTTP/2's preface from an HTTP/1 request:
/// `(is_h2, the bytes read)`, or None if the connection closed first. By hand rather than
/// hyper-util's auto server, which reads exactly 24 bytes first: one more system call on
/// every plaintext HTTP/1 connection. This reads what has arrived (usually the whole head),
/// and the chosen server reads it back first (`Tracked::first`).
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<Option<(bool, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((false, buf)));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some((true, buf)));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(FIRST_READ);
        }
    }
}

/// What a connection error says about the client, if it is the client's fault.
fn classify(err: &(dyn std::error::Error + 'static)) -> Option<ProtocolErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some(ProtocolErrorKind::HeadersTooLarge);
            }
            if h.is_parse() || h.is_parse_version_h2() {
                return Some(ProtocolErrorKind::Malformed);
            }
            if h.is_timeout() {
                return Some(ProtocolErrorKind::HeaderTimeout);
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // A GOAWAY this side sent for a protocol violation of the client's.
            let ours = h2.is_go_away() && h2.is_library();
            return (ours && h2.reason().is_some_and(|r| r != h2::Reason::NO_ERROR))
                .then_some(ProtocolErrorKind::Malformed);
        }
        cur = e.source();
    }
    None
}

// === idle tracking ===

/// What the idle watchdog reads: whether bytes moved since it last looked, and how many
/// requests are being answered.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    touched: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    /// Note that bytes moved (one relaxed store; no clock).
    #[inline]
    pub(crate) fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Count a request in flight until the guard drops (our own HTTP/1.1 path's `Counted`).
    pub(crate) fn begin(&self) -> InFlightRef<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightRef(self)
    }

    /// Resolves once the connection has had no request in flight and no byte either way
    /// for `timeout` (give or take a quarter of it: the watchdog looks four times per
    /// timeout, so the request path pays one relaxed store per read or write, not a clock).
    pub(crate) fn idle(&self, timeout: Duration) -> Idle<'_> {
        let tick = (timeout / 4).max(Duration::from_millis(1));
        Idle {
            sleep: Deadline::at(tokio::time::Instant::now() + tick),
            activity: self,
            tick,
            timeout,
            quiet: Duration::ZERO,
            registered: None,
        }
    }
}

/// The idle watchdog of [`Activity::idle`]. It is raced against the connection's work in
/// a `select!`, which polls it on every wake-up of the connection's task (twice per
/// request); polling the timer each time would re-register the task's waker with it (a
/// waker clone and drop, an atomic exchange). So the timer is polled only when it has fired
/// or the waker it holds would not wake this task; otherwise a poll is one comparison and
/// one atomic load. The same reasoning as `Stop`'s (listener.rs). Its timer is a worker's
/// reused one (workers.rs `Deadline`): a new connection costs no timer-wheel lock.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Idle<'a> {
    sleep: Deadline,
    activity: &'a Activity,
    tick: Duration,
    timeout: Duration,
    quiet: Duration,
    /// The waker the timer holds, once it holds one.
    registered: Option<std::task::Waker>,
}

impl Future for Idle<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let holds = this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if holds && !this.sleep.is_elapsed() {
                return Poll::Pending;
            }
            if this.sleep.poll(cx).is_pending() {
                this.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // A tick: did anything happen since the last one?
            let a = this.activity;
            let busy = a.touched.swap(false, Ordering::Relaxed) || a.in_flight.load(Ordering::Relaxed) > 0;
            this.quiet = if busy { Duration::ZERO } else { this.quiet + this.tick };
            if this.quiet >= this.timeout {
                return Poll::Ready(());
            }
            // From now, not from the last deadline: ticks a stalled thread missed are not
            // made up at once (they would count as quiet time that was not watched).
            this.sleep.reset(tokio::time::Instant::now() + this.tick);
            // The timer gave up its waker when it fired: poll it again to register one.
            this.registered = None;
        }
    }
}

/// The connection's transport, marking `activity` when bytes move, and handing back first
/// the bytes that the sniffing read (`first`).
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    first: Bytes,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.advance(n);
            if this.first.is_empty() {
                // Let the sniffing buffer go now, not with the connection.
                this.first = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.touched.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touched.store(true, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touched.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<I: NoDelay> NoDelay for Tracked<I> {
    fn set_nodelay(&self) {
        self.inner.set_nodelay();
    }
}

impl NoDelay for tokio_rustls::server::TlsStream<crate::lazy::Socket> {
    /// Already set on the TCP stream, before the handshake's several writes.
    fn set_nodelay(&self) {}
}

/// The connection's service, counting the requests it is answering.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Decrements the in-flight count when the response head is ready (or the request is
/// dropped); the body that follows moves bytes, which count as activity.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `InFlight` for a caller that holds the activity itself (no reference count).
pub(crate) struct InFlightRef<'a>(&'a Activity);

impl Drop for InFlightRef<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(Arc::clone(&self.activity));
        CountedFuture { inner: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future, holding its in-flight count until the head is ready.
    pub(crate) struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F: std::future::Future> std::future::Future for CountedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.guard.take();
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests;
