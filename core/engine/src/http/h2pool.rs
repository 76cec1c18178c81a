//! HTTP/2 upstream connections of our own: one shared, multiplexed connection per endpoint.
//!
//! Why not hyper-util's pool: it keys connections by the request URI's authority, so the
//! URI had to name the endpoint, and HTTP/2 sends that authority as `:authority`; the
//! upstream then saw `127.0.0.1:9001` instead of the client's host. Here the endpoint
//! picks the connection and the request URI carries the client's authority, as Envoy does.
//! No crate offers an HTTP/2 connection holder keyed apart from the URI, and what it takes
//! is small on top of `hyper::client::conn::http2` (whose `SendRequest` is cloneable and
//! multiplexes): a slot per endpoint, one connect at a time, reconnect when closed.
//!
//! Per request: one lock-free map read (`ArcSwap`), one lock-free slot read, a `SendRequest`
//! clone and a relaxed store of the last-use time. Connects happen one at a time per
//! endpoint (a tokio mutex): requests that arrive meanwhile wait for that connect and share
//! its connection, or its failure, rather than each opening one.
//!
//! Connections are opened by the cluster's counting connector (client.rs), so they count in
//! `connections_total`, the open-connections gauge and the breaker's `max_connections`
//! like every other upstream connection; the whole connect (TCP, TLS, HTTP/2 handshake) is
//! bounded by the cluster's connect timeout. A connection that carried no new request for
//! the pool's `idle_timeout` leaves its slot and closes once its last stream ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::client::{ConnectionLimit, OutgoingBody, UpstreamError};
use crate::metrics::ClusterStats;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 connections of one cluster, by endpoint.
pub(crate) struct H2Pool<C> {
    connector: C,
    scheme: Scheme,
    connect_timeout: Duration,
    idle_timeout: Duration,
    stats: Arc<ClusterStats>,
    /// Copied on write (a new endpoint is rare); read without a lock.
    slots: ArcSwap<HashMap<Authority, Arc<Slot>>>,
    adding: Mutex<()>,
    /// The clock of `Slot::last_used`.
    born: Instant,
}

impl<C> std::fmt::Debug for H2Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("endpoints", &self.slots.load().len()).finish_non_exhaustive()
    }
}

/// One endpoint: its live connection, if any, and the lock its connects take turns on.
struct Slot {
    current: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<Option<ConnectFailure>>,
    /// Connects that failed; a waiter that sees it move knows its turn's connect failed.
    failures: AtomicU64,
    /// Milliseconds since the pool's `born` of the last request.
    last_used: AtomicU64,
    next_id: AtomicU64,
}

struct Conn {
    id: u64,
    sender: http2::SendRequest<OutgoingBody>,
}

/// Why a connect failed, kept for the requests that waited on it.
#[derive(Debug, Clone)]
enum ConnectFailure {
    Timeout,
    Limit,
    Other(Arc<str>),
}

impl ConnectFailure {
    fn of(e: &BoxError) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = cur {
            if err.is::<ConnectionLimit>() {
                return Self::Limit;
            }
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return Self::Timeout;
            }
            cur = err.source();
        }
        Self::Other(e.to_string().into())
    }

    fn error(&self) -> UpstreamError {
        let source: BoxError = match self {
            Self::Timeout => Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            Self::Limit => Box::new(ConnectionLimit),
            Self::Other(text) => Box::new(std::io::Error::other(text.to_string())),
        };
        UpstreamError::connect(source)
    }
}

