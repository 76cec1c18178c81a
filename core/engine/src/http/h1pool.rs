//! An HTTP/1.1 client of our own for plaintext clusters, run inside the task of the request
//! that uses it, with a pool of idle connections per endpoint.
//!
//! Why by hand: hyper's client drives each connection in a task of its own, fed through a
//! channel. A proxied request then crossed tasks twice (the downstream connection's task
//! hands the request over and waits to be woken with the response), and with the pool's
//! hashing, checkout and channel work that was the largest share of the proxy's user-space
//! CPU: 17.1 µs per keep-alive request against nginx's 9.2 (benches, h1-keepalive-1k). No
//! crate offers an HTTP/1.1 client connection that its caller polls; hyper's own needs its
//! `Connection` future driven apart from the request. The wire work here is httparse's (the
//! parser hyper uses); what this module adds is message framing (RFC 9112 §6), keep-alive
//! and the idle pool.
//!
//! Scope: requests whose body is already in hand (none, or buffered for retries or a mirror),
//! so a request is written whole before its response is read. A streamed upload, whose body
//! must be written while the response may already be coming back, and upgrades stay on
//! hyper's client (client.rs chooses).

use std::future::Future;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

use super::client::{CountingConnector, UpstreamError};
use super::headers::{connection_names, has_token, is_hop_by_hop};
use crate::lazy::Socket;
use crate::metrics::OpenConnection;

/// A response head larger than this is refused (502), as hyper's client refuses one larger
/// than its read buffer.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Response headers beyond this count are refused (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Trailer fields of a chunked response beyond this count are refused.
const MAX_TRAILERS: usize = 32;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Read at least this much room at a time...
const READ_CHUNK: usize = 16 * 1024;
/// ...and at most this much: reads that fill their room double it up to here, so that a
/// large body moves in few large reads (hyper's adaptive read strategy does the same).
const MAX_READ_CHUNK: usize = 512 * 1024;

/// One upstream connection, the bytes read from it and not yet used, and the response being
/// read from it.
///
/// Boxed once per connection and passed as a `Box<Conn>` from connect to pool to response
/// body and back, so that a response (`Response<H1Body>`, the body one pointer) is small
/// enough to move with a few register stores. With the body's state inline, each response was
/// 352 bytes, copied by a `memmove` call at each of the request path's layers: ten calls per
/// request.
#[derive(Debug)]
struct Conn {
    io: Socket,
    /// Counts the connection as open (client.rs) until it drops.
    _open: OpenConnection,
    buf: BytesMut,
    /// The room the next read gets (between `READ_CHUNK` and `MAX_READ_CHUNK`).
    read_size: usize,
    /// The endpoint it is connected to (its pool slot).
    endpoint: Authority,
    /// The response body being read, while an [`H1Body`] holds the connection.
    framing: Framing,
    /// Whether the connection may carry another request when the body has ended.
    keep_alive: bool,
    /// The response head, when it is passed on as read (its map is then empty).
    raw: Option<RawHead>,
    /// The pool it goes back to, while an [`H1Body`] holds it (a pooled connection holding
    /// its pool would keep the pool alive).
    pool: Option<Arc<Idle>>,
}

impl Conn {
    fn new(io: Socket, open: OpenConnection, endpoint: Authority) -> Box<Self> {
        Box::new(Self {
            io,
            _open: open,
            buf: BytesMut::new(),
            read_size: READ_CHUNK,
            endpoint,
            framing: Framing::Length(0),
            keep_alive: false,
            raw: None,
            pool: None,
        })
    }

    /// Read more into the buffer: the count read, 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(pin!(self.io.read_buf(&mut self.buf)).poll(cx));
        if let Ok(n) = read {
            if n == room {
                self.read_size = (self.read_size * 2).min(MAX_READ_CHUNK);
            } else if n < self.read_size / 8 {
                self.read_size = (self.read_size / 2).max(READ_CHUNK);
            }
        }
        Poll::Ready(read)
    }

    /// Whether an idle connection may carry a request: nothing has arrived on it (neither an
    /// end of stream nor stray bytes). Asks the reactor's cached readiness, so mostly no
    /// system call.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.buf.is_empty() && self.poll_fill(&mut cx).is_pending()
    }
}

