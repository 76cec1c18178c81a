use super::*;
use crate::engine::{Engine, EngineOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

fn spec() -> LimitsSpec {
    LimitsSpec {
        max_request_headers: 100,
        max_request_header_bytes: 61440,
        header_read_timeout_ms: 30_000,
        idle_timeout_ms: 3_600_000,
        max_concurrent_streams: 100,
        max_request_body_bytes: None,
    }
}

#[test]
fn compile_refuses_zeros_and_a_head_smaller_than_hypers_buffer() {
    let ok = HttpLimits::compile(&spec(), "listeners.0.limits").unwrap();
    assert_eq!(ok.max_body, u64::MAX);
    assert_eq!(ok.header_read_timeout, Duration::from_secs(30));
    type Edit = fn(&mut LimitsSpec);
    let cases: [(Edit, &str); 5] = [
        (|s| s.max_request_headers = 0, "max_request_headers"),
        (|s| s.max_concurrent_streams = 0, "max_concurrent_streams"),
        (|s| s.max_request_header_bytes = 8191, "max_request_header_bytes"),
        (|s| s.header_read_timeout_ms = 0, "header_read_timeout_ms"),
        (|s| s.idle_timeout_ms = 0, "idle_timeout_ms"),
    ];
    for (edit, field) in cases {
        let mut s = spec();
        edit(&mut s);
        let e = HttpLimits::compile(&s, "listeners.0.limits").unwrap_err();
        assert_eq!(e.path, format!("listeners.0.limits.{field}"));
    }
    let mut s = spec();
    s.max_request_body_bytes = Some(0);
    assert_eq!(HttpLimits::compile(&s, "l").unwrap().max_body, 0, "0 is a valid limit: no body at all");
}

fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
    let mut b = Request::builder().version(version).uri(uri);
    for h in hosts {
        b = b.header(HOST, *h);
    }
    b.body(()).unwrap()
}

#[test]
fn host_rules_of_rfc_9112_and_9113() {
    assert!(check_host(&mut req(Version::HTTP_11, "/", &["a.example"])).is_ok());
    assert!(check_host(&mut req(Version::HTTP_10, "/", &[])).is_ok(), "HTTP/1.0 may omit Host");
    assert_eq!(check_host(&mut req(Version::HTTP_11, "/", &[])), Err("missing Host header\n"));
    assert_eq!(check_host(&mut req(Version::HTTP_11, "/", &["a", "b"])), Err("more than one Host header\n"));
    for bad in ["", "a b", "a/b", "user@a", "a?b", "a\\b"] {
        assert_eq!(
            check_host(&mut req(Version::HTTP_11, "/", &[bad])),
            Err("invalid Host header\n"),
            "{bad:?}"
        );
    }
    // Absolute form: the target's authority replaces Host, so router and upstream agree.
    let mut r = req(Version::HTTP_11, "http://a.example:8080/x", &["b.example"]);
    assert!(check_host(&mut r).is_ok());
    assert_eq!(r.headers()[HOST], "a.example:8080");
    // HTTP/2: :authority wins over a Host that differs, as in absolute form.
    let mut r = req(Version::HTTP_2, "http://a.example/", &["b.example"]);
    assert!(check_host(&mut r).is_ok());
    assert_eq!(r.headers()[HOST], "a.example");
    assert!(check_host(&mut req(Version::HTTP_2, "http://a.example/", &["A.example"])).is_ok());
    assert!(check_host(&mut req(Version::HTTP_2, "http://a.example/", &[])).is_ok());
    assert!(is_host(b"[::1]:8080") && is_host(b"xn--bcher-kva.example") && !is_host(b"a\tb"));
}

#[test]
fn status_of_finds_the_body_error_in_a_chain() {
    #[derive(Debug)]
    struct Outer(DownstreamBodyError);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
    assert_eq!(
        DownstreamBodyError::status_of(&Outer(DownstreamBodyError::TooLarge)),
        Some(StatusCode::PAYLOAD_TOO_LARGE)
    );
    let io = std::io::Error::other("x");
    assert_eq!(DownstreamBodyError::status_of(&io), None);
}

// === through a running engine ===

const ROUTE: &str = r#"{"name": "all", "match": {"host": null, "path": null, "path_prefix": "/",
    "path_regex": null, "methods": [], "headers": [], "query": []}, "to": [{"cluster": "c", "weight": 1}],
    "direct_response": null, "redirect": null, "rewrite": {"path_prefix": null, "host": null},
    "request_headers": {"set": [], "add": [], "remove": []},
    "response_headers": {"set": [], "add": [], "remove": []}}"#;

fn start(limits: &str) -> (Engine, SocketAddr) {
    let e = Engine::new(EngineOptions { workers: Some(2) }).unwrap();
    let up = e.start_echo("127.0.0.1:0", Some("up")).unwrap();
    let snap = format!(
        r#"{{"version": 1, "listeners": [{{"name": "in", "listen": "127.0.0.1:0", "routes": [{ROUTE}],
            "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000,
            "limits": {limits}}}],
          "clusters": [{{"name": "c", "endpoints": ["{up}"], "lb": "round_robin", "connect_timeout_ms": 500,
            "max_idle_per_endpoint": 8, "idle_timeout_ms": 1000, "protocol": "http1", "tls": null,
            "hash_on": null, "health_check": null, "panic_threshold_percent": 50}}]}}"#
    );
    e.apply_json(&snap).unwrap();
    let addr = e.listeners()[0].1;
    (e, addr)
}

