//! Sockets and accept loops: bind, accept, serve each connection with hyper's HTTP/1.1
//! server, and stop gracefully on a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{Gauge, GaugeGuard, ListenerStats};

/// How long a client may take to send a request's head before the connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Queue of connections the kernel holds for the accept loop.
const BACKLOG: i32 = 1024;

/// Bind a listening TCP socket. `SO_REUSEADDR` lets a restarted proxy bind at once while old
/// connections sit in TIME_WAIT; `SO_REUSEPORT` is left off so that a second process asking
/// for the same address gets a clear bind error instead of silently sharing it.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A running accept loop. Dropping the handle does not stop it: call [`Server::stop`].
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    pub(crate) active: Arc<Gauge>,
}

impl Server {
    /// Stop accepting (the socket closes) and ask every open connection to finish its
    /// in-flight request and close; idle keep-alive connections close at once.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Serve HTTP/1.1 on `listener`; `make_service` builds each connection's service from the
/// peer's address. Must be called within the runtime.
pub(crate) fn serve_http1<F, S>(
    listener: std::net::TcpListener,
    active: Arc<Gauge>,
    accepted: Option<Arc<ListenerStats>>,
    make_service: F,
) -> std::io::Result<Server>
where
    F: Fn(SocketAddr) -> S + Send + 'static,
    S: HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Body + Send + 'static,
    <S::ResBody as Body>::Data: Send,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let (stop, mut stopped) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let gauge = Arc::clone(&active);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = stop_signal(&mut stopped) => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(_) => {
                        // EMFILE and friends: back off instead of spinning; the socket stays.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            if let Some(stats) = &accepted {
                stats.connections_total.inc();
            }
            let open = GaugeGuard::new(Arc::clone(&gauge));
            let conn = builder.serve_connection(TokioIo::new(stream), make_service(peer));
            let mut stop = stopped.clone();
            tokio::spawn(async move {
                let _open = open;
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stop_signal(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        // The listener drops here and the port closes; connections finish on their own.
    });
    Ok(Server { addr, stop, active })
}

/// Resolves once the stop flag is set (or its sender is gone, which also means stop).
async fn stop_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
