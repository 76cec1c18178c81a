//! Access logs: one line per request, written off the request path.
//!
//! The request path only draws the sampling (at the request's start) and, when the request
//! ends, tries to put its `Arc<Record>` in the sink's bounded queue; a full queue drops the
//! record and counts it (`pymesh_access_log_dropped_total`), it never waits. One writer
//! thread per sink (a file, or standard output) formats the records and writes them in
//! batches, so a slow or blocked sink only ever fills its own queue.
//!
//! Sinks are shared by path: listeners naming the same file write through one writer, and a
//! re-applied config that still names a file keeps its writer (and its queue and order).
//! A sink nobody names any more is dropped with the last table that used it; its writer
//! then writes what is queued, flushes and ends.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::Version;
use serde::Serialize;

use super::{Flags, Record};
use crate::config::{AccessLogFormat, AccessLogSpec};
use crate::error::Error;
use crate::metrics::Counter;

/// Records one sink's queue holds before new ones are dropped.
pub(crate) const QUEUE_CAPACITY: usize = 8192;
/// Bytes formatted before they are written.
const BATCH_BYTES: usize = 64 * 1024;
/// How often the writer drains its queue: the longest a line waits before it is written.
/// At this pace the queue holds 8192 / 20 ms = 400k records/s before it drops any.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// One listener's access log.
#[derive(Debug)]
pub(crate) struct AccessLog {
    /// Requests logged per million, drawn at each request's start.
    per_million: u32,
    format: Arc<Format>,
    sink: Arc<Sink>,
    dropped: Arc<Counter>,
}

impl AccessLog {
    /// Compile a listener's `access_log` (`path` is its field path), opening its file or
    /// sharing the writer of a sink already open on it.
    pub(crate) fn compile(spec: &AccessLogSpec, path: &str, dropped: &Arc<Counter>) -> Result<Self, Error> {
        let pct = spec.sample_percent;
        if !pct.is_finite() || !(0.0..=100.0).contains(&pct) {
            return Err(Error::config(format!("{path}.sample_percent"), "must be between 0 and 100"));
        }
        let format = match (spec.format, &spec.template) {
            (AccessLogFormat::Json, None) => Format::Json,
            (AccessLogFormat::Json, Some(_)) => {
                return Err(Error::config(
                    format!("{path}.template"),
                    "only a text access log takes a template",
                ))
            }
            (AccessLogFormat::Text, Some(t)) => {
                Format::Text(parse_template(t).map_err(|m| Error::config(format!("{path}.template"), m))?)
            }
            (AccessLogFormat::Text, None) => {
                return Err(Error::config(format!("{path}.template"), "a text access log needs a template"))
            }
        };
        let file = match spec.path.as_deref() {
            Some("") => {
                return Err(Error::config(format!("{path}.path"), "give a file, or omit it for stdout"))
            }
            Some("-") | None => None,
            Some(p) => Some(p),
        };
        let sink = Sink::shared(file, dropped).map_err(|e| match file {
            Some(f) => {
                Error::config(format!("{path}.path"), format!("cannot append to {f}: {}", explain(&e)))
            }
            None => Error::internal(format!("cannot start the access log writer: {e}")),
        })?;
        // Rounded to millionths: 0.0001% is the finest share.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_million = (pct * 10_000.0).round() as u32;
        Ok(Self { per_million, format: Arc::new(format), sink, dropped: Arc::clone(dropped) })
    }

    /// Whether this request is logged (sampling, drawn once at the request's start).
    #[inline]
    pub(crate) fn sampled(&self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000.. => true,
            n => fastrand::u32(..1_000_000) < n,
        }
    }

    /// Queue `record` for writing, never waiting: a full queue drops it and counts it.
    pub(crate) fn log(&self, record: &Arc<Record>) {
        match self.sink.tx.try_send((Arc::clone(&self.format), Arc::clone(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// The writer this log queues to (tests: sharing across applies).
    #[cfg(test)]
    pub(crate) fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }
}

fn explain(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENXIO) {
        return "it is a FIFO no process has open for reading".to_owned();
    }
    e.to_string()
}

// === sinks ===

type Entry = (Arc<Format>, Arc<Record>);

/// A file (or stdout) and the thread that writes to it.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: SyncSender<Entry>,
}

