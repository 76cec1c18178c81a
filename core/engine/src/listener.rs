//! Sockets and accept loops: bind, accept, hand each connection to a handler, and stop on a
//! signal. What a connection speaks (HTTP, TCP, TLS passthrough) is the handler's business.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::engine::Shared;
use crate::http::limits::{self, Refusals, RequestBody};
use crate::http::proxy;
use crate::metrics::{Gauge, GaugeGuard, ListenerStats};
use crate::observe::Exchange;
use crate::tables::ListenerKind;
use crate::tcp;

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Queue of connections the kernel holds for the accept loop.
const BACKLOG: i32 = 1024;

/// Bind `count` listening TCP sockets on `addr` that share its port with `SO_REUSEPORT`: the
/// kernel spreads new connections over them by a hash of the 4-tuple, and each gets its own
/// accept loop, so no single accept loop (or its worker thread) is the funnel for a busy
/// listener. `SO_REUSEADDR` lets a restarted proxy bind at once while old connections sit in
/// TIME_WAIT. Port 0 asks the OS for a port once; the other sockets bind that port.
///
/// `SO_REUSEPORT` would also let another process (a second pymesh given the same address)
/// silently share the port; so a fixed port is first probed with a socket without it, whose
/// bind fails while anyone listens there, and the caller gets a clear bind error instead.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(new_socket(addr, false)?);
    }
    let first = new_socket(addr, true)?;
    first.listen(BACKLOG)?;
    let addr = first.local_addr()?.as_socket().unwrap_or(addr);
    let mut all = vec![std::net::TcpListener::from(first)];
    for _ in 1..count.max(1) {
        let socket = new_socket(addr, true)?;
        socket.listen(BACKLOG)?;
        all.push(socket.into());
    }
    Ok(all)
}

/// A non-blocking TCP socket bound to `addr` (not yet listening).
fn new_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Tells a connection's handler to finish: stop taking requests, complete the ones in flight.
///
/// By hand rather than a `watch` channel or `Notify`: a connection polls its stop on every
/// wake-up of its task (each `select!` does), and a waiting `Notify` takes its mutex — one
/// mutex for all of a listener's connections — on every poll. This one reads an atomic flag
/// and takes the lock only to register a connection's waker, once.
#[derive(Debug)]
pub(crate) struct Stop {
    signal: Arc<StopSignal>,
    /// This handle's slot in `signal.waiters` and the waker stored there, once registered.
    registered: Option<(usize, Waker)>,
}

#[derive(Debug, Default)]
struct StopSignal {
    stopped: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The wakers of a listener's connections, in slots that are reused: a connection takes and
/// gives back a slot without hashing a key.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    fn insert(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(waker);
                i
            }
            None => {
                self.slots.push(Some(waker));
                self.slots.len() - 1
            }
        }
    }

    /// The wakers held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Empty slot `i` (absent after `fire` took them all: no slot is handed out after it).
    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = None;
            self.free.push(i);
        }
    }
}

