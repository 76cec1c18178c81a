//! `pymesh bench`: the bundled load generator.
//!
//! Closed loop (`connections` each send their next request when the last one answers) or
//! open loop (`rate`: requests are due on a fixed schedule, and latency is measured from
//! when each was due, so a stall counts against every request it delayed: the
//! coordinated-omission correction of wrk2). Each thread runs its own single-threaded
//! runtime over its share of the connections and records into its own HdrHistogram; the
//! histograms are merged at the end.

mod conn;
mod h2;
mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::Error;
use conn::{Conn, Exchange, Failure};
pub use transport::BenchTls;
use transport::Transport;

/// What to run. Defaults match `pymesh bench`'s documented ones.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    /// Measured time (after warm-up). With `requests` too, whichever ends first.
    pub duration: Option<Duration>,
    /// Total requests to complete (warm-up requests not included).
    pub requests: Option<u64>,
    /// Open loop: requests per second over all connections. `None`: closed loop.
    pub rate: Option<f64>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    pub warmup: Duration,
    /// Print a live progress line to stderr once a second.
    pub progress: bool,
    /// Speak HTTP/2 (h2c by prior knowledge over `http://`, ALPN `h2` over `https://`).
    pub http2: bool,
    /// HTTP/2: concurrent streams per connection.
    pub streams: usize,
    /// TLS options, used with `https://` URLs.
    pub tls: BenchTls,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            connections: 10,
            threads: 1,
            duration: None,
            requests: None,
            rate: None,
            method: "GET".into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(10),
            warmup: Duration::ZERO,
            progress: false,
            http2: false,
            streams: 1,
            tls: BenchTls::default(),
        }
    }
}

/// Errors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BenchErrors {
    pub connect: u64,
    pub timeout: u64,
    pub reset: u64,
    pub protocol: u64,
}

impl BenchErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.protocol
    }

    fn count(&mut self, f: Failure) {
        match f {
            Failure::Connect => self.connect += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Reset => self.reset += 1,
            Failure::Protocol => self.protocol += 1,
        }
    }

    fn merge(&mut self, o: &Self) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.protocol += o.protocol;
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchResult {
    /// Requests that got a response (any status) within the measured window.
    pub requests: u64,
    pub errors: BenchErrors,
    pub duration_s: f64,
    pub rps: f64,
    /// Response bytes read (heads and bodies).
    pub bytes: u64,
    pub status: BTreeMap<u16, u64>,
    pub latency_us: Latency,
}

/// One thread's tallies.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    bytes: u64,
    errors: BenchErrors,
    /// Counts by status code, indexed by code (an array: no map lookup per request).
    status: Box<[u64; 1000]>,
}

impl Tally {
    fn new() -> Self {
        // 1 µs to 1 hour at 3 significant digits, as wrk2 and h2load keep.
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid");
        Self { hist, requests: 0, bytes: 0, errors: BenchErrors::default(), status: Box::new([0; 1000]) }
    }

    fn merge(&mut self, o: &Self) {
        let _ = self.hist.add(&o.hist);
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors.merge(&o.errors);
        for (mine, theirs) in self.status.iter_mut().zip(o.status.iter()) {
            *mine += theirs;
        }
    }
}

/// State every connection reads: the clock, the request, and the stop conditions.
struct Plan {
    transport: Transport,
    /// The HTTP/1.1 request, encoded once.
    request: Vec<u8>,
    /// The HTTP/2 request's parts, when speaking HTTP/2.
    h2_request: Option<h2::H2Request>,
    streams: usize,
    head_only: bool,
    timeout: Duration,
    /// When the run started: the open loop's schedule counts from here.
    start: Instant,
    /// When measurement starts (the end of warm-up).
    measure_from: Instant,
    /// When everything stops.
    stop_at: Option<Instant>,
    /// Requests still to be started in the measured window, when `-n` was given.
    remaining: Option<AtomicU64>,
    stopped: AtomicBool,
    /// Per-connection interval between due times, in the open loop.
    interval: Option<Duration>,
    done: AtomicU64,
}