/// The open sinks by path (`-`: stdout), so that one file has one writer however many
/// listeners and applies name it. Weak: a sink lives as long as a compiled table uses it.
static SINKS: Mutex<Option<HashMap<String, Weak<Sink>>>> = Mutex::new(None);

impl Sink {
    fn shared(file: Option<&str>, dropped: &Arc<Counter>) -> io::Result<Arc<Self>> {
        let key = file.unwrap_or("-");
        let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
        let sinks = sinks.get_or_insert_with(HashMap::new);
        sinks.retain(|_, s| s.strong_count() > 0);
        if let Some(sink) = sinks.get(key).and_then(Weak::upgrade) {
            return Ok(sink);
        }
        let out: Box<dyn Write + Send> = match file {
            None => Box::new(io::stdout()),
            Some(path) => Box::new(Patient(open_append(path)?)),
        };
        let sink = Arc::new(Self::start(out, QUEUE_CAPACITY, Arc::clone(dropped))?);
        sinks.insert(key.to_owned(), Arc::downgrade(&sink));
        Ok(sink)
    }

    /// A sink writing to `out` through a queue of `capacity` records.
    pub(crate) fn start(
        out: Box<dyn Write + Send>,
        capacity: usize,
        dropped: Arc<Counter>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("pymesh-accesslog".to_owned())
            .spawn(move || write_loop(&rx, out, &dropped))?;
        Ok(Self { tx })
    }
}

/// Open `path` for appending, creating it. Non-blocking, so that a FIFO nobody reads is
/// refused at apply (ENXIO) instead of hanging it; [`Patient`] then writes as if blocking.
fn open_append(path: &str) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).custom_flags(libc::O_NONBLOCK).open(path)
}

/// A file opened non-blocking, written as if blocking: only the writer thread waits.
struct Patient(File);

impl Write for Patient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.0.write(buf) {
                // A full pipe: nothing to wake us but time; this thread has nothing else to do.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The writer thread: every [`DRAIN_EVERY`], format all that is queued into a batch and
/// write it (in 64 KiB pieces); end when every sender is gone and the queue is drained.
///
/// The writer polls on a timer instead of blocking on the queue, and that is the point: a
/// writer blocked in `recv` is woken by every `try_send` (a futex call, then a context switch,
/// and one `write` per record at moderate rates), which measured at +42% proxy CPU per
/// request; a writer that sleeps costs the request path one uncontended queue push.
///
/// Batched by hand rather than with a `BufWriter`: when a write fails (a full disk, a FIFO
/// whose reader left) the whole batch is dropped and counted, which a `BufWriter` that keeps
/// an unknown part of its buffer cannot tell us.
fn write_loop(rx: &Receiver<Entry>, mut out: Box<dyn Write + Send>, dropped: &Counter) {
    let mut batch = Batch { buf: Vec::with_capacity(BATCH_BYTES + 1024), lines: 0, failing: false };
    loop {
        loop {
            match rx.try_recv() {
                Ok((format, record)) => {
                    format.write(&record, &mut batch.buf);
                    batch.lines += 1;
                    if batch.buf.len() >= BATCH_BYTES {
                        batch.write(&mut out, dropped);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    batch.write(&mut out, dropped);
                    return;
                }
            }
        }
        batch.write(&mut out, dropped);
        // Not synchronisation: the writer drains on a timer by design (see above: a writer
        // blocked in `recv` made every request pay a wake-up).
        std::thread::sleep(DRAIN_EVERY);
    }
}

struct Batch {
    buf: Vec<u8>,
    lines: u64,
    /// The last write failed (reported once until a write succeeds again).
    failing: bool,
}

impl Batch {
    fn write(&mut self, out: &mut Box<dyn Write + Send>, dropped: &Counter) {
        if self.buf.is_empty() {
            return;
        }
        match out.write_all(&self.buf).and_then(|()| out.flush()) {
            Ok(()) => self.failing = false,
            Err(e) => {
                dropped.add(self.lines);
                if !self.failing {
                    eprintln!("pymesh: access log write failed, dropping records until it works: {e}");
                }
                self.failing = true;
            }
        }
        self.buf.clear();
        self.lines = 0;
    }
}

// === formats ===

/// How a record becomes a line.
#[derive(Debug)]
pub(crate) enum Format {
    /// One JSON object per line, with every field.
    Json,
    /// A template: text, and fields in `{name}` placeholders (`{{` and `}}` for braces).
    Text(Vec<Piece>),
}

#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Field(Field),
}

/// A field of an access-log line; its name is its JSON key and its template placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Time,
    RequestId,
    Method,
    Authority,
    Path,
    Protocol,
    Status,
    Flags,
    RequestBytes,
    ResponseBytes,
    DurationMs,
    UpstreamFirstByteMs,
    Upstream,
    Attempts,
    Route,
    Cluster,
    Listener,
    TraceId,
    DownstreamPeer,
    UserAgent,
    GrpcStatus,
}