/// An endpoint's idle connections, each with the pool's clock when it went idle (ms), most
/// recent last.
type Slots = Vec<(Authority, Vec<(u64, Box<Conn>)>)>;

/// Idle connections by endpoint. A list, not a map: a cluster has few endpoints, and
/// comparing a few authorities costs less than hashing one.
#[derive(Debug)]
struct Idle {
    by_endpoint: Mutex<Slots>,
    max_per_endpoint: usize,
    timeout: Duration,
    /// Whether the task that closes expired idle connections runs.
    reaping: AtomicBool,
    /// A coarse clock, in ms since `born`, that the reaping task advances every `tick`: the
    /// request path reads this instead of the system clock when it pools or takes a
    /// connection.
    clock_ms: AtomicU64,
    born: Instant,
    tick: Duration,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.by_endpoint.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used live connection to `endpoint`, if any.
    fn checkout(&self, endpoint: &Authority) -> Option<Box<Conn>> {
        let mut slots = self.lock();
        let (_, idle) = slots.iter_mut().find(|(a, _)| a == endpoint)?;
        let now = self.clock_ms.load(Ordering::Relaxed);
        while let Some((since, mut conn)) = idle.pop() {
            if self.fresh(since, now) && conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, conn: Box<Conn>) {
        if self.max_per_endpoint == 0 {
            return;
        }
        let now = self.clock_ms.load(Ordering::Relaxed);
        {
            let mut slots = self.lock();
            let i = match slots.iter().position(|(a, _)| *a == conn.endpoint) {
                Some(i) => i,
                None => {
                    slots.push((conn.endpoint.clone(), Vec::new()));
                    slots.len() - 1
                }
            };
            let idle = &mut slots[i].1;
            if idle.len() >= self.max_per_endpoint {
                idle.remove(0);
            }
            idle.push((now, conn));
        }
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Whether a connection pooled at `since` is surely idle for less than the timeout at
    /// `now` (both on the coarse clock, which lags by up to one tick).
    fn fresh(&self, since: u64, now: u64) -> bool {
        let tick = u64::try_from(self.tick.as_millis()).unwrap_or(u64::MAX);
        let timeout = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(since).saturating_add(tick) < timeout
    }

    /// Advance the coarse clock and close the connections idle for longer than the timeout.
    fn expire(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_ms.store(now, Ordering::Relaxed);
        let mut slots = self.lock();
        for (_, idle) in slots.iter_mut() {
            idle.retain(|(since, _)| self.fresh(*since, now));
        }
        slots.retain(|(_, idle)| !idle.is_empty());
    }
}

/// Advance the pool's clock and close expired idle connections every tick, while the pool
/// lives.
async fn reap(idle: Weak<Idle>) {
    let Some(every) = idle.upgrade().map(|i| i.tick) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match idle.upgrade() {
            Some(i) => i.expire(),
            None => return,
        }
    }
}

/// A plaintext cluster's HTTP/1.1 client (see the module's notes).
#[derive(Debug)]
pub(crate) struct H1Pool {
    connector: CountingConnector<HttpConnector>,
    idle: Arc<Idle>,
}

impl H1Pool {
    pub(crate) fn new(
        connector: CountingConnector<HttpConnector>,
        max_idle_per_endpoint: usize,
        idle_timeout: Duration,
    ) -> Self {
        let idle = Idle {
            by_endpoint: Mutex::new(Vec::new()),
            max_per_endpoint: max_idle_per_endpoint,
            timeout: idle_timeout,
            reaping: AtomicBool::new(false),
            clock_ms: AtomicU64::new(0),
            born: Instant::now(),
            // Fine enough that a connection is never kept much past its timeout, coarse
            // enough to cost nothing: one wake-up per second at most.
            tick: (idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        };
        Self { connector, idle: Arc::new(idle) }
    }

    async fn connect(&self, endpoint: &Authority) -> Result<Box<Conn>, UpstreamError> {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(endpoint.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::connect(Box::new(e)))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(UpstreamError::connect)?;
        let (io, open) = connector.call(uri).await.map_err(UpstreamError::connect)?.into_parts();
        let io = Socket::from_tokio(io.into_inner()).map_err(|e| UpstreamError::connect(Box::new(e)))?;
        Ok(Conn::new(io, open, endpoint.clone()))
    }

    /// Send a request whose URI names the endpoint, with its whole body, and read the
    /// response head (see [`H1Pool::send`]).
    pub(crate) fn request(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<H1Body>, UpstreamError>> + Send + '_ {
        // Encoded here, so that the future carries the head's bytes, not the request.
        let endpoint = parts.uri.authority().cloned();
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let encoded =
            endpoint.as_ref().map(|e| Encoded::new(&parts.method, pq, &parts.headers, Some(e), body));
        drop(parts);
        async move {
            match (endpoint, encoded) {
                (Some(endpoint), Some(Some(encoded))) => self.send(&encoded, &endpoint).await,
                _ => Err(UpstreamError::connect("request URI names no endpoint".into())),
            }
        }
    }

    /// Send an encoded request to `endpoint` and read the response head. A pooled connection
    /// that the endpoint closed before answering is replaced once by a new one, when the
    /// request is idempotent (RFC 9110 §9.2.2): a request that may have reached the endpoint
    /// is otherwise never sent twice.
    pub(crate) async fn send(
        &self,
        req: &Encoded,
        endpoint: &Authority,
    ) -> Result<Response<H1Body>, UpstreamError> {
        let (mut conn, mut reused) = match self.idle.checkout(endpoint) {
            Some(conn) => (conn, true),
            // Boxed, as a connect is rare and its future large: every request's future would
            // carry it.
            None => (Box::pin(self.connect(endpoint)).await?, false),
        };
        loop {
            match exchange(&mut conn, req).await {
                Ok(parsed) => {
                    return self.respond(parsed, conn, req.is_head).map_err(UpstreamError::request);
                }
                Err(Failed { error, answered }) => {
                    if reused && !answered && req.replayable {
                        conn = Box::pin(self.connect(endpoint)).await?;
                        reused = false;
                        continue;
                    }
                    return Err(UpstreamError::request(Box::new(error)));
                }
            }
        }
    }

    /// The response to hand downstream, its body read from `conn` as it is polled.
    fn respond(
        &self,
        head: Head,
        mut conn: Box<Conn>,
        is_head: bool,
    ) -> Result<Response<H1Body>, Box<dyn std::error::Error + Send + Sync>> {
        let Head { status, version, headers, facts } = head;
        (conn.framing, conn.keep_alive) = framing(status, version, facts, is_head)?;
        conn.pool = Some(Arc::clone(&self.idle));
        // A body that is already whole (`Length(0)`) pools its connection when it is
        // dropped, after the server has written the head it may hold.
        let mut resp = Response::new(H1Body(Some(conn)));
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// RFC 9110 §9.2.2's idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// A request encoded for HTTP/1.1 once: every try, to whichever endpoint, sends the same
/// bytes, so a retry re-encodes nothing and the request path clones no headers.
#[derive(Debug)]
pub(crate) struct Encoded {
    head: Vec<u8>,
    body: Bytes,
    is_head: bool,
    replayable: bool,
    /// The response head may be passed on as read ([`RawHead`]): the request path sets this
    /// when our own HTTP/1.1 server answers and nothing reads or edits the response headers.
    pub(crate) pass_head: bool,
}

impl Encoded {
    /// The request line and headers, with framing of our own: the client's `Content-Length`
    /// and `Transfer-Encoding` never pass (the body is whole, so its length is known). A
    /// request without `Host` gets `host_fallback`, or is not encoded (None) without one, as
    /// its head would then depend on the endpoint.
    pub(crate) fn new(
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        host_fallback: Option<&Authority>,
        body: Bytes,
    ) -> Option<Self> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(path_and_query.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !headers.contains_key(HOST) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host_fallback?.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // A body, or a method whose requests have one by nature, says its length; a GET
        // without a body says nothing (RFC 9110 §8.6).
        let says_length = !body.is_empty()
            || headers.contains_key(CONTENT_LENGTH)
            || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        if says_length {
            // Written into the head itself (no String for the number).
            let _ = write!(out, "content-length: {}\r\n", body.len());
        }
        out.extend_from_slice(b"\r\n");
        Some(Self {
            head: out,
            body,
            is_head: *method == Method::HEAD,
            replayable: is_idempotent(method),
            pass_head: false,
        })
    }
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    /// Without the hop-by-hop `Keep-Alive`, and without `Connection` unless it names other
    /// headers (which `strip_hop_by_hop` then removes with it). Empty when the head is passed
    /// on as read (a [`RawHead`], which the parse leaves in the connection: this stays small
    /// enough to move without a `memmove` call).
    headers: HeaderMap,
    /// How its body is framed, read from its headers.
    facts: Facts,
}

/// What the framing of a response depends on, read while its head is parsed.
#[derive(Debug, Default, Clone, Copy)]
struct Facts {
    /// `Connection: close`: the endpoint closes after this response.
    close: bool,
    /// `Transfer-Encoding` is present, and whether its last coding is `chunked`.
    chunked: Option<bool>,
    /// The one length all `Content-Length` fields agree on.
    length: Option<u64>,
    /// A `Date` field is present.
    date: bool,
}

/// Header lines a [`RawHead`] may leave out (this hop's own: `Connection`, `Keep-Alive`,
/// `Transfer-Encoding`, `Content-Length`); a head with more takes the map.
const MAX_HOLES: usize = 4;

/// An upstream's response head handed downstream as it was read, when our own HTTP/1.1
/// server answers the request (http/h1server.rs) and nothing on the way reads or edits the
/// response's headers (the request path decides: `Encoded::pass_head`). Its header lines are
/// then copied to the client as one block, less the lines this hop owns, instead of being
/// parsed into a `HeaderMap` (a name lookup and a shared-buffer reference count per field)
/// and encoded again: nginx and HAProxy pass header lines this way too. Only a plain head
/// takes this form: every line ends in CRLF, and no field asks for more than removal
/// (another hop-by-hop field, a `Connection` that names fields, `grpc-status`); any other goes
/// through the map as before.
#[derive(Debug)]
pub(crate) struct RawHead {
    head: Bytes,
    /// The header lines: from the first field's name to the blank line that ends the head.
    lines: (u32, u32),
    /// Lines left out, in order.
    holes: [(u32, u32); MAX_HOLES],
    holes_len: u8,
    /// The `Content-Length` it stated (a line left out: the server writes the length).
    pub(crate) length: Option<u64>,
    /// Whether it has a `Date` line.
    pub(crate) date: bool,
}

impl RawHead {
    /// Append the header lines passed on (each ending in CRLF).
    pub(crate) fn write_lines(&self, out: &mut Vec<u8>) {
        let mut at = self.lines.0 as usize;
        for &(start, end) in &self.holes[..usize::from(self.holes_len)] {
            out.extend_from_slice(&self.head[at..start as usize]);
            at = end as usize;
        }
        out.extend_from_slice(&self.head[at..self.lines.1 as usize]);
    }
}

/// The response fields this client reads by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    KeepAlive,
    TransferEncoding,
    ContentLength,
    Date,
    /// One a passed head cannot carry (another hop-by-hop header, which `strip_hop_by_hop`
    /// rules on, or `grpc-status`, which the request path reads): the response takes the map.
    Special,
    Other,
}

impl Field {
    /// Matched on the length first: most names match none and cost one jump and the
    /// hop-by-hop test's length bit (its names are `headers.rs`'s one list).
    fn of(name: &[u8]) -> Self {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"date") => Self::Date,
            10 if is(b"connection") => Self::Connection,
            10 if is(b"keep-alive") => Self::KeepAlive,
            11 if is(b"grpc-status") => Self::Special,
            14 if is(b"content-length") => Self::ContentLength,
            17 if is(b"transfer-encoding") => Self::TransferEncoding,
            _ if is_hop_by_hop(name) => Self::Special,
            _ => Self::Other,
        }
    }
}

/// An exchange that failed, and whether any of the response had arrived.
struct Failed {
    error: io::Error,
    answered: bool,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Write the request, then read its final response head (informational ones are skipped).
async fn exchange(conn: &mut Conn, req: &Encoded) -> Result<Head, Failed> {
    let mut out = Buf::chain(&req.head[..], &req.body[..]);
    if let Err(error) = conn.io.write_all_buf(&mut out).await {
        return Err(Failed { error, answered: false });
    }
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match parse_head(&mut conn.buf, req.pass_head, &mut conn.raw) {
                Ok(Some(head)) if head.status.is_informational() => {
                    // 100 Continue, 103 Early Hints: the final answer follows. 101 cannot
                    // come, since upgrades do not take this path.
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Failed { error: invalid("unexpected 101 response"), answered });
                    }
                    continue;
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) if conn.buf.len() >= MAX_HEAD_BYTES => {
                    return Err(Failed { error: invalid("response head too large"), answered });
                }
                Ok(None) => {}
                Err(error) => return Err(Failed { error, answered }),
            }
        }
        match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) => {
                let error =
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response");
                return Err(Failed { error, answered });
            }
            Ok(_) => {}
            Err(error) => return Err(Failed { error, answered }),
        }
    }
}

