//! The upstream side: one pooled hyper client per cluster, with a connector that counts the
//! connections it opens and the connects that fail.
//!
//! HTTP/1.1 pooling, idle expiry and reuse are hyper-util's (a well-kept pool; nothing here
//! reimplements it). What this adds is the accounting the pool does not expose. Clusters
//! with `protocol: http2` use connections of our own instead (h2pool.rs), so that the pool is
//! keyed by endpoint while the request carries the client's authority as `:authority`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;
use tower_service::Service;

use super::h1pool::{H1Body, H1Pool};
use super::h2pool::H2Pool;
use super::limits::RequestBody;
use crate::config::ClusterProtocol;
use crate::metrics::{ClusterStats, OpenConnection};

/// The pool settings of a cluster; a plaintext cluster whose settings are unchanged across
/// applies keeps its client and so its warm connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_idle_per_endpoint: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) protocol: ClusterProtocol,
    /// The circuit breaker's `max_connections` (policy/breaker.rs): a connect beyond it fails
    /// at once with [`ConnectionLimit`]. None: no limit.
    pub(crate) max_connections: Option<u64>,
}

/// The connect error of a cluster at its circuit breaker's `max_connections`.
#[derive(Debug)]
pub(crate) struct ConnectionLimit;

impl std::fmt::Display for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("circuit breaker: max_connections reached")
    }
}

impl std::error::Error for ConnectionLimit {}

/// What the pools carry upstream: the downstream body streamed through, a buffered copy (a
/// body kept for retries, or a mirror's copy), or the body streamed while a copy is kept.
pub(crate) type OutgoingBody = http_body_util::Either<
    RequestBody,
    http_body_util::Either<http_body_util::Full<bytes::Bytes>, crate::policy::retry::Tee>,
>;

/// A pooled client over plaintext or TLS, HTTP/1.1 (or ALPN's pick) on hyper-util's pool or
/// HTTP/2 on our own; concrete types rather than one boxed connector, so the plaintext path
/// pays nothing for TLS. Plaintext HTTP/1.1 requests whose body is in hand take our own
/// client (h1pool.rs), and hyper-util's carries the rest (streamed uploads, upgrades).
#[derive(Debug)]
enum Pool {
    Plain(Client<CountingConnector<HttpConnector>, OutgoingBody>, H1Pool),
    Tls(Client<CountingConnector<HttpsConnector<HttpConnector>>, OutgoingBody>),
    H2Plain(H2Pool<CountingConnector<HttpConnector>>),
    H2Tls(H2Pool<CountingConnector<HttpsConnector<HttpConnector>>>),
    AutoTls(Box<Auto>),
}

/// `protocol: auto` over TLS: ALPN chooses per endpoint. An endpoint is tried over HTTP/2
/// first, offering `h2` and `http/1.1`; a connection on which it picked `http/1.1` is closed
/// and the endpoint remembered as HTTP/1.1, which an HTTP/1.1-only client then carries
/// (one connection wasted per such endpoint, for the pool's life). Both keep the client's
/// host: HTTP/2 as `:authority` (h2pool.rs), HTTP/1.1 as `Host`. hyper-util's client picks
/// by ALPN too, but over HTTP/2 it sends the endpoint as `:authority`.
#[derive(Debug)]
struct Auto {
    h2: H2Pool<OnlyH2<CountingConnector<HttpsConnector<HttpConnector>>>>,
    h1: Client<CountingConnector<HttpsConnector<HttpConnector>>, OutgoingBody>,
    speaks_h1: Arc<ArcSwap<HashSet<Authority>>>,
}

impl Auto {
    fn speaks_h1(&self, endpoint: &Authority) -> bool {
        // Read without a lock on every request; written once per HTTP/1.1 endpoint.
        self.speaks_h1.load().contains(endpoint)
    }

    async fn request(
        &self,
        req: http::Request<OutgoingBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let Some(endpoint) = req.uri().authority().cloned() else {
            return Err(UpstreamError::request(Box::from("the upstream URI names no endpoint")));
        };
        if !self.speaks_h1(&endpoint) {
            match self.h2.ready(&endpoint).await {
                Ok(()) => return self.h2.request(req).await,
                // The endpoint picked HTTP/1.1 (its connection said so; nothing was sent).
                Err(_) if self.speaks_h1(&endpoint) => {}
                Err(e) => return Err(e),
            }
        }
        self.h1.request(req).await.map_err(UpstreamError::from)
    }
}