/// Every field by name, in the order of the JSON line.
pub const FIELDS: [&str; 21] = [
    "time",
    "request_id",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "flags",
    "request_bytes",
    "response_bytes",
    "duration_ms",
    "upstream_first_byte_ms",
    "upstream",
    "attempts",
    "route",
    "cluster",
    "listener",
    "trace_id",
    "downstream_peer",
    "user_agent",
    "grpc_status",
];

const FIELD_VALUES: [Field; 21] = [
    Field::Time,
    Field::RequestId,
    Field::Method,
    Field::Authority,
    Field::Path,
    Field::Protocol,
    Field::Status,
    Field::Flags,
    Field::RequestBytes,
    Field::ResponseBytes,
    Field::DurationMs,
    Field::UpstreamFirstByteMs,
    Field::Upstream,
    Field::Attempts,
    Field::Route,
    Field::Cluster,
    Field::Listener,
    Field::TraceId,
    Field::DownstreamPeer,
    Field::UserAgent,
    Field::GrpcStatus,
];

/// Parse a text template: `{field}` placeholders, `{{` and `}}` for literal braces.
pub(crate) fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!("unmatched '}}' at byte {i} of the template (write '}}}}' for a brace)"));
        }
        let Some(end) = tail.find('}') else {
            return Err("an unclosed '{' in the template (write '{{' for a brace)".to_owned());
        };
        let name = &tail[1..end];
        let Some(k) = FIELDS.iter().position(|f| *f == name) else {
            return Err(format!("unknown field {{{name}}}; known: {}", FIELDS.join(", ")));
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Field(FIELD_VALUES[k]));
        rest = &tail[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A value serialized through its `Display`, straight into the line (no string of its own).
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A JSON line: every field, null when unknown.
#[derive(Serialize)]
struct Line<'a> {
    time: Shown<humantime::Rfc3339Timestamp>,
    request_id: Option<&'a str>,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    flags: Shown<Flags>,
    request_bytes: Option<u64>,
    response_bytes: u64,
    duration_ms: f64,
    upstream_first_byte_ms: Option<f64>,
    upstream: Option<&'a str>,
    attempts: u32,
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    listener: &'a str,
    trace_id: Option<Shown<Hex<'a>>>,
    downstream_peer: Shown<SocketAddr>,
    user_agent: Option<&'a str>,
    grpc_status: Option<u32>,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A trace id shown as lowercase hex.
struct Hex<'a>(&'a [u8; 16]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 32];
        crate::observe::trace::context::write_hex(&mut buf, self.0);
        f.write_str(std::str::from_utf8(&buf).map_err(|_| std::fmt::Error)?)
    }
}