/// Parse a response head at the start of `buf`, consuming it when complete: into a
/// [`RawHead`] put in `passed` when `pass` allows and the head is plain (`passed` is None
/// otherwise), else into a map whose values are views of the head's bytes, not copies.
/// Either way its framing fields are read here, and what could be read two ways is refused
/// (conflicting lengths).
fn parse_head(buf: &mut BytesMut, pass: bool, passed: &mut Option<RawHead>) -> io::Result<Option<Head>> {
    *passed = None;
    // (name start, name end, value start, value end) of each header, as offsets into `buf`
    // (the read buffer is far below 4 GiB, so u32 holds them: half the stack to clear).
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    // Fields that never enter the map (bit i: header i), and the lines a passed head leaves out.
    let mut unmapped = 0u128;
    let mut holes = 0u128;
    let mut facts = Facts::default();
    let mut plain = pass;
    let (len, code, minor, count) = {
        // httparse fills these; left uninitialized, they cost nothing per response.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many response headers")),
            Err(_) => return Err(invalid("malformed response head")),
        };
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (i, (span, h)) in spans.iter_mut().zip(resp.headers.iter()).enumerate() {
            let name = h.name.as_bytes();
            let (n, v) = (offset(name), offset(h.value));
            *span = (n, n + name.len() as u32, v, v + h.value.len() as u32);
            match Field::of(name) {
                // Hop-by-hop headers that only describe this connection are read here and
                // never enter the map (every keep-alive response of an HTTP/1.1 upstream has
                // one, and `strip_hop_by_hop` would take it out again).
                Field::Connection => {
                    facts.close |= has_token(h.value, b"close");
                    if connection_names(h.value).next().is_none() {
                        unmapped |= 1 << i;
                        holes |= 1 << i;
                    } else {
                        plain = false;
                    }
                }
                Field::KeepAlive => {
                    unmapped |= 1 << i;
                    holes |= 1 << i;
                }
                Field::TransferEncoding => {
                    facts.chunked = Some(last_token_is(h.value, b"chunked"));
                    holes |= 1 << i;
                }
                Field::ContentLength => {
                    for n in content_lengths(h.value) {
                        let n = n?;
                        if facts.length.is_some_and(|f| f != n) {
                            return Err(invalid("conflicting Content-Length"));
                        }
                        facts.length = Some(n);
                    }
                    holes |= 1 << i;
                }
                Field::Date => facts.date = true,
                Field::Special => plain = false,
                Field::Other => {}
            }
        }
        (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1), resp.headers.len())
    };
    let status = StatusCode::from_u16(code).map_err(|_| invalid("bad response status"))?;
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut head = buf.split_to(len).freeze();
    let spans = &spans[..count];
    if plain && holes.count_ones() as usize <= MAX_HOLES {
        match RawHead::of(head, spans, holes, facts) {
            Ok(raw) => {
                *passed = Some(raw);
                return Ok(Some(Head { status, version, headers: HeaderMap::new(), facts }));
            }
            Err(back) => head = back,
        }
    }
    let mut headers = HeaderMap::with_capacity(count);
    for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
        if unmapped & (1 << i) != 0 {
            continue;
        }
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| invalid("bad response header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| invalid("bad response header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head { status, version, headers, facts }))
}