impl<C, IO> H2Pool<C>
where
    C: Service<Uri, Response = IO, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send + 'static,
    IO: Read + Write + Unpin + Send + 'static,
{
    pub(crate) fn new(
        connector: C,
        scheme: Scheme,
        connect_timeout: Duration,
        idle_timeout: Duration,
        stats: Arc<ClusterStats>,
    ) -> Self {
        Self {
            connector,
            scheme,
            connect_timeout,
            idle_timeout,
            stats,
            slots: ArcSwap::default(),
            adding: Mutex::new(()),
            born: Instant::now(),
        }
    }

    /// Send `req`, whose URI names the endpoint (`scheme://endpoint/path`), over that
    /// endpoint's connection. The URI's authority becomes the request's `Host` header (the
    /// client's host) and that header is dropped, so the upstream sees the client's host as
    /// `:authority` (RFC 9113 8.3.1); without one, the endpoint.
    pub(crate) async fn request(
        &self,
        mut req: Request<OutgoingBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(endpoint) = req.uri().authority().cloned() else {
            return Err(UpstreamError::request(Box::from("the upstream URI names no endpoint")));
        };
        let authority = match req.headers_mut().remove(HOST) {
            Some(host) => Authority::try_from(host.as_bytes()).unwrap_or_else(|_| endpoint.clone()),
            None => endpoint.clone(),
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::request(Box::new(e)))?;
        *req.version_mut() = Version::HTTP_2;

        let slot = self.slot(&endpoint);
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        let (id, mut sender) = self.sender(&slot, &endpoint).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never sent: the connection closed under us (the upstream went away or said
                // GOAWAY). Forget it and send once more on a fresh one.
                Some(req) => {
                    slot.forget(id);
                    let (_, mut sender) = self.sender(&slot, &endpoint).await?;
                    sender.send_request(req).await.map_err(|e| UpstreamError::request(Box::new(e)))
                }
                None => Err(UpstreamError::request(Box::new(e.into_error()))),
            },
        }
    }

    /// Make sure `endpoint` has a live connection (connecting when it has none), without
    /// sending anything: `protocol: auto` learns from the connect which protocol it speaks.
    pub(crate) async fn ready(&self, endpoint: &Authority) -> Result<(), UpstreamError> {
        let slot = self.slot(endpoint);
        self.sender(&slot, endpoint).await.map(|_| ())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slot(&self, endpoint: &Authority) -> Arc<Slot> {
        if let Some(slot) = self.slots.load().get(endpoint) {
            return Arc::clone(slot);
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.slots.load();
        if let Some(slot) = current.get(endpoint) {
            return Arc::clone(slot);
        }
        // Endpoints that left the config leave their slots behind; drop those whose
        // connection is gone while adding the new one, so the map stays as big as the config.
        let mut next: HashMap<Authority, Arc<Slot>> = current
            .iter()
            .filter(|(_, s)| s.current.load().is_some())
            .map(|(a, s)| (a.clone(), Arc::clone(s)))
            .collect();
        let slot = Arc::new(Slot {
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            failures: AtomicU64::new(0),
            last_used: AtomicU64::new(self.now_ms()),
            next_id: AtomicU64::new(0),
        });
        next.insert(endpoint.clone(), Arc::clone(&slot));
        self.slots.store(Arc::new(next));
        slot
    }

    /// The endpoint's live connection, connecting when there is none.
    async fn sender(
        &self,
        slot: &Arc<Slot>,
        endpoint: &Authority,
    ) -> Result<(u64, http2::SendRequest<OutgoingBody>), UpstreamError> {
        if let Some(live) = slot.live() {
            return Ok(live);
        }
        let failures = slot.failures.load(Ordering::Acquire);
        let mut last_failure = slot.connecting.lock().await;
        if let Some(live) = slot.live() {
            return Ok(live);
        }
        // The connect we waited on failed: share its failure rather than queue one more
        // connect timeout behind it.
        if slot.failures.load(Ordering::Acquire) != failures {
            if let Some(f) = last_failure.as_ref() {
                return Err(f.error());
            }
        }
        match self.connect(slot, endpoint).await {
            Ok(live) => Ok(live),
            Err(e) => {
                let failure = ConnectFailure::of(&e);
                *last_failure = Some(failure);
                slot.failures.fetch_add(1, Ordering::AcqRel);
                Err(UpstreamError::connect(e))
            }
        }
    }

    /// Open, handshake and publish a new connection, within the connect timeout.
    async fn connect(
        &self,
        slot: &Arc<Slot>,
        endpoint: &Authority,
    ) -> Result<(u64, http2::SendRequest<OutgoingBody>), BoxError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(endpoint.clone())
            .path_and_query("/")
            .build()?;
        let mut connector = self.connector.clone();
        // Errors tagged with whether they still need counting: the connector counts its own
        // (TCP, TLS); a failed handshake is one more failed connect.
        let opening = async move {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(|e| (false, e))?;
            let io = connector.call(uri).await.map_err(|e| (false, e))?;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            builder.handshake::<_, OutgoingBody>(io).await.map_err(|e| (true, Box::new(e) as BoxError))
        };
        let (sender, conn) = match tokio::time::timeout(self.connect_timeout, opening).await {
            Ok(Ok(parts)) => parts,
            Ok(Err((count, e))) => {
                if count {
                    self.stats.connect_failures.inc();
                }
                return Err(e);
            }
            Err(_) => {
                self.stats.connect_failures.inc();
                return Err(Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")));
            }
        };
        let id = slot.next_id.fetch_add(1, Ordering::Relaxed);
        slot.current.store(Some(Arc::new(Conn { id, sender: sender.clone() })));
        tokio::spawn(drive(conn, Arc::downgrade(slot), id, self.idle_timeout, self.born));
        Ok((id, sender))
    }
}

/// Run a connection until it closes; meanwhile, take it out of its slot once it has carried
/// no new request for `idle` (it then closes when its last stream ends).
async fn drive<F>(conn: F, slot: Weak<Slot>, id: u64, idle: Duration, born: Instant)
where
    F: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let mut ticks = tokio::time::interval(idle.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = &mut conn => break,
            _ = ticks.tick() => {
                let Some(slot) = slot.upgrade() else {
                    // The pool is gone, and the sender with it: the connection winds down.
                    let _ = conn.await;
                    return;
                };
                let now = u64::try_from(born.elapsed().as_millis()).unwrap_or(u64::MAX);
                let last = slot.last_used.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= u64::try_from(idle.as_millis()).unwrap_or(u64::MAX) {
                    slot.forget(id);
                    drop(slot);
                    let _ = conn.await;
                    return;
                }
            }
        }
    }
    if let Some(slot) = slot.upgrade() {
        slot.forget(id);
    }
}

// === impl Slot ===

impl Slot {
    fn live(&self) -> Option<(u64, http2::SendRequest<OutgoingBody>)> {
        let conn = self.current.load();
        conn.as_ref().filter(|c| !c.sender.is_closed()).map(|c| (c.id, c.sender.clone()))
    }

    /// Drop connection `id` from the slot, unless a newer one already replaced it.
    fn forget(&self, id: u64) {
        let current = self.current.load_full();
        if current.as_ref().is_some_and(|c| c.id == id) {
            self.current.compare_and_swap(&current, None);
        }
    }
}

#[cfg(test)]
mod tests;
