//! Our own server side for the common HTTP/1.1 request: one without a body, not an upgrade.
//!
//! Such requests are read, handed to the request path and answered here, in the connection's
//! task: one `httparse` pass over the read buffer (header values stay views of it), the
//! response head encoded into one reused buffer and written with the first body bytes in one
//! system call. Everything else on the connection — a request with a body or `Expect`, an
//! upgrade, HTTP/1.0, `CONNECT`, a head this parser refuses or that is larger than the
//! listener allows — hands the connection, with every byte not yet consumed, to hyper for the
//! rest of its life (`Served::Fallback`). hyper then answers malformed input with its own
//! 400/431 exactly as it would have from the first byte, so the limits and refusals of
//! http/limits.rs hold the same on both paths; this module refuses nothing itself.
//!
//! Why by hand: hyper's server dispatch (its state machine, a boxed timer per request head, a
//! read buffer reallocated per request, a body channel per request) was the largest share of
//! the proxy's own CPU per keep-alive request once the upstream side was ours
//! (h1pool.rs; docs/decisions.md). No crate offers a server connection its caller drives.
//!
//! Timeouts: the header-read timeout starts when a head has begun to arrive and is not yet
//! complete (the common head arrives whole in one read and arms no timer); between requests
//! the connection's idle watchdog (server.rs) applies.

use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::h1pool::RawHead;
use super::headers::has_token;
use super::limits::RequestBody;
use super::server::Activity;
use crate::listener::Stop;
use crate::metrics::{ProtocolErrorKind, ProtocolErrors};

/// Most headers a request read here may carry; a request with more goes to hyper, which
/// applies the listener's own limit (100 by default).
const MAX_HEADERS: usize = 64;
/// Room made in the read buffer before a read. The buffer is the sniffing read's (4 KiB);
/// each request's head is split off it and, once the request is done, its room is reused.
const READ_ROOM: usize = 2048;
/// Room made in the output buffer for a response head and the first small body chunks.
const OUT_ROOM: usize = 2048;
/// Body chunks up to this size are copied behind the response head (one write for both);
/// larger ones are written from where they are.
const COPY_LIMIT: usize = 8192;

/// How a connection left this path.
#[derive(Debug)]
pub(crate) enum Served {
    /// It is done: closed by either side, failed, or told to stop.
    Closed,
    /// The next request is not one for this path: hyper serves the connection from here,
    /// starting with these bytes (already read, not consumed).
    Fallback(Bytes),
}

/// What this path needs from the listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The largest request head (the listener's `max_request_header_bytes`).
    pub(crate) max_head: usize,
    pub(crate) header_read_timeout: Duration,
    /// Whether `io` is a TLS stream, which is closed with `close_notify`.
    pub(crate) tls: bool,
}

/// Serve requests on `io`, starting with the bytes already read into `buf`, until the
/// connection ends or a request needs hyper. `handle` answers each request; `activity`
/// counts it in flight until its head is ready (the transport marks bytes moving).
pub(crate) async fn serve<I, F, Fut, B>(
    io: &mut I,
    mut buf: BytesMut,
    handle: &F,
    settings: Settings,
    stop: &mut Stop,
    activity: &Activity,
    errors: Option<&ProtocolErrors>,
) -> Served
where
    I: AsyncRead + AsyncWrite + NoDelay + Unpin,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + PassedHead + Unpin,
{
    let mut out: Vec<u8> = Vec::new();
    let mut nagle = Nagle::Untouched;
    loop {
        // --- read a head ---
        let mut deadline = None;
        let (req, client_close) = loop {
            match parse(&mut buf, settings.max_head) {
                Parsed::Request(req, close) => break (req, close),
                Parsed::Fallback => {
                    io.set_nodelay();
                    return Served::Fallback(buf.freeze());
                }
                Parsed::Partial => {}
            }
            if buf.capacity() - buf.len() < READ_ROOM {
                buf.reserve(READ_ROOM);
            }
            let read = if buf.is_empty() {
                // Between requests: wait for the next one unless told to stop (the idle
                // watchdog around this path bounds the wait).
                tokio::select! {
                    // The work first: the other branches only end it.
                    biased;
                    r = io.read_buf(&mut buf) => r,
                    () = stop.wait() => return Served::Closed,
                }
            } else {
                // A head has begun: it must be complete within the header-read timeout.
                let at = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + settings.header_read_timeout);
                match tokio::time::timeout_at(at, io.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        if let Some(errors) = errors {
                            errors.inc(ProtocolErrorKind::HeaderTimeout);
                        }
                        return Served::Closed;
                    }
                }
            };
            if matches!(read, Ok(0) | Err(_)) {
                return Served::Closed;
            }
        };
        let head_request = req.method() == Method::HEAD;

        // --- answer it ---
        let resp = {
            let _in_flight = activity.begin();
            handle(req).await
        };
        let close = client_close || stop.is_set();
        let (parts, mut body) = resp.into_parts();
        out.clear();
        // Sized once, at the first answer: grown from nothing, a head and a 1 KiB body would
        // reallocate it eight times on every new connection.
        out.reserve(OUT_ROOM);
        let (framing, close) = encode_head(&parts, &body, head_request, close, &mut out);
        drop(parts);
        if write_body(io, &mut nagle, &mut out, &mut body, framing, !settings.tls).await.is_err() {
            return Served::Closed;
        }
        drop(body);
        if close {
            if settings.tls || !buf.is_empty() {
                // TLS ends with close_notify; plaintext with unread bytes ends with a FIN
                // before the close, so that the answer is not lost to a reset.
                let _ = io.shutdown().await;
            }
            return Served::Closed;
        }
    }
}