impl Plan {
    fn should_stop(&self, now: Instant) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.stop_at.is_some_and(|t| now >= t)
    }

    /// Claim a request slot of `-n` (only counted once measurement has started).
    fn claim(&self, now: Instant) -> bool {
        match &self.remaining {
            Some(left) if now >= self.measure_from => {
                let ok =
                    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
                if !ok {
                    self.stopped.store(true, Ordering::Relaxed);
                }
                ok
            }
            _ => true,
        }
    }
}

/// Parse `http(s)://host:port/path?query` into the URI and the addresses to connect to (in
/// resolver order; a connection tries each until one answers).
fn target(url: &str) -> Result<(http::Uri, Vec<SocketAddr>), Error> {
    let uri: http::Uri = url.parse().map_err(|e| Error::config("url", format!("{url:?}: {e}")))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(Error::config("url", format!("{url:?} needs an http:// or https:// scheme"))),
    };
    let authority = uri.authority().ok_or_else(|| Error::config("url", format!("{url:?} has no host")))?;
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| Error::config("url", format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::config("url", format!("{host} resolves to no address")));
    }
    Ok((uri, addrs))
}

fn encode_request(uri: &http::Uri, opts: &BenchOptions) -> Result<Vec<u8>, Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    if opts.method.is_empty() || !opts.method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(Error::config("method", format!("{:?} is not an HTTP method", opts.method)));
    }
    let mut out = format!("{} {path} HTTP/1.1\r\n", opts.method);
    let has = |name: &str| opts.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        out.push_str(&format!("host: {authority}\r\n"));
    }
    for (k, v) in &opts.headers {
        let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if k.is_empty() || bad(k) || bad(v) || k.contains(':') {
            return Err(Error::config("headers", format!("{k:?}: {v:?} is not a header")));
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !opts.body.is_empty() || matches!(opts.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.push_str(&format!("content-length: {}\r\n", opts.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&opts.body);
    Ok(bytes)
}

fn h2_request(uri: &http::Uri, opts: &BenchOptions) -> Result<h2::H2Request, Error> {
    let method: http::Method = opts
        .method
        .parse()
        .map_err(|_| Error::config("method", format!("{:?} is not an HTTP method", opts.method)))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &opts.headers {
        if k.eq_ignore_ascii_case("host") {
            continue; // HTTP/2 carries the host as :authority, from the URL
        }
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| Error::config("headers", format!("{k:?} is not a header name")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| Error::config("headers", format!("{v:?} is not a header value")))?;
        headers.append(name, value);
    }
    Ok(h2::H2Request { method, uri: uri.clone(), headers, body: bytes::Bytes::from(opts.body.clone()) })
}

/// Run a benchmark to completion on threads of its own. Blocks the caller.
pub fn run(opts: &BenchOptions) -> Result<BenchResult, Error> {
    if opts.connections == 0 || opts.threads == 0 {
        return Err(Error::config("connections", "connections and threads must be at least 1"));
    }
    if opts.duration.is_none() && opts.requests.is_none() {
        return Err(Error::config("duration", "give a duration, a request count, or both"));
    }
    if let Some(rate) = opts.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::config("rate", "must be a positive number of requests per second"));
        }
    }
    if opts.streams == 0 || (opts.streams > 1 && !opts.http2) {
        return Err(Error::config(
            "streams",
            "streams per connection: at least 1, and above 1 only with HTTP/2",
        ));
    }
    let (uri, addrs) = target(&opts.url)?;
    let request = encode_request(&uri, opts)?;
    let transport = if uri.scheme_str() == Some("https") {
        Transport::tls(addrs, uri.host().unwrap_or_default().trim_matches(['[', ']']), &opts.tls, opts.http2)?
    } else {
        Transport::plain(addrs)
    };
    let h2_request = opts.http2.then(|| h2_request(&uri, opts)).transpose()?;
    let slots = opts.connections * opts.streams;
    let threads = opts.threads.min(opts.connections);
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let plan = Arc::new(Plan {
        transport,
        request,
        h2_request,
        streams: opts.streams,
        head_only: opts.method == "HEAD",
        timeout: opts.timeout,
        start,
        measure_from,
        stop_at: opts.duration.map(|d| measure_from + d),
        remaining: opts.requests.map(AtomicU64::new),
        stopped: AtomicBool::new(false),
        interval: opts.rate.map(|r| Duration::from_secs_f64(slots as f64 / r)),
        done: AtomicU64::new(0),
    });
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..threads).map(|_| Arc::new(Mutex::new(Tally::new()))).collect();

    let mut handles = Vec::with_capacity(threads);
    for (t, tally) in tallies.iter().enumerate() {
        // Spread connections over threads as evenly as they divide.
        let conns = opts.connections / threads + usize::from(t < opts.connections % threads);
        let first =
            (0..t).map(|i| opts.connections / threads + usize::from(i < opts.connections % threads)).sum();
        let (plan, tally) = (Arc::clone(&plan), Arc::clone(tally));
        let total = slots;
        let handle = std::thread::Builder::new()
            .name(format!("pymesh-bench-{t}"))
            .spawn(move || run_thread(&plan, &tally, first, conns, total))
            .map_err(|e| Error::internal(format!("cannot start a bench thread: {e}")))?;
        handles.push(handle);
    }

    if opts.progress {
        report_progress(&plan, &tallies, &handles);
    }
    for h in handles {
        h.join().map_err(|_| Error::internal("a bench thread panicked"))??;
    }
    let end = Instant::now();
    let measured = end.saturating_duration_since(measure_from);
    let duration = match opts.duration {
        Some(d) if plan.remaining.as_ref().is_none_or(|r| r.load(Ordering::Relaxed) > 0) => d.min(measured),
        _ => measured,
    };

    let mut total = Tally::new();
    for t in &tallies {
        total.merge(&t.lock().unwrap_or_else(PoisonError::into_inner));
    }
    let h = &total.hist;
    let secs = duration.as_secs_f64().max(1e-9);
    let latency_us = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    };
    Ok(BenchResult {
        requests: total.requests,
        errors: total.errors,
        duration_s: secs,
        rps: total.requests as f64 / secs,
        bytes: total.bytes,
        status: (0u16..)
            .zip(total.status.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code, *n))
            .collect::<BTreeMap<u16, u64>>(),
        latency_us,
    })
}