impl StopSignal {
    fn fire(&self) {
        self.stopped.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiters.slots.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl Clone for Stop {
    fn clone(&self) -> Self {
        Self { signal: Arc::clone(&self.signal), registered: None }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some((slot, _)) = self.registered.take() {
            self.signal.waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(slot);
        }
    }
}

impl Stop {
    /// A stop flag and the handle that fires it.
    fn new() -> (StopSender, Self) {
        let signal = Arc::new(StopSignal::default());
        (StopSender(Arc::clone(&signal)), Self { signal, registered: None })
    }

    /// Resolves once the stop flag is set (or its sender is gone, which also means stop).
    pub(crate) async fn wait(&mut self) {
        std::future::poll_fn(|cx| self.poll_stopped(cx)).await;
    }

    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !self.registered.as_ref().is_some_and(|(_, w)| w.will_wake(cx.waker())) {
            let mut waiters = self.signal.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked again under the lock: `fire` sets the flag before it takes the lock.
            if self.signal.stopped.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            let slot = match &self.registered {
                Some((slot, _)) => {
                    waiters.slots[*slot] = Some(cx.waker().clone());
                    *slot
                }
                None => waiters.insert(cx.waker().clone()),
            };
            self.registered = Some((slot, cx.waker().clone()));
        }
        Poll::Pending
    }

    /// A stop flag of its own for a test, and the sender that sets it.
    #[cfg(test)]
    pub(crate) fn for_test() -> (StopSender, Self) {
        Self::new()
    }

    /// Whether the stop flag is set now (no waiting).
    pub(crate) fn is_set(&self) -> bool {
        self.signal.stopped.load(Ordering::Acquire)
    }
}

/// Fires its `Stop`s when told to, or when dropped.
#[derive(Debug)]
pub(crate) struct StopSender(Arc<StopSignal>);

impl StopSender {
    pub(crate) fn fire(&self) {
        self.0.fire();
    }
}

impl Drop for StopSender {
    fn drop(&mut self) {
        self.0.fire();
    }
}

/// A running accept loop. Dropping the handle stops it, as [`Server::stop`] does.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: StopSender,
    pub(crate) active: Arc<Gauge>,
    /// The listening sockets, while their accept loops run (each loop holds the one strong
    /// reference: the socket closes when its loop ends).
    sockets: Vec<Weak<Listener>>,
}

impl Server {
    /// Stop accepting (the socket closes) and tell every open connection to finish its
    /// in-flight requests and close; idle keep-alive connections close at once.
    pub(crate) fn stop(&self) {
        self.stop.fire();
    }

    /// Whether a connection is accepted only once the client's first bytes have arrived
    /// (`TCP_DEFER_ACCEPT`): for protocols where the client speaks first (HTTP, TLS). Its
    /// first read then finds the request, and a connection answered and closed at once never
    /// joins the reactor (lazy.rs). A client that stays silent is accepted after a second
    /// (when the kernel's first SYN-ACK retransmission is answered), and the usual timeouts
    /// apply from there. Off for raw TCP, where the server may speak first.
    pub(crate) fn defer_accept(&self, on: bool) -> std::io::Result<()> {
        for socket in self.sockets.iter().filter_map(Weak::upgrade) {
            crate::sys::set_tcp_defer_accept(socket.0.get_ref(), u32::from(on))?;
        }
        Ok(())
    }
}

/// Accept on each of `sockets` (one port, from [`bind`]) and run `handle(stream, peer, stop)`
/// for each connection on its own task. Socket `i` is served by runtime `i` of `workers`
/// (round the list again if there are more sockets), and its connections stay there.
pub(crate) fn serve<'w, F, Fut>(
    sockets: Vec<std::net::TcpListener>,
    workers: impl Iterator<Item = &'w tokio::runtime::Handle> + Clone,
    active: Arc<Gauge>,
    accepted: Option<Arc<ListenerStats>>,
    handle: F,
) -> std::io::Result<Server>
where
    F: Fn(std::net::TcpStream, SocketAddr, Stop) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(first) = sockets.first() else {
        return Err(std::io::Error::other("no socket to serve"));
    };
    let addr = first.local_addr()?;
    let (stop, stopped) = Stop::new();
    let handle = Arc::new(handle);
    let mut kept = Vec::with_capacity(sockets.len());
    for (socket, worker) in sockets.into_iter().zip(workers.cycle()) {
        // Registered with that worker's reactor, and the loop spawned on it.
        let _on = worker.enter();
        let listener = Arc::new(Listener::new(socket)?);
        kept.push(Arc::downgrade(&listener));
        accept_loop(listener, stopped.clone(), Arc::clone(&active), accepted.clone(), Arc::clone(&handle));
    }
    Ok(Server { addr, stop, active, sockets: kept })
}