/// A TLS connector that hands on only connections on which ALPN chose `h2`, and notes the
/// endpoints that chose otherwise.
#[derive(Debug, Clone)]
struct OnlyH2<C> {
    inner: C,
    speaks_h1: Arc<ArcSwap<HashSet<Authority>>>,
}

/// The error of a connection on which the endpoint did not choose HTTP/2.
#[derive(Debug)]
struct ChoseHttp1;

impl std::fmt::Display for ChoseHttp1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the endpoint chose HTTP/1.1 by ALPN")
    }
}

impl std::error::Error for ChoseHttp1 {}

impl<C> Service<http::Uri> for OnlyH2<C>
where
    C: Service<http::Uri, Error = BoxError>,
    C::Response: Connection + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let endpoint = uri.authority().cloned();
        let connecting = self.inner.call(uri);
        let speaks_h1 = Arc::clone(&self.speaks_h1);
        Box::pin(async move {
            let io = connecting.await?;
            if io.connected().is_negotiated_h2() {
                return Ok(io);
            }
            if let Some(endpoint) = endpoint {
                speaks_h1.rcu(|known| {
                    let mut known = HashSet::clone(known);
                    known.insert(endpoint.clone());
                    known
                });
            }
            Err(Box::new(ChoseHttp1) as BoxError)
        })
    }
}

/// Why an upstream request failed: a connect (nothing reached the upstream), or the
/// exchange. The cause is the source, so callers walk the chain for what they look for
/// (hyper's and h2's errors, `ConnectionLimit`, a timed-out connect, the client's body).
#[derive(Debug)]
pub(crate) struct UpstreamError {
    connect: bool,
    source: BoxError,
}

impl UpstreamError {
    pub(crate) fn connect(source: BoxError) -> Self {
        Self { connect: true, source }
    }

    pub(crate) fn request(source: BoxError) -> Self {
        Self { connect: false, source }
    }

    /// The connection could not be opened; the request was not sent.
    pub(crate) fn is_connect(&self) -> bool {
        self.connect
    }
}

impl From<hyper_util::client::legacy::Error> for UpstreamError {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        Self { connect: e.is_connect(), source: Box::new(e) }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.connect { "upstream connect failed" } else { "upstream request failed" };
        write!(f, "{what}: {}", self.source)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// A cluster's pooled client and its statistics.
#[derive(Debug)]
pub(crate) struct Upstream {
    pool: Pool,
    pub(crate) stats: Arc<ClusterStats>,
    pub(crate) settings: PoolSettings,
    /// Endpoints are addressed as `https://` when the cluster originates TLS.
    pub(crate) scheme: http::uri::Scheme,
    /// The TLS client config the cluster originates with (before ALPN), and the server name
    /// it sends; health checks use the same.
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
}

impl Upstream {
    /// `tls`: the client config for TLS origination, and the server name to send (none: the
    /// endpoint's host).
    pub(crate) fn new(
        settings: PoolSettings,
        tls: Option<(rustls::ClientConfig, Option<String>)>,
        stats: Arc<ClusterStats>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(settings.max_idle_per_endpoint)
            .pool_idle_timeout(settings.idle_timeout);
        let h2 = settings.protocol == ClusterProtocol::Http2;
        let max = settings.max_connections;
        let counting = |inner| CountingConnector { inner, stats: Arc::clone(&stats), max, tls: false };
        let counting_tls = |inner| CountingConnector { inner, stats: Arc::clone(&stats), max, tls: true };
        let (connect_timeout, idle_timeout) = (settings.connect_timeout, settings.idle_timeout);
        let (pool, scheme, kept) = match tls {
            None if h2 => {
                let pool = H2Pool::new(
                    counting(http),
                    http::uri::Scheme::HTTP,
                    connect_timeout,
                    idle_timeout,
                    Arc::clone(&stats),
                );
                (Pool::H2Plain(pool), http::uri::Scheme::HTTP, None)
            }
            None => {
                let own = H1Pool::new(counting(http.clone()), settings.max_idle_per_endpoint, idle_timeout);
                (Pool::Plain(builder.build(counting(http)), own), http::uri::Scheme::HTTP, None)
            }
            Some((config, sni)) => {
                http.enforce_http(false);
                let name = sni.and_then(|n| ServerName::try_from(n).ok());
                let kept = Some((Arc::new(config.clone()), name.clone()));
                let tls_builder = || {
                    let b = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(config.clone())
                        .https_only();
                    match name.clone() {
                        Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
                        None => b,
                    }
                };
                let b = tls_builder();
                // ALPN follows the protocol: http1 offers http/1.1, http2 offers h2, auto
                // offers both and speaks what the endpoint picks.
                let pool = match settings.protocol {
                    ClusterProtocol::Http1 => {
                        Pool::Tls(builder.build(counting_tls(b.enable_http1().wrap_connector(http))))
                    }
                    ClusterProtocol::Http2 => Pool::H2Tls(H2Pool::new(
                        counting_tls(b.enable_http2().wrap_connector(http)),
                        http::uri::Scheme::HTTPS,
                        connect_timeout,
                        idle_timeout,
                        Arc::clone(&stats),
                    )),
                    ClusterProtocol::Auto => {
                        let speaks_h1 = Arc::new(ArcSwap::default());
                        let h2 = H2Pool::new(
                            OnlyH2 {
                                inner: counting_tls(b.enable_all_versions().wrap_connector(http.clone())),
                                speaks_h1: Arc::clone(&speaks_h1),
                            },
                            http::uri::Scheme::HTTPS,
                            connect_timeout,
                            idle_timeout,
                            Arc::clone(&stats),
                        );
                        let h1 =
                            builder.build(counting_tls(tls_builder().enable_http1().wrap_connector(http)));
                        Pool::AutoTls(Box::new(Auto { h2, h1, speaks_h1 }))
                    }
                };
                (pool, http::uri::Scheme::HTTPS, kept)
            }
        };
        Self { pool, stats, settings, scheme, tls: kept }
    }