/// Send `raw` on a new connection and read until the proxy closes it (or 5 s pass):
/// everything it answered.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(reply: &str) -> &str {
    reply.get(9..12).unwrap_or("")
}

#[test]
fn each_limit_answers_its_status_and_counts_it() {
    let (e, addr) = start(
        r#"{"max_request_headers": 10, "max_request_header_bytes": 8192, "header_read_timeout_ms": 30000,
            "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": 16}"#,
    );
    let ok = exchange(
        addr,
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 16\r\nconnection: close\r\n\r\n0123456789abcdef",
    );
    assert_eq!(status(&ok), "200", "{ok}");
    assert!(ok.ends_with("0123456789abcdef"));

    let many: String = (0..11).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = exchange(addr, format!("GET / HTTP/1.1\r\nhost: t\r\n{many}\r\n").as_bytes());
    assert_eq!(status(&r), "431", "{r}");
    let big = "a".repeat(9000);
    let r = exchange(addr, format!("GET / HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes());
    assert_eq!(status(&r), "431", "{r}");

    let r = exchange(addr, b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 17\r\n\r\n0123456789abcdefg");
    assert_eq!(status(&r), "413", "{r}");
    // Chunked: no length up front, so the limit is found while streaming. The upstream waits
    // before it answers: one that answers at once may send its head before the limit trips,
    // and then the proxy can only cut the response, not answer 413.
    let r = exchange(addr, b"POST /?delay=300ms HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n");
    assert_eq!(status(&r), "413", "{r}");
    let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status(&r), "400", "{r}");
    // A bad chunk size is the client's fault: 400, not the 502 of a failed upstream.
    let r = exchange(
        addr,
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n",
    );
    assert_eq!(status(&r), "400", "{r}");

    // hyper's own refusals are counted when the connection's task ends, which may be just
    // after the client sees EOF: poll, with a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (kind, n) in [("headers_too_large", 2), ("body_too_large", 2), ("malformed", 2)] {
        let line = format!("pymesh_downstream_protocol_errors_total{{listener=\"in\",kind=\"{kind}\"}} ");
        loop {
            let text = e.metrics_text();
            let got: u64 = text.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |v| v.parse().unwrap());
            if got >= n {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{kind}: {got} in {text}");
            // Poll interval of a bounded wait: the count moves when the connection's task ends.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn timeouts(header_read_ms: u64, idle_ms: u64) -> String {
    format!(
        r#"{{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": {header_read_ms},
            "idle_timeout_ms": {idle_ms}, "max_concurrent_streams": 100, "max_request_body_bytes": null}}"#
    )
}

/// How long `raw` on a new connection takes to be closed, and what was answered.
fn time_to_close(addr: SocketAddr, raw: &[u8]) -> (Duration, String) {
    let start = std::time::Instant::now();
    let r = exchange(addr, raw);
    (start.elapsed(), r)
}

#[test]
fn a_slow_header_sender_is_cut_at_the_header_read_timeout() {
    let (e, addr) = start(&timeouts(300, 60_000));
    let (took, r) = time_to_close(addr, b"GET / HTTP/1.1\r\nhost: t\r\n");
    assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    // Counted once the connection's task ends, which may be just after the client sees EOF.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !e.metrics_text().contains(r#"kind="header_timeout"} 1"#) {
        assert!(std::time::Instant::now() < deadline, "{}", e.metrics_text());
        // Poll interval of a bounded wait: counted when the connection's task ends.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let (_e, addr) = start(&timeouts(60_000, 300));
    let (took, r) = time_to_close(addr, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n");
    assert_eq!(status(&r), "200");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
}

fn metric(e: &Engine, line: &str) -> u64 {
    e.metrics_text().lines().find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

/// Request bytes are counted as the body streams, sized or chunked; a bodiless request adds
/// nothing. The counters land when the body ends, just before the answer: poll, bounded.
#[test]
fn request_body_bytes_count_into_the_route_sized_or_chunked() {
    let (e, addr) = start(
        r#"{"max_request_headers": 100, "max_request_header_bytes": 8192, "header_read_timeout_ms": 30000,
            "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}"#,
    );
    let sized =
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 16\r\nconnection: close\r\n\r\n0123456789abcdef";
    assert_eq!(status(&exchange(addr, sized)), "200");
    let chunked = b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n";
    assert_eq!(status(&exchange(addr, chunked)), "200");
    assert_eq!(status(&exchange(addr, b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")), "200");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = "pymesh_request_bytes_total{listener=\"in\",route=\"all\"}";
    while metric(&e, line) < 33 {
        assert!(std::time::Instant::now() < deadline, "{}", e.metrics_text());
        // Poll interval of a bounded wait: counted when the connection's task ends.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(metric(&e, line), 33);
    let code = "pymesh_responses_total{listener=\"in\",route=\"all\",cluster=\"c\",code=\"200\"}";
    assert_eq!(metric(&e, code), 3);
    while metric(&e, "pymesh_downstream_connections_closed_total{listener=\"in\"}") < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", e.metrics_text());
        // Poll interval of a bounded wait: counted when the connection's task ends.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(metric(&e, "pymesh_request_duration_seconds_count{listener=\"in\",route=\"all\"}"), 3);
    assert_eq!(metric(&e, "pymesh_requests_active{listener=\"in\"}"), 0);
}
