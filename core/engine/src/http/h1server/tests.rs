use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

impl NoDelay for DuplexStream {
    fn set_nodelay(&self) {}
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

impl PassedHead for TestBody {}

const SETTINGS: Settings =
    Settings { max_head: 8192, header_read_timeout: Duration::from_millis(300), tls: false };

/// Answers with what it saw: `METHOD URI host=HOST n=HEADER-COUNT` in a sized body, or as
/// the path asks: `/chunked` (two chunks of unknown total), `/big` (20000 bytes in one
/// chunk), `/short` (a body that ends before its stated length), `/status/N`.
async fn answer(req: Request<RequestBody>) -> Response<TestBody> {
    let seen = format!(
        "{} {} host={} n={}",
        req.method(),
        req.uri(),
        req.headers().get(header::HOST).map_or("-", |h| h.to_str().unwrap()),
        req.headers().len()
    );
    assert!(req.body().is_end_stream(), "this path's requests have no body");
    let path = req.uri().path().to_owned();
    let mut resp = if path == "/chunked" {
        Response::new(trickle(&[b"hello, ", b"world"]))
    } else if path == "/big" {
        Response::new(Full::new(Bytes::from(vec![b'b'; 20_000])).map_err(|e| match e {}).boxed_unsync())
    } else if path == "/short" {
        let mut resp = Response::new(trickle(&[b"abc"]));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        resp
    } else {
        Response::new(Full::new(Bytes::from(seen)).map_err(|e| match e {}).boxed_unsync())
    };
    if let Some(code) = path.strip_prefix("/status/") {
        *resp.status_mut() = StatusCode::from_bytes(code.as_bytes()).unwrap();
    }
    resp
}

/// A body of these chunks, each ready only on the poll after the one that found it
/// missing, of no known total length.
struct Trickle {
    chunks: std::collections::VecDeque<Bytes>,
    ready: bool,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn trickle(chunks: &[&'static [u8]]) -> TestBody {
    Trickle { chunks: chunks.iter().map(|c| Bytes::from_static(c)).collect(), ready: false }.boxed_unsync()
}

/// Start the path on one end of a pipe; answers the other end and the path's task.
fn start(
    first: &[u8],
    settings: Settings,
) -> (DuplexStream, crate::listener::StopSender, tokio::task::JoinHandle<(Served, u64)>) {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (stop_tx, mut stop) = Stop::for_test();
    let buf = BytesMut::from(first);
    let task = tokio::spawn(async move {
        let activity = Activity::default();
        let errors = ProtocolErrors::default();
        let served = serve(&mut server, buf, &answer, settings, &mut stop, &activity, Some(&errors)).await;
        (served, errors.get(ProtocolErrorKind::HeaderTimeout))
    });
    (client, stop_tx, task)
}

/// Read what the server wrote until it closes.
async fn read_to_close(client: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// Read exactly the answers to `n` requests whose bodies are sized.
async fn read_answers(client: &mut DuplexStream, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < n {
        let mut chunk = [0u8; 4096];
        let k = client.read(&mut chunk).await.unwrap();
        assert!(k > 0, "closed after {} answers: {:?}", got.len(), String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..k]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end + 4].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
            buf.drain(..end + 4 + len);
            got.push((head, body));
        }
    }
    got
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    // The first request came with the sniffing read; two more arrive pipelined in one write.
    let (mut client, stop, task) = start(b"GET /a HTTP/1.1\r\nhost: one\r\n\r\n", SETTINGS);
    client
        .write_all(
            b"GET /b?x=1 HTTP/1.1\r\nHost: two\r\nx-a: 1\r\n\r\nDELETE /c HTTP/1.1\r\nhost: three\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_answers(&mut client, 3).await;
    let bodies: Vec<_> = answers.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["GET /a host=one n=1", "GET /b?x=1 host=two n=2", "DELETE /c host=three n=1"]);
    for (head, body) in &answers {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("\r\ndate: ") && head.ends_with(" GMT\r\n\r\n"), "{head}");
        assert!(!head.contains("connection:"), "{head}");
    }
    // Still open; stopping while it waits for a request ends it at once.
    stop.fire();
    assert!(matches!(task.await.unwrap().0, Served::Closed));
}

#[tokio::test]
async fn a_request_with_a_body_or_an_upgrade_goes_to_hyper_with_every_byte() {
    for next in [
        &b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"POST /p HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
        // Malformed: hyper refuses it with its 400, as it would have from the first byte.
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nhost: a\r\n\r\n",
    ] {
        let (mut client, _stop, task) = start(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n", SETTINGS);
        client.write_all(next).await.unwrap();
        let answers = read_answers(&mut client, 1).await;
        assert_eq!(answers[0].1, "GET /first host=a n=1");
        match task.await.unwrap().0 {
            Served::Fallback(rest) => assert_eq!(&rest[..], next, "{}", String::from_utf8_lossy(next)),
            Served::Closed => panic!("closed instead of handing over {}", String::from_utf8_lossy(next)),
        }
    }
}

#[tokio::test]
async fn a_head_larger_than_the_limit_goes_to_hyper_for_its_431() {
    let small = Settings { max_head: 64, ..SETTINGS };
    let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx-long: {}\r\n\r\n", "v".repeat(100));
    // Whole in the buffer, or still arriving: either way hyper gets all of it.
    let (_client, _stop, task) = start(big.as_bytes(), small);
    assert!(matches!(task.await.unwrap().0, Served::Fallback(rest) if rest == big.as_bytes()));
    let (mut client, _stop, task) = start(&big.as_bytes()[..40], small);
    client.write_all(&big.as_bytes()[40..]).await.unwrap();
    assert!(
        matches!(task.await.unwrap().0, Served::Fallback(rest) if rest.starts_with(&big.as_bytes()[..64]))
    );
}

#[tokio::test]
async fn connection_close_is_answered_then_the_connection_closes() {
    let (mut client, _stop, task) = start(
        b"GET /a HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\nGET /never HTTP/1.1\r\nhost: a\r\n\r\n",
        SETTINGS,
    );
    let all = read_to_close(&mut client).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nGET /a host=a n=2"), "one answer, then the close: {all}");
    assert!(matches!(task.await.unwrap().0, Served::Closed));
}

#[tokio::test]
async fn a_stop_during_a_request_lets_it_finish_with_connection_close() {
    let (mut client, stop, task) = start(b"", SETTINGS);
    stop.fire();
    // Told to stop with nothing in flight: closed before reading anything.
    assert!(read_to_close(&mut client).await.is_empty());
    assert!(matches!(task.await.unwrap().0, Served::Closed));

    let (mut client, stop, task) = start(b"GET /status/204 HTTP/1.1\r\nhost: a\r\n\r\n", SETTINGS);
    stop.fire();
    let all = read_to_close(&mut client).await;
    assert!(all.starts_with("HTTP/1.1 204 No Content\r\n"), "{all}");
    assert!(all.contains("\r\nconnection: close\r\n") && all.ends_with("\r\n\r\n"), "no body: {all}");
    assert!(!all.contains("content-length"), "204 states no length: {all}");
    assert!(matches!(task.await.unwrap().0, Served::Closed));
}

#[tokio::test]
async fn head_states_the_length_and_sends_no_body() {
    let (mut client, _stop, _task) =
        start(b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\n", SETTINGS);
    // The HEAD answer says the GET body's length (18) and carries none: the next bytes are
    // the second answer's head.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("GET /y host=a n=1") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let (first, second) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.contains("content-length: 18"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
}

#[tokio::test]
async fn unknown_lengths_are_chunked_and_large_chunks_pass_whole() {
    let (mut client, _stop, _task) =
        start(b"GET /chunked HTTP/1.1\r\nhost: a\r\n\r\nGET /big HTTP/1.1\r\nhost: a\r\n\r\n", SETTINGS);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let chunked_end = b"0\r\n\r\n";
    while !(got.windows(5).any(|w| w == chunked_end) && got.ends_with(&[b'b'; 100])) || got.len() < 20_100 {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
    assert!(rest.starts_with("7\r\nhello, \r\n5\r\nworld\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"), "{rest}");
    let (big_head, big) = rest.split_once("0\r\n\r\n").unwrap().1.split_once("\r\n\r\n").unwrap();
    assert!(big_head.contains("content-length: 20000"), "{big_head}");
    assert_eq!(big.len(), 20_000);
    assert!(big.bytes().all(|b| b == b'b'));
}

#[tokio::test]
async fn a_body_short_of_its_length_closes_the_connection() {
    let (mut client, _stop, task) =
        start(b"GET /short HTTP/1.1\r\nhost: a\r\n\r\nGET /next HTTP/1.1\r\nhost: a\r\n\r\n", SETTINGS);
    let all = read_to_close(&mut client).await;
    assert!(all.contains("content-length: 10\r\n") && all.ends_with("\r\n\r\nabc"), "{all}");
    assert!(matches!(task.await.unwrap().0, Served::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_head_left_incomplete_is_cut_at_the_header_read_timeout() {
    let (mut client, _stop, task) = start(b"GET / HTTP/1.1\r\nhost:", SETTINGS);
    let started = tokio::time::Instant::now();
    assert!(read_to_close(&mut client).await.is_empty());
    let (served, timeouts) = task.await.unwrap();
    assert!(matches!(served, Served::Closed));
    assert_eq!(timeouts, 1);
    assert_eq!(started.elapsed(), SETTINGS.header_read_timeout);
}

#[test]
fn the_date_is_an_http_date_of_this_second() {
    let mut cached = CachedDate { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" };
    let now = std::str::from_utf8(cached.now()).unwrap().to_owned();
    let parsed = httpdate::parse_http_date(&now).unwrap();
    let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
    assert!(age < Duration::from_secs(2), "{now}");
}

#[test]
fn nagle_is_turned_off_at_the_second_write_and_only_once() {
    struct Counting(std::cell::Cell<u32>);
    impl NoDelay for Counting {
        fn set_nodelay(&self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let io = Counting(std::cell::Cell::new(0));
    let mut nagle = Nagle::Untouched;
    nagle.before_write(&io);
    assert_eq!(io.0.get(), 0, "a connection's first write never waits for an ACK");
    for _ in 0..3 {
        nagle.before_write(&io);
    }
    assert_eq!((io.0.get(), nagle), (1, Nagle::Off));
}
