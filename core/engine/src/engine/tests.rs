//! End-to-end tests of the engine over real loopback sockets, with its own echo upstreams.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;

fn engine() -> Engine {
    Engine::new(EngineOptions { workers: Some(2) }).unwrap()
}

/// A minimal blocking HTTP/1.1 client on one keep-alive connection, so that the tests
/// exercise the engine and not a client library.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { stream, buf: Vec::new() }
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let head =
            format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n", body.len());
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        self.buf.drain(..head_end);
        let reply = Reply { status, headers, body: Vec::new() };
        let len: usize = reply.header("content-length").expect("tests use sized bodies").parse().unwrap();
        while self.buf.len() < len {
            self.fill();
        }
        let body = self.buf.drain(..len).collect();
        Reply { body, ..reply }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"{{"name": "{name}", "endpoints": [{}], "lb": "round_robin", "connect_timeout_ms": 500,
            "max_idle_per_endpoint": 16, "idle_timeout_ms": 30000, "hash_on": null,
            "health_check": null, "panic_threshold_percent": 50, "protocol": "http1", "tls": null}}"#,
        eps.join(",")
    )
}

fn snapshot(version: u64, listen: &str, routes: &str, clusters: &[String]) -> String {
    format!(
        r#"{{"version": {version}, "listeners": [{{"name": "in", "listen": "{listen}", "routes": [{routes}], "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}}}}],
            "clusters": [{}]}}"#,
        clusters.join(",")
    )
}

fn route(name: &str, prefix: &str, to: &[(&str, u32)]) -> String {
    let to: Vec<String> = to.iter().map(|(c, w)| format!(r#"{{"cluster": "{c}", "weight": {w}}}"#)).collect();
    format!(
        r#"{{"name": "{name}", "match": {{"host": null, "path": null, "path_prefix": "{prefix}",
            "path_regex": null, "methods": [], "headers": [], "query": []}}, "to": [{}],
            "direct_response": null, "redirect": null, "rewrite": {{"path_prefix": null, "host": null}},
            "request_headers": {{"set": [], "add": [], "remove": []}},
            "response_headers": {{"set": [], "add": [], "remove": []}}}}"#,
        to.join(",")
    )
}

fn listener_addr(e: &Engine) -> SocketAddr {
    e.listeners().into_iter().find(|(n, _)| n == "in").unwrap().1
}

#[test]
fn proxies_round_robin_over_a_clusters_endpoints() {
    let e = engine();
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    let b = e.start_echo("127.0.0.1:0", Some("b")).unwrap();
    let snap = snapshot(1, "127.0.0.1:0", &route("all", "/", &[("c", 1)]), &[cluster("c", &[a, b])]);
    assert_eq!(e.apply_json(&snap).unwrap(), 1);
    let mut client = Client::connect(listener_addr(&e));
    let mut seen = HashMap::new();
    for _ in 0..100 {
        let r = client.request("GET", "/", b"");
        assert_eq!(r.status, 200);
        *seen.entry(r.header("server-id").unwrap().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&50));
    assert_eq!(seen.get("b"), Some(&50));
    assert!(e.metrics_text().contains(
        "pymesh_requests_total{listener=\"in\",route=\"all\",cluster=\"c\",status_class=\"2xx\"} 100"
    ));
}

#[test]
fn bodies_statuses_and_local_answers() {
    let e = engine();
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let routes = [route("api", "/api", &[("a", 1)]), route("dead", "/dead", &[("d", 1)])].join(",");
    let snap = snapshot(1, "127.0.0.1:0", &routes, &[cluster("a", &[a]), cluster("d", &[dead])]);
    e.apply_json(&snap).unwrap();
    let mut client = Client::connect(listener_addr(&e));

    let posted = client.request("POST", "/api/echo", b"hello body");
    assert_eq!((posted.status, posted.body.as_slice()), (200, &b"hello body"[..]));
    let big = client.request("GET", "/api?size=300000", b"");
    assert_eq!(big.body.len(), 300_000);
    assert_eq!(client.request("GET", "/api?status=418", b"").status, 418);

    let none = client.request("GET", "/elsewhere", b"");
    assert_eq!(none.status, 404);
    assert_eq!(none.body, b"no route matched\n");
    assert_eq!(client.request("GET", "/dead", b"").status, 503);
    let metrics = e.metrics_text();
    assert!(metrics.contains("pymesh_upstream_connect_failures_total{cluster=\"d\"} 1"), "{metrics}");
    assert!(metrics
        .contains("pymesh_requests_total{listener=\"in\",route=\"\",cluster=\"\",status_class=\"4xx\"} 1"));
}