impl RawHead {
    /// The passed form of `head`, whose fields are at `spans` and whose lines marked in
    /// `holes` are left out; `head` back if a line does not end in CRLF (httparse also takes a
    /// bare LF, which is not passed on: the map's encoding writes CRLF). Taken, not borrowed:
    /// a clone of the shared buffer is an atomic increment, and its drop a decrement.
    fn of(head: Bytes, spans: &[(u32, u32, u32, u32)], holes: u128, facts: Facts) -> Result<Self, Bytes> {
        let crlf_before = |at: u32| at >= 2 && head.get(at as usize - 2..at as usize) == Some(b"\r\n");
        let Some(end) = u32::try_from(head.len()).ok().and_then(|n| n.checked_sub(2)) else {
            return Err(head);
        };
        if !crlf_before(end + 2) || !crlf_before(end) {
            return Err(head);
        }
        let lines = (spans.first().map_or(end, |s| s.0), end);
        let mut cut = [(0, 0); MAX_HOLES];
        let mut cut_len = 0u8;
        for (i, span) in spans.iter().enumerate() {
            // Each line runs to the next one's name (or to the blank line).
            let next = spans.get(i + 1).map_or(end, |s| s.0);
            if !crlf_before(span.0) || !crlf_before(next) {
                return Err(head);
            }
            if holes & (1 << i) != 0 {
                cut[usize::from(cut_len)] = (span.0, next);
                cut_len += 1;
            }
        }
        Ok(Self { head, lines, holes: cut, holes_len: cut_len, length: facts.length, date: facts.date })
    }
}

