//! `pymesh echo`: a fast test upstream served by the core, for tests, demos and benches.
//!
//! `GET /` answers a small body; `?size=N` an N-byte body (streamed from one shared buffer,
//! so any size costs no memory); `?status=S` that status; `?delay=250ms` answers after the
//! delay; `POST`/`PUT` stream the request body back (`?sink` instead reads it all, keeps none,
//! and answers `received N`); `/healthz` is 200. Every response carries `server-id`. The
//! server takes HTTP/1.1 and HTTP/2 (h2c by prior knowledge too).
//!
//! To show what reached it (for tests of a proxy's rewrites), every response also carries
//! `echo-http-version` (`HTTP/1.1` or `HTTP/2`), `echo-method`, `echo-path` (the path, without the query), `echo-query` (when there is
//! one), `echo-host` (the `Host` header, when there is one) and `echo-authority` (the request
//! target's authority: HTTP/2's `:authority`, when there is one); and `?echo_headers=a,b`
//! adds `echo-header-a` and `echo-header-b` with the values of request headers `a` and `b`
//! (several values joined by `, `; a header the request lacks is left out).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::limits::{DownstreamBodyError, RequestBody};

use crate::http::limits::HttpLimits;

/// The longest `?delay=` honoured: bounded so that a typo cannot pin a connection forever.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Size of the shared buffer that sized bodies are sliced from.
/// The echo server's own limits: generous, since it is the proxy's test upstream.
pub(crate) const LIMITS: HttpLimits = HttpLimits {
    max_headers: 100,
    max_header_bytes: 64 * 1024,
    header_read_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(3600),
    max_concurrent_streams: 1024,
    max_body: u64::MAX,
};

const CHUNK: usize = 64 * 1024;

pub(crate) struct Echo {
    id: HeaderValue,
    hello: Bytes,
}

impl Echo {
    pub(crate) fn new(id: &str) -> Result<Self, String> {
        let id = HeaderValue::from_str(id).map_err(|_| format!("{id:?} cannot be a header value"))?;
        let hello = Bytes::from(format!("hello from {}\n", id.to_str().unwrap_or("echo")));
        Ok(Self { id, hello })
    }
}

#[derive(Debug, Default, PartialEq)]
struct Query {
    size: Option<u64>,
    status: Option<StatusCode>,
    delay: Option<Duration>,
    sink: bool,
    /// Request headers to report back as `echo-header-<name>` (comma-separated names).
    echo_headers: Option<String>,
}

fn parse_query(q: &str) -> Result<Query, String> {
    let mut out = Query::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "size" => out.size = Some(v.parse().map_err(|_| format!("size={v} is not a byte count"))?),
            "status" => {
                let code: u16 = v.parse().map_err(|_| format!("status={v} is not a number"))?;
                if !(200..=599).contains(&code) {
                    return Err(format!("status={v} must be 200..599"));
                }
                out.status = Some(StatusCode::from_u16(code).map_err(|e| e.to_string())?);
            }
            "delay" => {
                let d = parse_duration(v).ok_or_else(|| format!("delay={v} is not a duration like 250ms"))?;
                out.delay = Some(d.min(MAX_DELAY));
            }
            "echo_headers" => out.echo_headers = Some(v.to_owned()),
            "sink" => out.sink = true,
            _ => {}
        }
    }
    Ok(out)
}

/// `250ms`, `1s`, `1.5s`, or a bare number of milliseconds.
fn parse_duration(v: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1e-3)
    };
    let secs = num.parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64())))
}

pub(crate) async fn respond(echo: Arc<Echo>, req: Request<RequestBody>) -> Response<EchoBody> {
    let query = match parse_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(msg) => {
            return reply(&echo, StatusCode::BAD_REQUEST, EchoBody::Full(Some(Bytes::from(msg + "\n"))))
        }
    };
    if let Some(delay) = query.delay {
        tokio::time::sleep(delay).await;
    }
    let status = query.status.unwrap_or(StatusCode::OK);
    if req.uri().path() == "/healthz" {
        return reply(&echo, StatusCode::OK, EchoBody::Full(Some(Bytes::from_static(b"ok\n"))));
    }
    let seen = seen_headers(&req, query.echo_headers.as_deref());
    let no_body = req.method() == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut resp = if no_body {
        reply(&echo, status, EchoBody::Full(None))
    } else if query.sink {
        // Read the whole request body, keep none of it, and say how much came.
        let mut body = req.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return reply(&echo, StatusCode::BAD_REQUEST, EchoBody::Full(None)),
            }
        }
        reply(&echo, status, EchoBody::Full(Some(Bytes::from(format!("received {received}\n")))))
    } else if req.method() == Method::POST || req.method() == Method::PUT {
        let length = req.headers().get(CONTENT_LENGTH).cloned();
        let mut resp = reply(&echo, status, EchoBody::Echo(req.into_body()));
        if let Some(len) = length {
            resp.headers_mut().insert(CONTENT_LENGTH, len);
        }
        resp
    } else {
        let body = match query.size {
            Some(n) => EchoBody::Sized { remaining: n },
            None => EchoBody::Full(Some(echo.hello.clone())),
        };
        reply(&echo, status, body)
    };
    resp.headers_mut().extend(seen);
    resp
}

