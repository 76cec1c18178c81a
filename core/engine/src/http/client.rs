//! The upstream side: one pooled hyper client per cluster, with a connector that counts the
//! connections it opens and the connects that fail.
//!
//! Pooling, idle expiry and reuse are hyper-util's (a well-kept pool; nothing here
//! reimplements it). What this adds is the accounting the pool does not expose.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;
use tower_service::Service;

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

/// A pooled client over plaintext or TLS; two concrete types rather than one boxed
/// connector, so the plaintext path pays nothing for TLS.
#[derive(Debug)]
enum Pool {
    Plain(Client<CountingConnector<HttpConnector>, OutgoingBody>),
    Tls(Client<CountingConnector<HttpsConnector<HttpConnector>>, OutgoingBody>),
}

/// A cluster's pooled client and its statistics.
#[derive(Debug)]
pub(crate) struct Upstream {
    pool: Pool,
    pub(crate) stats: Arc<ClusterStats>,
    pub(crate) settings: PoolSettings,
    /// Endpoints are addressed as `https://` when the cluster originates TLS.
    pub(crate) scheme: http::uri::Scheme,
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
        let (pool, scheme) = match tls {
            None => {
                builder.http2_only(settings.protocol == ClusterProtocol::Http2);
                (
                    Pool::Plain(builder.build(CountingConnector {
                        inner: http,
                        stats: Arc::clone(&stats),
                        max: settings.max_connections,
                        tls: false,
                    })),
                    http::uri::Scheme::HTTP,
                )
            }
            Some((config, sni)) => {
                http.enforce_http(false);
                let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
                let b = match sni.and_then(|n| ServerName::try_from(n).ok()) {
                    Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
                    None => b,
                };
                // ALPN follows the protocol: http1 offers http/1.1, http2 offers h2, auto
                // offers both and speaks what the endpoint picks.
                let https = match settings.protocol {
                    ClusterProtocol::Http1 => b.enable_http1().wrap_connector(http),
                    ClusterProtocol::Http2 => b.enable_http2().wrap_connector(http),
                    ClusterProtocol::Auto => b.enable_all_versions().wrap_connector(http),
                };
                builder.http2_only(settings.protocol == ClusterProtocol::Http2);
                (
                    Pool::Tls(builder.build(CountingConnector {
                        inner: https,
                        stats: Arc::clone(&stats),
                        max: settings.max_connections,
                        tls: true,
                    })),
                    http::uri::Scheme::HTTPS,
                )
            }
        };
        Self { pool, stats, settings, scheme }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.pool, Pool::Tls(_))
    }

    #[inline]
    pub(crate) fn request(&self, req: http::Request<OutgoingBody>) -> ResponseFuture {
        match &self.pool {
            Pool::Plain(c) => c.request(req),
            Pool::Tls(c) => c.request(req),
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