/// A listening socket whose connections come out non-blocking and not registered with the
/// reactor: the connection's handler decides when they join it.
///
/// tokio's `TcpListener::accept` registers each stream and marks it readable and writable
/// before the reactor has said so, so that its first read is tried at once. Without a
/// deferred accept that read mostly finds nothing under load (the client's request has not
/// arrived when its handshake completes: 0.98 failed `recvfrom` per connection on
/// `h1-new-connection`). Here `accept4` (non-blocking, close-on-exec, as tokio does) hands
/// over a plain socket: plaintext HTTP reads it at once (its listener defers the accept until
/// the request is in, `Server::defer_accept`) and registers it only when it would block
/// (lazy.rs); TLS, TCP and passthrough register it at once, and their first read waits for
/// the reactor's event, as in nginx.
struct Listener(AsyncFd<Socket>);

impl Listener {
    // tokio deprecates the safe constructor for types whose fd could change or close under
    // it, and its replacement is `unsafe`, which this crate forbids. A `Socket` owns its fd
    // and keeps it until dropped with the `AsyncFd`: the condition holds.
    #[allow(deprecated, reason = "sound for a Socket, which owns its fd; see above")]
    fn new(socket: std::net::TcpListener) -> std::io::Result<Self> {
        AsyncFd::with_interest(Socket::from(socket), Interest::READABLE).map(Self)
    }

    /// A connection, non-blocking and not yet registered with the reactor (lazy.rs).
    async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| fd.get_ref().accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)) {
                Ok(accepted) => {
                    let (socket, peer) = accepted?;
                    let peer = peer.as_socket().ok_or_else(|| std::io::Error::other("not an IP peer"))?;
                    return Ok((socket.into(), peer));
                }
                // Nothing left to accept: readiness is cleared, wait for the next connection.
                Err(_would_block) => {}
            }
        }
    }
}

/// One socket's accept loop, until `stopped` fires.
fn accept_loop<F, Fut>(
    listener: Arc<Listener>,
    mut stopped: Stop,
    gauge: Arc<Gauge>,
    accepted: Option<Arc<ListenerStats>>,
    handle: Arc<F>,
) where
    F: Fn(std::net::TcpStream, SocketAddr, Stop) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
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
            // No TCP_NODELAY here: each kind of connection sets it when it matters (plaintext
            // HTTP/1.1 only once a connection writes twice; http/h1server.rs).
            if let Some(stats) = &accepted {
                stats.connections_total.inc();
            }
            let open = GaugeGuard::new(Arc::clone(&gauge));
            let closed = accepted.as_ref().map(Arc::clone);
            // Boxed, and the box spawned: tokio copies a task's whole future into its cell
            // when spawned and again (the `Stage` it is kept in) when it completes; a pointer
            // instead of the connection's state (2.3 KiB) saved 2.3% of CPU per new connection.
            let stop = stopped.clone();
            let conn = crate::workers::boxed_in_place(|| handle(stream, peer, stop));
            tokio::spawn(async move {
                let _open = open;
                conn.await;
                if let Some(stats) = closed {
                    stats.connections_closed.inc();
                }
            });
        }
        // The socket drops here (the port closes with the last one); connections finish on
        // their own.
    });
}