/// One attempt at a request head at the start of `buf`.
#[allow(clippy::large_enum_variant, reason = "returned and taken apart at once, never kept")]
enum Parsed {
    /// A request for this path, and whether the client asked to close after it.
    Request(Request<RequestBody>, bool),
    /// Not all of the head is here yet.
    Partial,
    /// Not for this path: `buf` is as it was.
    Fallback,
}

/// Request headers that take a request off this path: a body, an upgrade, `Expect`, or
/// `TE` (hyper may then send trailers). Compared as raw names, before any `HeaderName`.
const NOT_HERE: [&[u8]; 5] = [b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"te"];

/// Parse the head at the start of `buf`, consuming it only when the request is one for this
/// path. Header values are views of the head's bytes, not copies.
fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    // (name start, name end, value start, value end) of each header, as offsets into `buf`
    // (the read buffer is far below 4 GiB, so u32 holds them).
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, method, path, count, close) = {
        // httparse fills these; left uninitialized, they cost nothing per request.
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut raw) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
            _ => return Parsed::Fallback,
        };
        if req.version != Some(1) {
            return Parsed::Fallback;
        }
        let method = match req.method.map(|m| Method::from_bytes(m.as_bytes())) {
            Some(Ok(m)) if m != Method::CONNECT => m,
            _ => return Parsed::Fallback,
        };
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let path = req.path.unwrap_or_default();
        let path = (offset(path.as_bytes()), offset(path.as_bytes()) + path.len() as u32);
        let mut close = false;
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            let name = h.name.as_bytes();
            if NOT_HERE.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return Parsed::Fallback;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                if has_token(h.value, b"upgrade") {
                    return Parsed::Fallback;
                }
                close |= has_token(h.value, b"close");
            }
            let (n, v) = (offset(name), offset(h.value));
            *span = (n, n + name.len() as u32, v, v + h.value.len() as u32);
        }
        (len, method, path, req.headers.len(), close)
    };
    // Checked before the head is split off, so that a refusal leaves `buf` whole.
    if path.0 == path.1 {
        return Parsed::Fallback;
    }
    let head = buf.split_to(len).freeze();
    let at = |a: u32, b: u32| a as usize..b as usize;
    let built = || -> Option<(Uri, HeaderMap)> {
        let uri = Uri::from_maybe_shared(head.slice(at(path.0, path.1))).ok()?;
        let mut headers = HeaderMap::with_capacity(count);
        for &(ns, ne, vs, ve) in spans.iter().take(count) {
            let name = HeaderName::from_bytes(&head[at(ns, ne)]).ok()?;
            headers.append(name, HeaderValue::from_maybe_shared(head.slice(at(vs, ve))).ok()?);
        }
        Some((uri, headers))
    };
    let Some((uri, headers)) = built() else {
        // Put the head back in front of what followed it, for hyper to refuse.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Fallback;
    };
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(req, close)
}

/// How the body after a response head is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// None (HEAD, 204, 304): whatever the body holds is dropped.
    Nothing,
}

/// A response body that may carry its upstream's head as read (h1pool.rs `RawHead`), whose
/// header lines `encode_head` then copies instead of encoding a header map. Only the request
/// path's own body does (observe.rs); any other says no with the default.
pub(crate) trait PassedHead {
    fn passed_head(&self) -> Option<&RawHead> {
        None
    }
}