/// How a response body ends (RFC 9112 §6.3), and whether the connection can carry another
/// request after it (not after `Connection: close`, which the parse read). What could be read
/// two ways is refused, never guessed: both `Transfer-Encoding` and `Content-Length`.
fn framing(
    status: StatusCode,
    version: Version,
    facts: Facts,
    is_head: bool,
) -> Result<(Framing, bool), Box<dyn std::error::Error + Send + Sync>> {
    let mut keep_alive = version == Version::HTTP_11 && !facts.close;
    let bodiless = is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if let Some(chunked) = facts.chunked {
        if facts.length.is_some() {
            return Err(invalid("response has both Transfer-Encoding and Content-Length").into());
        }
        if bodiless {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            // Another coding last: the body runs to the end of the connection.
            keep_alive = false;
            Framing::Close
        }
    } else if let Some(len) = facts.length {
        Framing::Length(if bodiless { 0 } else { len })
    } else if bodiless {
        Framing::Length(0)
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok((framing, keep_alive))
}

/// The lengths a `Content-Length` value lists (RFC 9110 §8.6 allows a list of one repeated
/// length), each a plain decimal number or an error.
fn content_lengths(value: &[u8]) -> impl Iterator<Item = io::Result<u64>> + '_ {
    value.split(|&b| b == b',').map(|item| {
        let item = item.trim_ascii();
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) || item.len() > 19 {
            return Err(invalid("bad Content-Length"));
        }
        std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad Content-Length"))
    })
}

