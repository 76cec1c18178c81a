//! Sockets and accept loops: bind, accept, hand each connection to a handler, and stop on a
//! signal. What a connection speaks (HTTP, TCP, TLS passthrough) is the handler's business.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use hyper::service::service_fn;

use crate::engine::Shared;
use crate::http::limits::{self, Refusals};
use crate::http::proxy;
use crate::metrics::{Gauge, GaugeGuard, ListenerStats};
use crate::observe::{Exchange, Flags};
use crate::tables::ListenerKind;
use crate::tcp;

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Queue of connections the kernel holds for the accept loop.
const BACKLOG: i32 = 1024;

/// Bind a listening TCP socket. `SO_REUSEADDR` lets a restarted proxy bind at once while old
/// connections sit in TIME_WAIT; `SO_REUSEPORT` is left off so that a second process asking
/// for the same address gets a clear bind error instead of silently sharing it (see
/// docs/decisions.md).
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

/// Tells a connection's handler to finish: stop taking requests, complete the ones in flight.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the stop flag is set (or its sender is gone, which also means stop).
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A running accept loop. Dropping the handle does not stop it: call [`Server::stop`].
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    pub(crate) active: Arc<Gauge>,
}

impl Server {
    /// Stop accepting (the socket closes) and tell every open connection to finish its
    /// in-flight requests and close; idle keep-alive connections close at once.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Accept on `listener` and run `handle(stream, peer, stop)` for each connection on its own
/// task. Must be called within the runtime.
pub(crate) fn serve<F, Fut>(
    listener: std::net::TcpListener,
    active: Arc<Gauge>,
    accepted: Option<Arc<ListenerStats>>,
    handle: F,
) -> std::io::Result<Server>
where
    F: Fn(TcpStream, SocketAddr, Stop) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let (stop, stopped) = watch::channel(false);
    let mut stopped = Stop(stopped);
    let gauge = Arc::clone(&active);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = stopped.wait() => break,
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
            let conn = handle(stream, peer, stopped.clone());
            tokio::spawn(async move {
                let _open = open;
                conn.await;
            });
        }
        // The listener drops here and the port closes; connections finish on their own.
    });
    Ok(Server { addr, stop, active })
}

/// One connection on a proxy listener, handled as the listener's current config says: HTTP
/// (after a TLS handshake when configured; HTTP/2 when ALPN chose it or the client sent the
/// HTTP/2 preface), raw TCP, or TLS passthrough.
pub(crate) async fn proxy_connection(
    shared: Arc<Shared>,
    slot: usize,
    stream: TcpStream,
    peer: SocketAddr,
    stop: Stop,
) {
    let kind = {
        let tables = shared.tables.load();
        match tables.listener(slot) {
            Some(listener) => Arc::clone(&listener.kind),
            None => return,
        }
    };
    match &*kind {
        ListenerKind::Http(http) => {
            let service = {
                let shared = Arc::clone(&shared);
                let kind = Arc::clone(&kind);
                service_fn(move |mut req| {
                    let ListenerKind::Http(http) = &*kind else { unreachable!("an http listener") };
                    // --- observability: the exchange records the request from its head on ---
                    let mut ex = Exchange::begin(&http.observe, &shared.tap, &mut req, peer);
                    let refusals = Refusals { errors: &http.stats.protocol_errors, replies: &http.unrouted };
                    let admitted = limits::admit(req, &http.limits, &refusals);
                    let shared = Arc::clone(&shared);
                    let kind = Arc::clone(&kind);
                    async move {
                        match admitted {
                            Ok(req) => {
                                let resp = proxy::handle(shared, slot, peer, req, &mut ex).await;
                                if let ListenerKind::Http(http) = &*kind {
                                    let refusals = Refusals {
                                        errors: &http.stats.protocol_errors,
                                        replies: &http.unrouted,
                                    };
                                    if refusals.count(&resp) {
                                        ex.flags.set(Flags::DOWNSTREAM_PROTOCOL_ERROR);
                                    }
                                }
                                Ok::<_, Infallible>(ex.finish(resp))
                            }
                            Err(resp) => {
                                ex.flags.set(Flags::DOWNSTREAM_PROTOCOL_ERROR);
                                Ok(ex.finish(resp))
                            }
                        }
                    }
                })
            };
            let errors = Some(&http.stats.protocol_errors);
            match &http.tls {
                None => http.server.serve(stream, service, false, stop, errors).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let Ok(Ok(tls)) = handshake else {
                        shared.metrics.tls_handshake_failures.inc();
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    http.server.serve(tls, service, h2, stop, errors).await;
                }
            }
        }
        ListenerKind::Tcp { split, idle } => tcp::proxy(stream, split, *idle).await,
        ListenerKind::TlsPassthrough { router, idle } => tcp::passthrough(stream, router, *idle).await,
    }
}
