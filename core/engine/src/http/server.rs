//! The server side of HTTP connections: HTTP/1.1 and HTTP/2 on one connection type, chosen
//! by hyper-util's preface sniffing (h2c prior knowledge) or by TLS ALPN, with upgrades.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::listener::Stop;

/// How long a client may take to send a request's head before the connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open at once (Envoy's default is larger; 1024 is
/// what most servers use and bounds a client's share of the proxy).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// HTTP/2 headers frames larger than this get the connection reset (431-equivalent).
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// The shared server settings for every HTTP connection.
pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    b
}

/// Serve one connection until it ends, or until `stop` fires and its in-flight requests end.
/// `h2_only` skips the preface sniffing (ALPN already chose HTTP/2).
pub(crate) async fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    h2_only: bool,
    mut stop: Stop,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    if h2_only {
        let h2 = builder.clone().http2_only();
        let conn = h2.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = stop.wait() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = stop.wait() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