/// The `echo-*` headers that report what the request looked like on arrival.
fn seen_headers<B>(req: &Request<B>, echo_headers: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    let version = match req.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    out.insert("echo-http-version", HeaderValue::from_static(version));
    if let Ok(m) = HeaderValue::from_str(req.method().as_str()) {
        out.insert("echo-method", m);
    }
    if let Ok(p) = HeaderValue::from_str(req.uri().path()) {
        out.insert("echo-path", p);
    }
    if let Some(q) = req.uri().query().and_then(|q| HeaderValue::from_str(q).ok()) {
        out.insert("echo-query", q);
    }
    if let Some(h) = req.headers().get(HOST) {
        out.insert("echo-host", h.clone());
    }
    if let Some(a) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        out.insert("echo-authority", a);
    }
    for name in echo_headers.unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (Ok(asked), Ok(reported)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderName::from_bytes(format!("echo-header-{name}").as_bytes()),
        ) else {
            continue;
        };
        let values: Vec<&[u8]> = req.headers().get_all(&asked).iter().map(HeaderValue::as_bytes).collect();
        if let Ok(v) = HeaderValue::from_bytes(&values.join(&b", "[..])) {
            if !values.is_empty() {
                out.insert(reported, v);
            }
        }
    }
    out
}

fn reply(echo: &Echo, status: StatusCode, body: EchoBody) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("server-id", echo.id.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn chunk() -> &'static Bytes {
    static CHUNK_BYTES: OnceLock<Bytes> = OnceLock::new();
    CHUNK_BYTES.get_or_init(|| Bytes::from(vec![b'x'; CHUNK]))
}

/// The echo server's bodies: fixed, a sized stream of `x`s, or the request's own body.
pub(crate) enum EchoBody {
    Full(Option<Bytes>),
    Sized { remaining: u64 },
    Echo(RequestBody),
}

impl crate::http::h1server::PassedHead for EchoBody {}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamBodyError>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Sized { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(CHUNK);
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk().slice(..n)))))
            }
            Self::Echo(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Sized { remaining } => *remaining == 0,
            Self::Echo(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Sized { remaining } => SizeHint::with_exact(*remaining),
            Self::Echo(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_config_does() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("40"), Some(Duration::from_millis(40)));
        assert_eq!(parse_duration("1h"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("9999s"), Some(MAX_DELAY));
    }

    #[test]
    fn query_parses_known_keys_and_refuses_bad_values() {
        let q = parse_query("size=10&status=418&delay=5ms&other=1").unwrap();
        assert_eq!(q.size, Some(10));
        assert_eq!(q.status, Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(q.delay, Some(Duration::from_millis(5)));
        assert!(parse_query("status=99").is_err());
        assert!(parse_query("status=abc").is_err());
        assert!(parse_query("size=-1").is_err());
        assert_eq!(parse_query("").unwrap(), Query::default());
        assert_eq!(parse_query("echo_headers=a,b").unwrap().echo_headers.as_deref(), Some("a,b"));
    }

    #[test]
    fn seen_headers_report_the_request_as_it_arrived() {
        let req = Request::post("/p/q?echo_headers=x-a,%20x-missing,bad%20name")
            .header(HOST, "h.example:81")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let seen = seen_headers(&req, Some("x-a, x-missing,bad name"));
        assert_eq!(seen["echo-method"], "POST");
        assert_eq!(seen["echo-path"], "/p/q");
        assert_eq!(seen["echo-query"], "echo_headers=x-a,%20x-missing,bad%20name");
        assert_eq!(seen["echo-host"], "h.example:81");
        assert_eq!(seen["echo-header-x-a"], "1, 2");
        assert_eq!(seen["echo-http-version"], "HTTP/1.1");
        assert_eq!(seen.len(), 6, "{seen:?}");
    }
}