/// Encode a response head into `out` as RFC 9112 and hyper's server do: the status line,
/// the headers (the upstream's as read, then the map's), a `Content-Length` from the body's
/// exact size when the response has none (else chunked), `Date`, and `Connection: close`
/// when the connection closes after it. Answers the body's framing and whether to close.
fn encode_head<B: Body + PassedHead>(
    parts: &http::response::Parts,
    body: &B,
    head_request: bool,
    mut close: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let (status, headers) = (&parts.status, &parts.headers);
    if *status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // 1xx and 204 carry no length at all; HEAD and 304 may state the length of what a GET
    // would have had.
    let no_length = status.is_informational() || *status == StatusCode::NO_CONTENT;
    let bodiless = no_length || head_request || *status == StatusCode::NOT_MODIFIED;
    let mut length = None;
    let mut wrote_date = false;
    let mut says_close = false;
    if let Some(raw) = body.passed_head() {
        // Its framing lines (and `Connection`) are left out of the lines: the length it
        // stated is written here, as the map's would be.
        raw.write_lines(out);
        wrote_date = raw.date;
        if let (Some(n), false) = (raw.length, no_length) {
            write_length(out, n);
            length = Some(n);
        }
    }
    for (name, value) in headers {
        if *name == header::TRANSFER_ENCODING {
            // The framing is this hop's to choose.
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            if no_length || length.is_some() {
                continue;
            }
            match std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) => length = Some(n),
                None => continue,
            }
        } else if *name == header::DATE {
            wrote_date = true;
        } else if *name == header::CONNECTION && has_token(value.as_bytes(), b"close") {
            says_close = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (length, body.size_hint().exact()) {
        (None, Some(n)) if bodiless && !no_length && n > 0 => {
            // What hyper does too: HEAD answered locally states its GET body's length.
            write_length(out, n);
            Framing::Nothing
        }
        _ if bodiless => Framing::Nothing,
        (Some(n), _) => Framing::Length(n),
        (None, Some(n)) => {
            write_length(out, n);
            Framing::Length(n)
        }
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if says_close {
        close = true;
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Write the head in `out` and the body after it as `framing` says. Small chunks are
/// gathered behind the head and written when the body has nothing more ready (so a 1 KiB
/// answer leaves in one system call); the head is never held back waiting for the body.
/// With `vectored` (plaintext: the kernel gathers), the last small chunk of a sized body is
/// held, not copied, and written with `out` in one `writev`; TLS copies it (one record).
/// An error leaves the connection unusable (a body that fails or breaks its length).
async fn write_body<I, B>(
    io: &mut I,
    nagle: &mut Nagle,
    out: &mut Vec<u8>,
    body: &mut B,
    framing: Framing,
    vectored: bool,
) -> io::Result<()>
where
    I: AsyncWrite + NoDelay + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let broken = || io::Error::other("response body broke its framing");
    // A chunk to write after `out`, not yet copied behind it.
    let mut held = Bytes::new();
    loop {
        // The next frame, or None when the body has nothing ready and there is output to
        // send meanwhile.
        let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if out.is_empty() && held.is_empty() => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let data = match next {
            None => {
                write_all(io, nagle, out, &std::mem::take(&mut held)).await?;
                continue;
            }
            Some(None) => break,
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Empty data, or trailers (sent only when the request asked with `TE`,
                // and such requests are hyper's).
                _ => continue,
            },
            Some(Some(Err(_))) => return Err(io::Error::other("response body failed")),
        };
        if !held.is_empty() {
            out.extend_from_slice(&std::mem::take(&mut held));
        }
        match framing {
            Framing::Nothing => continue,
            Framing::Length(_) => {
                left = left.checked_sub(data.len() as u64).ok_or_else(broken)?;
                if vectored && data.len() <= COPY_LIMIT {
                    held = data;
                    continue;
                }
            }
            Framing::Chunked => {
                // Written in place (no String per chunk).
                let _ = write!(out, "{:x}\r\n", data.len());
            }
        }
        if data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
        } else {
            write_all(io, nagle, out, &data).await?;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if left != 0 {
        return Err(broken());
    }
    write_all(io, nagle, out, &held).await?;
    io.flush().await
}

/// Write `first` (emptied after) and then `second`, gathered into as few system calls as
/// the socket takes.
async fn write_all<I: AsyncWrite + NoDelay + Unpin>(
    io: &mut I,
    nagle: &mut Nagle,
    first: &mut Vec<u8>,
    second: &[u8],
) -> io::Result<()> {
    nagle.before_write(io);
    let (mut a, mut b) = (0, 0);
    while a < first.len() || b < second.len() {
        let n = if b == second.len() {
            io.write(&first[a..]).await?
        } else {
            io.write_vectored(&[io::IoSlice::new(&first[a..]), io::IoSlice::new(&second[b..])]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len() - a);
        a += from_first;
        b += n - from_first;
    }
    first.clear();
    Ok(())
}

/// A transport whose Nagle algorithm can be turned off (`TCP_NODELAY`).
pub(crate) trait NoDelay {
    fn set_nodelay(&self);
}

impl NoDelay for tokio::net::TcpStream {
    fn set_nodelay(&self) {
        let _ = tokio::net::TcpStream::set_nodelay(self, true);
    }
}

/// Nagle's algorithm on a connection, turned off only once it matters: it holds back a small
/// write while an earlier one is unacknowledged, so a connection's first write never waits,
/// and a connection that answers one request and closes (or hands over to hyper, which sets
/// it first) never pays the system call. nginx does the same for keep-alive connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nagle {
    /// Nothing written yet.
    Untouched,
    /// One write made.
    Wrote,
    /// `TCP_NODELAY` is set.
    Off,
}

impl Nagle {
    fn before_write<I: NoDelay>(&mut self, io: &I) {
        match self {
            Self::Untouched => *self = Self::Wrote,
            Self::Wrote => {
                io.set_nodelay();
                *self = Self::Off;
            }
            Self::Off => {}
        }
    }
}

/// The `Date` header's value, formatted once per second per thread.
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
            }
        }
        &self.text
    }
}

thread_local! {
    static DATE: std::cell::RefCell<CachedDate> =
        const { std::cell::RefCell::new(CachedDate { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" }) };
}

#[cfg(test)]
mod tests;