#[test]
fn a_refused_snapshot_changes_nothing() {
    let e = engine();
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    e.apply_json(&snapshot(1, "127.0.0.1:0", &route("all", "/", &[("a", 1)]), &[cluster("a", &[a])]))
        .unwrap();
    let addr = listener_addr(&e);

    let bad = snapshot(2, "127.0.0.1:0", &route("all", "/", &[("missing", 1)]), &[cluster("a", &[a])]);
    let err = e.apply_json(&bad).unwrap_err();
    assert_eq!(err.path, "listeners.0.routes.0.to.0.cluster");
    // Taken: the port our own listener holds, under a new listener name.
    let clash = format!(
        r#"{{"version": 2, "listeners": [{{"name": "in", "listen": "127.0.0.1:0", "routes": [], "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}}}},
             {{"name": "other", "listen": "{addr}", "routes": [], "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}}}}], "clusters": []}}"#
    );
    let err = e.apply_json(&clash).unwrap_err();
    assert_eq!((err.kind, err.path.as_str()), (crate::ErrorKind::Bind, "listeners.1.listen"));

    assert_eq!(e.version(), 1);
    assert_eq!(listener_addr(&e), addr);
    assert_eq!(Client::connect(addr).request("GET", "/", b"").status, 200);
    let metrics = e.metrics_text();
    assert!(metrics.contains("pymesh_config_apply_errors_total 2"));
    assert!(!metrics.contains("listener=\"other\""), "a refused listener left series:\n{metrics}");
}

#[test]
fn a_new_snapshot_reroutes_open_connections_and_keeps_the_socket() {
    let e = engine();
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    let b = e.start_echo("127.0.0.1:0", Some("b")).unwrap();
    let clusters = [cluster("a", &[a]), cluster("b", &[b])];
    e.apply_json(&snapshot(1, "127.0.0.1:0", &route("all", "/", &[("a", 1)]), &clusters)).unwrap();
    let addr = listener_addr(&e);
    let mut client = Client::connect(addr);
    assert_eq!(client.request("GET", "/", b"").header("server-id"), Some("a"));
    e.apply_json(&snapshot(2, "127.0.0.1:0", &route("all", "/", &[("b", 1)]), &clusters)).unwrap();
    assert_eq!(listener_addr(&e), addr);
    assert_eq!(client.request("GET", "/", b"").header("server-id"), Some("b"));
    assert_eq!(e.version(), 2);
}

#[test]
fn removing_a_listener_closes_its_port() {
    let e = engine();
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    e.apply_json(&snapshot(1, "127.0.0.1:0", &route("all", "/", &[("a", 1)]), &[cluster("a", &[a])]))
        .unwrap();
    let addr = listener_addr(&e);
    e.apply_json(r#"{"version": 2, "listeners": [], "clusters": []}"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the removed listener still accepts");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(e.listeners().is_empty());
}

#[test]
fn drain_lets_an_in_flight_request_finish() {
    let e = Arc::new(engine());
    let a = e.start_echo("127.0.0.1:0", Some("a")).unwrap();
    e.apply_json(&snapshot(1, "127.0.0.1:0", &route("all", "/", &[("a", 1)]), &[cluster("a", &[a])]))
        .unwrap();
    let addr = listener_addr(&e);
    let slow = std::thread::spawn(move || Client::connect(addr).request("GET", "/?delay=400ms", b"").status);
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.active_connections() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50)); // let the request reach the upstream
    assert!(e.drain(Duration::from_secs(5)));
    assert_eq!(slow.join().unwrap(), 200);
    assert!(TcpStream::connect(addr).is_err(), "a drained listener must not accept");
}
