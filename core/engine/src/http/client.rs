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

use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::metrics::{ClusterStats, GaugeGuard};

/// The pool settings of a cluster; a cluster whose settings are unchanged across applies
/// keeps its client and so its warm connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_idle_per_endpoint: usize,
    pub(crate) idle_timeout: Duration,
}

pub(crate) type UpstreamClient = Client<CountingConnector, Incoming>;

/// A cluster's pooled client and its statistics.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) client: UpstreamClient,
    pub(crate) stats: Arc<ClusterStats>,
    pub(crate) settings: PoolSettings,
}

impl Upstream {
    pub(crate) fn new(settings: PoolSettings, stats: Arc<ClusterStats>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = CountingConnector { inner: http, stats: Arc::clone(&stats) };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(settings.max_idle_per_endpoint)
            .pool_idle_timeout(settings.idle_timeout)
            .build(connector);
        Self { client, stats, settings }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's HTTP connector, plus a count of open connections and of failed connects.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    stats: Arc<ClusterStats>,
}

impl Service<http::Uri> for CountingConnector {
    type Response = Counted<TokioIo<TcpStream>>;
    type Error = BoxError;
    // Boxed once per new upstream connection, never per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            match connecting.await {
                Ok(io) => {
                    stats.connections_total.inc();
                    let open = GaugeGuard::new(Arc::clone(&stats.active_connections));
                    Ok(Counted { io, _open: open })
                }
                Err(e) => {
                    stats.connect_failures.inc();
                    Err(e.into())
                }
            }
        })
    }
}

/// A connection that holds its place in the "open connections" gauge until it is dropped.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    io: T,
    _open: GaugeGuard,
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