fn report_progress(
    plan: &Plan,
    tallies: &[Arc<Mutex<Tally>>],
    handles: &[std::thread::JoinHandle<Result<(), Error>>],
) {
    use std::io::Write as _;
    let start = Instant::now();
    let mut last = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        // The progress line's tick, not synchronisation: it reads counters, never waits on them.
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now.duration_since(last.0) < Duration::from_secs(1) {
            continue;
        }
        let done = plan.done.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let mut merged = Tally::new();
        for t in tallies {
            merged.merge(&t.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let p99 = if merged.hist.is_empty() { 0 } else { merged.hist.value_at_quantile(0.99) };
        let phase = if now < plan.measure_from { " (warm-up)" } else { "" };
        let _ = write!(
            std::io::stderr(),
            "\r{:>6.1}s  {:>10.0} req/s  p99 {:>8.3} ms  errors {}{phase}   ",
            now.duration_since(start).as_secs_f64(),
            rate,
            p99 as f64 / 1000.0,
            merged.errors.total(),
        );
        last = (now, done);
    }
    let _ = writeln!(std::io::stderr());
}

fn run_thread(
    plan: &Arc<Plan>,
    tally: &Arc<Mutex<Tally>>,
    first: usize,
    conns: usize,
    total: usize,
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start a bench runtime: {e}")))?;
    rt.block_on(async {
        let tasks = tokio::task::LocalSet::new();
        for i in 0..conns {
            // HTTP/2: the connection's streams share it; HTTP/1.1: one loop per connection.
            let shared: h2::Shared = std::rc::Rc::default();
            for s in 0..plan.streams {
                let client = if plan.h2_request.is_some() {
                    Client::H2(std::rc::Rc::clone(&shared))
                } else {
                    Client::H1(None)
                };
                let slot = (first + i) * plan.streams + s;
                let (plan, tally) = (Arc::clone(plan), Arc::clone(tally));
                tasks.spawn_local(async move { drive(&plan, &tally, client, slot, total).await });
            }
        }
        tasks.await;
    });
    Ok(())
}

/// What a request loop sends on.
enum Client {
    /// Its own HTTP/1.1 connection (opened on first use and after a failure).
    H1(Option<Conn>),
    /// The HTTP/2 connection it shares with its connection's other streams.
    H2(h2::Shared),
}

impl Client {
    async fn exchange(&mut self, plan: &Plan) -> Result<Exchange, Failure> {
        match self {
            Client::H1(conn) => {
                if conn.is_none() {
                    *conn = Some(Conn::connect(&plan.transport).await?);
                }
                conn.as_mut().expect("just connected").exchange(&plan.request, plan.head_only).await
            }
            Client::H2(shared) => {
                let req = plan.h2_request.as_ref().expect("HTTP/2 plans carry the request");
                h2::exchange(shared, &plan.transport, req).await
            }
        }
    }

    /// Drop an HTTP/1.1 connection that cannot carry another request.
    fn discard(&mut self) {
        if let Client::H1(conn) = self {
            *conn = None;
        }
    }
}

/// One request loop (a connection, or an HTTP/2 stream slot): send, read, record, until the
/// plan says stop.
async fn drive(plan: &Plan, tally: &Mutex<Tally>, mut client: Client, index: usize, total: usize) {
    // Open loop: this connection's due times are staggered so the load is smooth.
    let mut due = plan.interval.map(|iv| plan.start + iv.mul_f64(index as f64 / total as f64));
    // One timer per loop, re-armed lazily: it fires between `timeout` and 1.25 x `timeout`
    // after a request was sent, and is moved only when it would fire before `timeout`, so a
    // fast target re-arms it once per quarter timeout rather than once per request (as wrk
    // checks timeouts on a periodic timer). A response after `timeout` counts as a timeout.
    let slack = plan.timeout / 4;
    let mut armed_for = Instant::now() + plan.timeout + slack;
    let deadline = tokio::time::sleep_until(armed_for.into());
    tokio::pin!(deadline);
    loop {
        if plan.should_stop(Instant::now()) {
            return;
        }
        let intended = match (due, plan.interval) {
            (Some(d), Some(iv)) => {
                if plan.stop_at.is_some_and(|stop| d >= stop) {
                    return;
                }
                due = Some(d + iv);
                if Instant::now() < d {
                    // On schedule: wait for the due time. The timer wakes up to a millisecond
                    // late (tokio's resolution); that lateness is the generator's, not the
                    // target's, so such a request counts from when it is sent.
                    tokio::time::sleep_until(d.into()).await;
                    None
                } else {
                    // Behind schedule because this connection was still waiting for the
                    // target: the stall counts against this request, from its due time
                    // (coordinated-omission correction).
                    Some(d)
                }
            }
            _ => None,
        };
        let sent = Instant::now();
        if !plan.claim(sent) {
            return;
        }
        // Latency counts from when the request was due (when the target made it late) or sent.
        let from = intended.unwrap_or(sent);
        if armed_for < sent + plan.timeout {
            armed_for = sent + plan.timeout + slack;
            deadline.as_mut().reset(armed_for.into());
        }
        let outcome = tokio::select! {
            biased;
            outcome = client.exchange(plan) => outcome,
            () = &mut deadline => Err(Failure::Timeout),
        };
        let outcome =
            if outcome.is_ok() && sent.elapsed() > plan.timeout { Err(Failure::Timeout) } else { outcome };
        let finished = Instant::now();
        plan.done.fetch_add(1, Ordering::Relaxed);
        let measured = finished >= plan.measure_from && plan.stop_at.is_none_or(|s| finished <= s);
        let refused = {
            let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
            match outcome {
                Ok(Exchange { status, bytes, reusable }) => {
                    if measured {
                        let us = u64::try_from(finished.duration_since(from).as_micros()).unwrap_or(u64::MAX);
                        t.hist.saturating_record(us.max(1));
                        t.requests += 1;
                        t.bytes += bytes;
                        t.status[usize::from(status).min(999)] += 1;
                    }
                    if !reusable {
                        client.discard();
                    }
                    false
                }
                Err(failure) => {
                    if measured {
                        t.errors.count(failure);
                    }
                    client.discard();
                    failure == Failure::Connect
                }
            }
        };
        if refused {
            // Do not spin on a refused port: one retry per millisecond per connection.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests;