    /// Our own HTTP/1.1 client, for a plaintext HTTP/1.1 cluster (http/h1pool.rs): the
    /// request path sends requests whose body is in hand through it directly.
    #[inline]
    pub(crate) fn own_h1(&self) -> Option<&H1Pool> {
        match &self.pool {
            Pool::Plain(_, own) => Some(own),
            _ => None,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.pool, Pool::Tls(_) | Pool::H2Tls(_) | Pool::AutoTls(_))
    }

    /// Send `req`, whose URI names the endpoint (`scheme://endpoint/path`). Over HTTP/1.1 the
    /// client's host travels in the `Host` header; over HTTP/2 (h2pool.rs) the endpoint only
    /// picks the connection and the `Host` header becomes the `:authority`.
    #[inline]
    pub(crate) async fn request(
        &self,
        req: http::Request<OutgoingBody>,
    ) -> Result<http::Response<UpstreamResponseBody>, UpstreamError> {
        let hyper_body = |r: http::Response<Incoming>| r.map(UpstreamResponseBody::Hyper);
        match &self.pool {
            // Boxed: the request path calls `own_h1` directly; this serves the others
            // (mirrors), and would make every caller's future larger.
            Pool::Plain(_, own) if in_hand(&req) => {
                let (parts, body) = req.into_parts();
                Box::pin(own.request(parts, whole(body))).await.map(|r| r.map(UpstreamResponseBody::Own))
            }
            Pool::Plain(c, _) => c.request(req).await.map(hyper_body).map_err(UpstreamError::from),
            Pool::Tls(c) => c.request(req).await.map(hyper_body).map_err(UpstreamError::from),
            // Boxed: these futures hold a whole connect (TCP, TLS, HTTP/2 handshake), about
            // 8 KiB, and every future that awaits this one would carry (and move) that much.
            Pool::H2Plain(p) => Box::pin(p.request(req)).await.map(hyper_body),
            Pool::H2Tls(p) => Box::pin(p.request(req)).await.map(hyper_body),
            Pool::AutoTls(p) => Box::pin(p.request(req)).await.map(hyper_body),
        }
    }
}

/// Whether the request's body is in hand (none, or buffered) and the request is no upgrade:
/// then our own HTTP/1.1 client can send it.
fn in_hand(req: &http::Request<OutgoingBody>) -> bool {
    use http_body_util::Either;
    !req.headers().contains_key(http::header::UPGRADE)
        && match req.body() {
            Either::Left(b) => b.is_end_stream(),
            Either::Right(Either::Left(_)) => true,
            Either::Right(Either::Right(_)) => false,
        }
}

/// The whole of a body that [`in_hand`] accepted.
fn whole(body: OutgoingBody) -> bytes::Bytes {
    use http_body_util::Either;
    match body {
        Either::Right(Either::Left(mut full)) => {
            // A `Full` yields its one frame at once.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut full).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
                _ => bytes::Bytes::new(),
            }
        }
        _ => bytes::Bytes::new(),
    }
}