/// One connection on a proxy listener, handled as the listener's current config says: HTTP
/// (after a TLS handshake when configured; HTTP/2 when ALPN chose it or the client sent the
/// HTTP/2 preface), raw TCP, or TLS passthrough.
pub(crate) async fn proxy_connection(
    shared: Arc<Shared>,
    slot: usize,
    stream: std::net::TcpStream,
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
                move |mut req: http::Request<RequestBody>| {
                    let ListenerKind::Http(http) = &*kind else { unreachable!("an http listener") };
                    // --- observability: the exchange records the request from its head on ---
                    let mut ex = Exchange::begin(&http.observe, &shared.tap, &mut req, peer);
                    ex.active = Some(GaugeGuard::new(Arc::clone(&http.stats.active_requests)));
                    let refusals = Refusals { errors: &http.stats.protocol_errors, replies: &http.unrouted };
                    // Boxed: the server keeps the answer's future inline in every connection's
                    // state and moves it there per request; boxed, an idle connection holds
                    // a pointer instead of the whole request path's state (about 1 KiB).
                    let answer: Pin<Box<dyn Future<Output = _> + Send>> =
                        match limits::admit(req, &http.limits, &refusals) {
                            Ok(req) => {
                                let (shared, kind) = (Arc::clone(&shared), Arc::clone(&kind));
                                crate::workers::boxed_in_place(|| {
                                    proxy::handle(shared, kind, slot, peer, req, ex)
                                })
                            }
                            Err(refusal) => Box::pin(std::future::ready(proxy::refused(refusal, ex))),
                        };
                    answer
                }
            };
            let errors = Some(&http.stats.protocol_errors);
            match &http.tls {
                None => {
                    let stream = crate::lazy::LazyStream::new(stream);
                    http.server.serve(stream, service, false, false, stop, errors).await;
                }
                // Boxed: the handshake and the TLS stream are kilobytes, which every plaintext
                // connection's task would otherwise carry too.
                Some(config) => {
                    Box::pin(async move {
                        let _ = stream.set_nodelay(true);
                        let Ok(stream) = crate::lazy::Socket::new(stream) else { return };
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        http.stats.tls_handshakes.inc();
                        let Ok(Ok(tls)) = handshake else {
                            http.stats.tls_handshake_failures.inc();
                            shared.metrics.tls_handshake_failures.inc();
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        http.server.serve(tls, service, true, h2, stop, errors).await;
                    })
                    .await
                }
            }
        }
        ListenerKind::Tcp { split, idle } => {
            let _ = stream.set_nodelay(true);
            let Ok(stream) = crate::lazy::Socket::new(stream) else { return };
            tcp::proxy(stream, split, *idle).await;
        }
        ListenerKind::TlsPassthrough { router, idle } => {
            let _ = stream.set_nodelay(true);
            let Ok(stream) = crate::lazy::Socket::new(stream) else { return };
            // Boxed: reading the ClientHello takes almost 3 KiB of state, which every other
            // connection's task would otherwise carry too.
            Box::pin(tcp::passthrough(stream, router, *idle)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bind, Stop};
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_wakes_every_waiter_once_and_forgets_the_dropped_ones() {
        let (sender, stop) = Stop::new();
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let mut s = stop.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        let mut gone = stop.clone();
        // Registered once each, however often polled; a dropped handle leaves no waker.
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::from_millis(5), gone.wait()).await.is_err());
        }
        assert_eq!(stop.signal.waiters.lock().unwrap().len(), 4);
        drop(gone);
        assert_eq!(stop.signal.waiters.lock().unwrap().len(), 3);
        // The next handle takes the freed slot.
        let mut next = stop.clone();
        assert!(tokio::time::timeout(Duration::from_millis(5), next.wait()).await.is_err());
        assert_eq!(stop.signal.waiters.lock().unwrap().slots.len(), 4);
        drop(next);
        assert!(!stop.is_set());
        sender.fire();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap();
        }
        assert!(stop.is_set());
        // A handle made or first polled after the stop is stopped at once.
        stop.clone().wait().await;

        // Dropping the sender stops too.
        let (sender, mut stop) = Stop::new();
        drop(sender);
        stop.wait().await;
    }

    /// Every open connection's task carries this future (and tokio moves it whole when the
    /// task is made and when it ends): hyper's connection state, TLS, TLS passthrough and the
    /// request path are boxed out of it (11.8 KiB before, 2.3 KiB after).
    #[test]
    fn a_connections_task_stays_small() {
        fn size_of_future<A, B, C, D, E, Fut>(_: fn(A, B, C, D, E) -> Fut) -> usize {
            std::mem::size_of::<Fut>()
        }
        let size =
            size_of_future::<Arc<crate::engine::Shared>, usize, std::net::TcpStream, SocketAddr, Stop, _>(
                super::proxy_connection,
            );
        assert!(size <= 3072, "{size} bytes");
    }

    /// Each request's answer is this future, copied whole into its box: the plain path is
    /// inline and the rest boxed (3.3 KiB before, 1.3 KiB after).
    #[test]
    fn a_requests_future_stays_small() {
        fn size_of_future<A, B, C, D, E, G, Fut>(_: fn(A, B, C, D, E, G) -> Fut) -> usize {
            std::mem::size_of::<Fut>()
        }
        let size = size_of_future(crate::http::proxy::handle);
        assert!(size <= 1536, "{size} bytes");
    }

    #[test]
    fn one_port_many_sockets_and_no_stranger_may_join() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let group = bind(any, 3).unwrap();
        assert_eq!(group.len(), 3);
        let addr = group[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(group.iter().all(|s| s.local_addr().unwrap() == addr), "all on one port");

        // A second group on the same port is refused (the probe without SO_REUSEPORT fails),
        // although SO_REUSEPORT alone would have let it share the port.
        let err = bind(addr, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

        // Once the group is gone, the port binds again at once (SO_REUSEADDR).
        drop(group);
        assert_eq!(bind(addr, 1).unwrap()[0].local_addr().unwrap(), addr);
    }

    #[test]
    fn every_socket_of_the_group_accepts() {
        let group = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        for s in &group {
            s.set_nonblocking(false).unwrap();
        }
        // The kernel hashes connections over the group: enough connections reach both.
        let clients: Vec<_> = (0..64).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        for s in &group {
            s.set_nonblocking(true).unwrap();
        }
        let counts: Vec<usize> =
            group.iter().map(|s| std::iter::from_fn(|| s.accept().ok()).count()).collect();
        assert_eq!(counts.iter().sum::<usize>(), clients.len());
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    }

    /// HTTP listeners defer the accept until the client speaks (`Server::defer_accept`); a
    /// listener turned off again accepts a silent client at once.
    #[tokio::test]
    async fn a_deferred_listener_accepts_a_connection_when_its_client_speaks() {
        use std::io::Write;
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = sockets[0].local_addr().unwrap();
        let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let here = tokio::runtime::Handle::current();
        let server =
            super::serve(sockets, std::iter::once(&here), Arc::default(), None, move |stream, _, _| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(stream);
                }
            })
            .unwrap();
        let deferral = |server: &super::Server| -> Vec<u32> {
            let sockets = server.sockets.iter().filter_map(std::sync::Weak::upgrade);
            sockets.map(|l| crate::sys::tcp_defer_accept(l.0.get_ref()).unwrap()).collect()
        };
        assert_eq!(deferral(&server), [0, 0]);
        server.defer_accept(true).unwrap();
        assert!(deferral(&server).iter().all(|&s| s > 0), "{:?}", deferral(&server));

        async fn wait(
            ms: u64,
            accepted: &mut tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
        ) -> Result<Option<std::net::TcpStream>, tokio::time::error::Elapsed> {
            tokio::time::timeout(Duration::from_millis(ms), accepted.recv()).await
        }
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        assert!(wait(300, &mut accepted).await.is_err(), "accepted before the client said anything");
        silent.write_all(b"GET").unwrap();
        let stream = wait(5000, &mut accepted).await.expect("accepted once it spoke").unwrap();
        assert_eq!(stream.peer_addr().unwrap(), silent.local_addr().unwrap());

        server.defer_accept(false).unwrap();
        assert_eq!(deferral(&server), [0, 0]);
        let quiet = std::net::TcpStream::connect(addr).unwrap();
        let stream = wait(5000, &mut accepted).await.expect("accepted at once").unwrap();
        assert_eq!(stream.peer_addr().unwrap(), quiet.local_addr().unwrap());
        server.stop();
    }
}