/// The record's trace id in hex, as `traceparent` carries it.
pub(crate) fn trace_id(r: &Record) -> Option<String> {
    r.trace.as_ref().map(|t| crate::observe::trace::context::hex(&t.trace_id))
}

impl Format {
    /// Append `r`'s line (and a newline) to `out`.
    pub(crate) fn write(&self, r: &Record, out: &mut Vec<u8>) {
        match self {
            Self::Json => {
                let d = &r.detail;
                let line = Line {
                    time: Shown(humantime::format_rfc3339_millis(d.time)),
                    request_id: non_empty(d.request_id()),
                    method: d.method.as_str(),
                    authority: d.authority(),
                    path: d.path(),
                    protocol: protocol(d.version),
                    status: r.status,
                    flags: Shown(r.flags),
                    request_bytes: d.request_bytes,
                    response_bytes: r.response_bytes,
                    duration_ms: millis(r.duration),
                    upstream_first_byte_ms: r.upstream_first_byte.map(millis),
                    upstream: r.endpoint.as_ref().map(http::uri::Authority::as_str),
                    attempts: r.attempts,
                    route: r.route.as_deref(),
                    cluster: r.cluster.as_deref(),
                    listener: &r.listener,
                    trace_id: r.trace.as_ref().map(|t| Shown(Hex(&t.trace_id))),
                    downstream_peer: Shown(d.peer),
                    user_agent: non_empty(d.user_agent()),
                    grpc_status: r.grpc_status,
                };
                // Serializing plain strings and numbers cannot fail.
                let _ = serde_json::to_writer(&mut *out, &line);
            }
            Self::Text(pieces) => {
                let mut s = String::with_capacity(256);
                for p in pieces {
                    match p {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Field(f) => text_field(*f, r, &mut s),
                    }
                }
                out.extend_from_slice(s.as_bytes());
            }
        }
        out.push(b'\n');
    }
}

/// A field's text: `-` when unknown or empty.
fn text_field(f: Field, r: &Record, s: &mut String) {
    let d = &r.detail;
    let text = |v: Option<&str>| v.filter(|v| !v.is_empty()).unwrap_or("-").to_owned();
    let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let ms = |v: Option<Duration>| v.map_or_else(|| "-".to_owned(), |t| format!("{:.3}", millis(t)));
    let value = match f {
        Field::Time => humantime::format_rfc3339_millis(d.time).to_string(),
        Field::RequestId => text(Some(d.request_id())),
        Field::Method => d.method.as_str().to_owned(),
        Field::Authority => text(Some(d.authority())),
        Field::Path => d.path().to_owned(),
        Field::Protocol => protocol(d.version).to_owned(),
        Field::Status => r.status.to_string(),
        Field::Flags => r.flags.text(),
        Field::RequestBytes => num(d.request_bytes),
        Field::ResponseBytes => r.response_bytes.to_string(),
        Field::DurationMs => ms(Some(r.duration)),
        Field::UpstreamFirstByteMs => ms(r.upstream_first_byte),
        Field::Upstream => text(r.endpoint.as_ref().map(http::uri::Authority::as_str)),
        Field::Attempts => r.attempts.to_string(),
        Field::Route => text(r.route.as_deref()),
        Field::Cluster => text(r.cluster.as_deref()),
        Field::Listener => r.listener.to_string(),
        Field::TraceId => text(trace_id(r).as_deref()),
        Field::DownstreamPeer => d.peer.to_string(),
        Field::UserAgent => text(Some(d.user_agent())),
        Field::GrpcStatus => num(r.grpc_status.map(u64::from)),
    };
    s.push_str(&value);
}

#[cfg(test)]
pub(crate) mod tests;