/// An upstream response's body: hyper's, or our HTTP/1.1 client's (h1pool.rs).
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per response, moved whole into its wrapper once: boxing would add an allocation per response"
)]
pub(crate) enum UpstreamResponseBody {
    Hyper(Incoming),
    Own(H1Body),
}

impl UpstreamResponseBody {
    /// The response head as read, when our own client passes it on that way (h1pool.rs).
    pub(crate) fn raw_head(&self) -> Option<&super::h1pool::RawHead> {
        match self {
            Self::Own(b) => b.raw_head(),
            Self::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Own(b) => b.size_hint(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connector (hyper-util's HTTP one, or hyper-rustls' over it), plus a count of open
/// connections and of failed connects, and of TLS handshakes when it originates TLS.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector<C> {
    inner: C,
    stats: Arc<ClusterStats>,
    max: Option<u64>,
    tls: bool,
}

impl<C> Service<http::Uri> for CountingConnector<C>
where
    C: Service<http::Uri> + Send,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = BoxError;
    // Boxed once per new upstream connection, never per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        // --- policy: circuit breaker max_connections ---
        if let Some(max) = self.max {
            if u64::try_from(self.stats.active_connections.get()).unwrap_or(0) >= max {
                self.stats.overflows[crate::policy::breaker::Limit::Connections as usize].inc();
                return Box::pin(std::future::ready(Err(Box::new(ConnectionLimit) as BoxError)));
            }
        }
        let connecting = self.inner.call(uri);
        let stats = Arc::clone(&self.stats);
        let tls = self.tls;
        Box::pin(async move {
            match connecting.await {
                Ok(io) => {
                    if tls {
                        stats.tls_handshakes.inc();
                    }
                    Ok(Counted { io, _open: OpenConnection::new(stats) })
                }
                Err(e) => {
                    stats.connect_failures.inc();
                    let e: BoxError = e.into();
                    // hyper-rustls fails a handshake with an io::Error, and a TCP connect
                    // with hyper-util's own error type: only the former reached TLS.
                    if tls && e.downcast_ref::<std::io::Error>().is_some() {
                        stats.tls_handshakes.inc();
                        stats.tls_handshake_failures.inc();
                    }
                    Err(e)
                }
            }
        })
    }
}

/// A connection that holds its place in the "open connections" gauge until it is dropped.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    io: T,
    _open: OpenConnection,
}

impl<T> Counted<T> {
    /// The transport, and its place in the open-connections gauge (held as long as the
    /// transport is kept).
    pub(crate) fn into_parts(self) -> (T, OpenConnection) {
        (self.io, self._open)
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod size_tests {
    /// Every request's future embeds this one and moves it a few times (hyper moves the
    /// service future into its dispatcher); at 8 KiB (an unboxed HTTP/2 connect inside) those
    /// moves were the proxy's largest user-space cost (`memmove`, 7% of CPU).
    #[test]
    fn the_upstream_request_future_stays_small() {
        let settings = super::PoolSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            max_idle_per_endpoint: 1,
            idle_timeout: std::time::Duration::from_secs(1),
            protocol: crate::config::ClusterProtocol::Http1,
            max_connections: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let up = super::Upstream::new(settings, None, std::sync::Arc::default());
        let req = http::Request::new(http_body_util::Either::Right(http_body_util::Either::Left(
            http_body_util::Full::new(bytes::Bytes::new()),
        )));
        let fut = up.request(req);
        assert!(std::mem::size_of_val(&fut) <= 1024, "{} bytes", std::mem::size_of_val(&fut));
        drop(fut);
        let encoded = super::super::h1pool::Encoded::new(
            &http::Method::GET,
            "/",
            &http::HeaderMap::new(),
            Some(&http::uri::Authority::from_static("127.0.0.1:1")),
            bytes::Bytes::new(),
        )
        .unwrap();
        let endpoint = http::uri::Authority::from_static("127.0.0.1:1");
        let own = up.own_h1().unwrap().send(&encoded, &endpoint);
        assert!(
            std::mem::size_of_val(&own) <= 1024,
            "own HTTP/1.1 send: {} bytes",
            std::mem::size_of_val(&own)
        );
    }
}
