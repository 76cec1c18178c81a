//! The HTTP/1.1 client against scripted upstreams on loopback: framing, keep-alive, the idle
//! pool, and what it refuses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::ClusterProtocol;
use crate::http::client::{PoolSettings, Upstream, UpstreamResponseBody};

/// What the scripted upstream does with the next request it reads.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Write these bytes and keep the connection.
    Send(&'static [u8]),
    /// Write these bytes, then close.
    SendAndClose(&'static [u8]),
    /// Close without answering.
    Close,
}

/// An upstream that reads requests (head plus a `content-length` body) and answers them
/// from one script, in order, across its connections; it records every request it read.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn scripted(answers: Vec<Answer>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(VecDeque::from(answers)));
    let (acc, log) = (Arc::clone(&accepted), Arc::clone(&seen));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            acc.fetch_add(1, Ordering::SeqCst);
            let (script, log) = (Arc::clone(&script), Arc::clone(&log));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(req) = read_request(&mut sock, &mut buf).await else { return };
                    log.lock().unwrap().push(req);
                    let answer = script.lock().unwrap().pop_front().expect("a request beyond the script");
                    match answer {
                        Answer::Send(bytes) => sock.write_all(bytes).await.unwrap(),
                        Answer::SendAndClose(bytes) => {
                            sock.write_all(bytes).await.unwrap();
                            return;
                        }
                        Answer::Close => return,
                    }
                }
            });
        }
    });
    Scripted { addr, accepted, seen }
}

/// One request's head and body as text, read from `sock` (None at end of stream).
async fn read_request(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0usize);
            if buf.len() >= end + 4 + len {
                let all: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return Some(String::from_utf8_lossy(&all).to_string());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn upstream() -> Upstream {
    upstream_idle(Duration::from_secs(30))
}

fn upstream_idle(idle_timeout: Duration) -> Upstream {
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(2),
        max_idle_per_endpoint: 4,
        idle_timeout,
        protocol: ClusterProtocol::Http1,
        max_connections: None,
    };
    Upstream::new(settings, None, Arc::default())
}

fn request(
    addr: SocketAddr,
    method: Method,
    body: &'static [u8],
) -> Request<crate::http::client::OutgoingBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}/path?q=1"))
        .header("host", "svc.example")
        .body(Either::Right(Either::Left(Full::new(Bytes::from_static(body)))))
        .unwrap()
}

/// The whole body and the trailers of a response.
async fn collect(
    resp: http::Response<UpstreamResponseBody>,
) -> Result<(Bytes, Option<http::HeaderMap>), String> {
    let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_frames_by_length() {
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"),
        Answer::Send(b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nbye"),
    ])
    .await;
    let up = upstream();
    let a = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(a.headers()["x-a"], "1");
    assert_eq!(collect(a).await.unwrap().0, "hello");
    let b = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert_eq!(b.status(), StatusCode::CREATED);
    assert_eq!(collect(b).await.unwrap().0, "bye");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "the second request reused the connection");
}

#[tokio::test]
async fn the_request_head_carries_our_framing() {
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let up = upstream();
    let mut post = request(s.addr, Method::POST, b"payload");
    post.headers_mut().insert("transfer-encoding", "chunked".parse().unwrap());
    collect(up.request(post).await.unwrap()).await.unwrap();
    collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    let seen = s.seen.lock().unwrap().clone();
    let post = seen[0].to_ascii_lowercase();
    assert!(post.starts_with("post /path?q=1 http/1.1\r\n"), "{post}");
    assert!(post.contains("content-length: 7\r\n"), "{post}");
    assert!(!post.contains("transfer-encoding"), "{post}");
    assert!(post.contains("host: svc.example\r\n"), "{post}");
    assert!(post.ends_with("\r\n\r\npayload"), "{post}");
    let get = seen[1].to_ascii_lowercase();
    assert!(!get.contains("content-length"), "a GET without a body says no length: {get}");
}