/// Whether the last item of a comma-separated header value is `token` (case-insensitive).
fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where a response body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the endpoint closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A response body read from its upstream connection as it is polled; the connection goes
/// back to the pool when the body has ended cleanly (read to its end, or dropped when nothing
/// of it is left), and closes if the body is dropped before. None once it has ended.
#[derive(Debug)]
pub(crate) struct H1Body(Option<Box<Conn>>);

impl H1Body {
    /// The response head as read, when it is passed on that way.
    pub(crate) fn raw_head(&self) -> Option<&RawHead> {
        self.0.as_ref().and_then(|c| c.raw.as_ref())
    }

    /// The body has ended: the connection is pooled if nothing follows it.
    fn finish(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.raw = None;
            if let Some(pool) = conn.pool.take() {
                if conn.keep_alive && conn.buf.is_empty() {
                    pool.checkin(conn);
                }
            }
        }
    }

    fn eof() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed the connection inside the body")
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.0.as_mut() else { return Poll::Ready(None) };
            match conn.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(left).unwrap_or(usize::MAX).min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        conn.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return Poll::Ready(Some(Err(Self::eof()))),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.0 = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Framing::Chunked(state) => match decode_chunk(state, &mut conn.buf) {
                    Ok(Step::Data(data, next)) => {
                        conn.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Next(next)) => conn.framing = Framing::Chunked(next),
                    Ok(Step::End(trailers)) => {
                        conn.framing = Framing::Length(0);
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return Poll::Ready(Some(Err(Self::eof()))),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    },
                    Err(e) => {
                        this.0 = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|c| c.framing == Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|c| c.framing) {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    /// A body with nothing left (a whole one, or one whose last bytes were read but whose end
    /// was never polled) pools its connection; any other closes it.
    fn drop(&mut self) {
        if self.0.as_ref().is_some_and(|c| c.framing == Framing::Length(0)) {
            self.finish();
        }
    }
}

/// What the chunked decoder made of the buffered bytes.
#[derive(Debug)]
enum Step {
    /// Some of a chunk's data, and the state after it.
    Data(Bytes, Chunk),
    /// A state change with nothing to hand on.
    Next(Chunk),
    /// The body has ended, with these trailers if any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

/// One step of chunked decoding (RFC 9112 §7.1) over the buffered bytes.
fn decode_chunk(state: Chunk, buf: &mut BytesMut) -> io::Result<Step> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, 0))) => {
                buf.advance(used);
                Ok(Step::Next(Chunk::Trailers))
            }
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(Step::Next(Chunk::Data(size)))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                Err(invalid("chunk-size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err(invalid("bad chunk size")),
        },
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let data = buf.split_to(n).freeze();
            let rest = left - n as u64;
            Ok(Step::Data(data, if rest == 0 { Chunk::DataEnd } else { Chunk::Data(rest) }))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((used, fields))) => {
                    let trailers = if fields.is_empty() {
                        None
                    } else {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| invalid("bad trailer name"))?;
                            let value =
                                HeaderValue::from_bytes(f.value).map_err(|_| invalid("bad trailer value"))?;
                            map.append(name, value);
                        }
                        Some(map)
                    };
                    buf.advance(used);
                    Ok(Step::End(trailers))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                    Err(invalid("trailers too large"))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(invalid("malformed trailers")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