#[tokio::test]
async fn chunked_bodies_are_decoded_with_their_trailers() {
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
    ])
    .await;
    let up = upstream();
    let (body, trailers) =
        collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    assert_eq!(body, "hello world");
    assert_eq!(trailers.expect("trailers")["x-sum"], "42");
    let (body, trailers) =
        collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    assert!(body.is_empty() && trailers.is_none());
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_length_runs_to_the_close_and_the_connection_is_not_reused() {
    let s = scripted(vec![
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let up = upstream();
    assert_eq!(
        collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap().0,
        "until the end"
    );
    assert_eq!(collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body_and_informational_ones_are_skipped() {
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let up = upstream();
    let head = up.request(request(s.addr, Method::HEAD, b"")).await.unwrap();
    assert_eq!(head.headers()["content-length"], "1000");
    assert!(collect(head).await.unwrap().0.is_empty());
    let empty = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert_eq!(empty.status(), StatusCode::NO_CONTENT);
    assert!(collect(empty).await.unwrap().0.is_empty());
    assert_eq!(collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "the framing left the connection clean each time");
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let s = scripted(vec![Answer::Send(answer)]).await;
        let up = upstream();
        let outcome = match up.request(request(s.addr, Method::GET, b"")).await {
            Err(e) => Err(e.to_string()),
            Ok(resp) => collect(resp).await.map(|_| ()),
        };
        assert!(outcome.is_err(), "accepted {:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let s = scripted(vec![Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")]).await;
    let up = upstream();
    let resp = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert!(collect(resp).await.is_err());
}

#[tokio::test]
async fn a_pooled_connection_closed_unanswered_is_replaced_for_a_get_but_never_for_a_post() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let s = scripted(vec![Answer::Send(ok), Answer::Close, Answer::Send(ok), Answer::Close]).await;
    let up = upstream();
    collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    // The pooled connection is closed on this GET's arrival; it is sent again on a new one.
    let again = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert_eq!(collect(again).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    // The same happens to a POST: it may have been acted on, so it fails instead.
    let post = up.request(request(s.addr, Method::POST, b"once")).await;
    assert!(post.is_err(), "a POST that reached the upstream was not replayed");
    let posts = s.seen.lock().unwrap().iter().filter(|r| r.starts_with("POST")).count();
    assert_eq!(posts, 1, "the upstream saw the POST exactly once");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    let s = scripted(vec![
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let up = upstream();
    collect(up.request(request(s.addr, Method::POST, b"x")).await.unwrap()).await.unwrap();
    // The upstream wrote the answer and closed in one step, so its FIN is already on the
    // pooled connection: the check at checkout reads the end of stream and drops it.
    let post = up.request(request(s.addr, Method::POST, b"y")).await.unwrap();
    assert_eq!(collect(post).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nstart"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let up = upstream();
    let first = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    drop(first);
    assert_eq!(collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_whole_body_dropped_unpolled_still_pools_its_connection() {
    // The server never polls a body that is already whole: dropped, it is not a cut one.
    let s = scripted(vec![
        Answer::Send(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let up = upstream();
    for status in [StatusCode::NO_CONTENT, StatusCode::OK] {
        let resp = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
        assert_eq!(resp.status(), status);
        assert!(resp.body().is_end_stream());
        drop(resp);
    }
    assert_eq!(collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap().0, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "a whole body's connection was closed");
}

#[tokio::test]
async fn a_connection_idle_past_the_pool_timeout_is_closed_not_reused() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let s = scripted(vec![Answer::Send(ok), Answer::Send(ok), Answer::Send(ok)]).await;
    let up = upstream_idle(Duration::from_millis(200));
    collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    // Within the timeout: reused.
    collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    // Not synchronisation: the test needs the idle timeout (200 ms) to pass.
    tokio::time::sleep(Duration::from_millis(400)).await;
    collect(up.request(request(s.addr, Method::GET, b"")).await.unwrap()).await.unwrap();
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2, "the expired connection was not reused");
}

#[tokio::test]
async fn connection_headers_are_read_not_kept_and_close_ends_the_connection() {
    let s = scripted(vec![
        // Keep-alive tokens only: neither header reaches the response.
        Answer::Send(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\ncontent-length: 1\r\n\r\na"),
        // The upstream keeps the socket open: only the header says not to reuse it.
        Answer::Send(b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\nb"),
        // Naming another header: kept, for strip_hop_by_hop to remove both.
        Answer::Send(b"HTTP/1.1 200 OK\r\nConnection: x-private\r\nx-private: 1\r\ncontent-length: 1\r\n\r\nc"),
    ])
    .await;
    let up = upstream();
    let a = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert!(a.headers().get("connection").is_none() && a.headers().get("keep-alive").is_none());
    assert_eq!(collect(a).await.unwrap().0, "a");
    let b = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert!(b.headers().get("connection").is_none());
    assert_eq!(collect(b).await.unwrap().0, "b");
    let c = up.request(request(s.addr, Method::GET, b"")).await.unwrap();
    assert_eq!(c.headers()["connection"], "x-private");
    assert_eq!(collect(c).await.unwrap().0, "c");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2, "Connection: close was not honoured");
}

/// The lines a passed head writes.
fn passed_lines(head: &[u8]) -> Option<(String, Option<u64>, bool)> {
    let mut buf = bytes::BytesMut::from(head);
    let mut raw = None;
    let parsed = super::parse_head(&mut buf, true, &mut raw).unwrap().unwrap();
    let raw = raw?;
    assert!(parsed.headers.is_empty(), "a passed head's map is empty");
    let mut out = Vec::new();
    raw.write_lines(&mut out);
    Some((String::from_utf8(out).unwrap(), raw.length, raw.date))
}

#[test]
fn a_plain_head_passes_as_read_less_this_hops_lines() {
    let (lines, length, date) = passed_lines(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nServer: up\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\n\
          Keep-Alive: timeout=5\r\nset-cookie: b=2\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(
        lines,
        "Server: up\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
    );
    assert_eq!((length, date), (Some(3), true));
    // Holes first and last, and a head with no field at all.
    let (lines, length, date) =
        passed_lines(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\nConnection: close\r\n\r\n")
            .unwrap();
    assert_eq!((lines.as_str(), length, date), ("x-a: 1\r\n", None, false));
    assert_eq!(passed_lines(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().0, "");
}

#[test]
fn a_head_that_is_not_plain_takes_the_map() {
    for head in [
        // A Connection that names a field, and fields only the map's rules handle.
        &b"HTTP/1.1 200 OK\r\nConnection: x-p\r\nx-p: 1\r\ncontent-length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTrailer: x-t\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ngrpc-status: 0\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\ncontent-length: 0\r\n\r\n",
        // Bare LF line ends are not passed on.
        b"HTTP/1.1 200 OK\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\n\n",
        // More lines to leave out than a passed head holds.
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: a\r\nkeep-alive: b\r\n\
          content-length: 0\r\ncontent-length: 0\r\n\r\n",
    ] {
        assert_eq!(passed_lines(head), None, "{:?}", String::from_utf8_lossy(head));
    }
    // Not asked to pass: the map, without this connection's own fields.
    let mut buf = bytes::BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nServer: up\r\ncontent-length: 0\r\n\r\n"[..],
    );
    let mut raw = None;
    let parsed = super::parse_head(&mut buf, false, &mut raw).unwrap().unwrap();
    assert!(raw.is_none());
    assert_eq!(parsed.headers.len(), 2);
    assert_eq!(parsed.headers["server"], "up");
}

#[test]
fn framing_is_read_and_refused_alike_whether_the_head_passes_or_not() {
    let refused = [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
    ];
    let read = [
        (&b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n"[..], "Length(3)", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", "Chunked(Size)", true),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", "Close", false),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n", "Close", false),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", "Length(1)", false),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", "Length(1)", false),
    ];
    for pass in [true, false] {
        for head in refused {
            let mut buf = bytes::BytesMut::from(head);
            let outcome = match super::parse_head(&mut buf, pass, &mut None) {
                Err(e) => Err(e.to_string()),
                Ok(h) => {
                    let h = h.unwrap();
                    super::framing(h.status, h.version, h.facts, false).map(|_| ()).map_err(|e| e.to_string())
                }
            };
            assert!(outcome.is_err(), "accepted {:?} (pass: {pass})", String::from_utf8_lossy(head));
        }
        for (head, framing, keep_alive) in read {
            let mut buf = bytes::BytesMut::from(head);
            let h = super::parse_head(&mut buf, pass, &mut None).unwrap().unwrap();
            let (f, k) = super::framing(h.status, h.version, h.facts, false).unwrap();
            assert_eq!(
                (format!("{f:?}"), k),
                (framing.to_owned(), keep_alive),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
