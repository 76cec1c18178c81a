use super::*;
use crate::{Engine, EngineOptions};

fn echo() -> (Engine, SocketAddr) {
    let e = Engine::new(EngineOptions { workers: Some(1) }).unwrap();
    let addr = e.start_echo("127.0.0.1:0", Some("bench")).unwrap();
    (e, addr)
}

#[test]
fn closed_loop_counts_every_request_by_status() {
    let (_e, addr) = echo();
    let opts = BenchOptions {
        url: format!("http://{addr}/?size=100"),
        connections: 4,
        requests: Some(500),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert_eq!(r.requests, 500);
    assert_eq!(r.status.get(&200), Some(&500));
    assert_eq!(r.errors.total(), 0);
    assert!(r.bytes > 500 * 100);
    assert!(
        r.latency_us.p50 > 0 && r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max
    );
}

#[test]
fn posts_bodies_and_reads_chunked_and_sized_answers() {
    let (_e, addr) = echo();
    let opts = BenchOptions {
        url: format!("http://{addr}/"),
        connections: 2,
        requests: Some(50),
        method: "POST".into(),
        body: b"payload".to_vec(),
        headers: vec![("x-test".into(), "1".into())],
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert_eq!((r.requests, r.errors.total()), (50, 0));
    let big = BenchOptions {
        url: format!("http://{addr}/?size=1000000"),
        requests: Some(5),
        ..BenchOptions::default()
    };
    let r = run(&big).unwrap();
    assert_eq!(r.requests, 5);
    assert!(r.bytes >= 5_000_000);
}

#[test]
fn open_loop_holds_the_rate_and_charges_stalls() {
    let (_e, addr) = echo();
    // 200 req/s for 1 s over 4 connections, against answers that take 30 ms: the loop must
    // still start ~200 requests, and latency must include the server's delay.
    let opts = BenchOptions {
        url: format!("http://{addr}/?delay=30ms"),
        connections: 8,
        duration: Some(Duration::from_secs(1)),
        rate: Some(200.0),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert!((150..=210).contains(&r.requests), "{} requests", r.requests);
    assert!(r.latency_us.p50 >= 30_000, "p50 {}", r.latency_us.p50);
}

#[test]
fn refused_connections_are_counted_as_connect_errors() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let opts = BenchOptions {
        url: format!("http://{dead}/"),
        connections: 1,
        duration: Some(Duration::from_millis(200)),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert_eq!(r.requests, 0);
    assert!(r.errors.connect > 10, "{:?}", r.errors);
}

#[test]
fn bad_options_are_refused_with_the_option_named() {
    let bad = |o: BenchOptions| run(&o).unwrap_err().path;
    let base =
        BenchOptions { url: "http://127.0.0.1:1/".into(), requests: Some(1), ..BenchOptions::default() };
    assert_eq!(bad(BenchOptions { url: "ftp://x/".into(), ..base.clone() }), "url");
    assert_eq!(bad(BenchOptions { streams: 4, ..base.clone() }), "streams");
    assert_eq!(bad(BenchOptions { connections: 0, ..base.clone() }), "connections");
    assert_eq!(bad(BenchOptions { requests: None, ..base.clone() }), "duration");
    assert_eq!(bad(BenchOptions { rate: Some(0.0), ..base.clone() }), "rate");
    assert_eq!(bad(BenchOptions { method: "get me".into(), ..base.clone() }), "method");
    assert_eq!(bad(BenchOptions { headers: vec![("a".into(), "b\r\nc".into())], ..base }), "headers");
}

#[test]
fn http2_multiplexes_streams_over_few_connections() {
    let (_e, addr) = echo();
    let opts = BenchOptions {
        url: format!("http://{addr}/?size=2000"),
        connections: 2,
        streams: 8,
        http2: true,
        requests: Some(800),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert_eq!((r.requests, r.errors.total()), (800, 0), "{:?}", r.errors);
    assert_eq!(r.status.get(&200), Some(&800));
    assert_eq!(r.bytes, 800 * 2000);
    let post = BenchOptions { method: "POST".into(), body: vec![b'p'; 300_000], requests: Some(20), ..opts };
    let r = run(&post).unwrap();
    assert_eq!((r.requests, r.bytes), (20, 20 * 300_000));
}

/// A proxy listener with TLS in front of an echo upstream; answers the engine, the listener's
/// port, and the CA file that verifies it.
fn tls_proxy(dir: &std::path::Path) -> (Engine, u16, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let e = Engine::new(EngineOptions { workers: Some(1) }).unwrap();
    let up = e.start_echo("127.0.0.1:0", Some("tls")).unwrap();
    let snap = format!(
        r#"{{"version": 1, "listeners": [{{"name": "in", "listen": "127.0.0.1:0", "protocol": "http",
            "routes": [{{"name": "all", "match": {{"host": null, "path": null, "path_prefix": "/", "path_regex": null,
                "methods": [], "headers": [], "query": []}},
              "to": [{{"cluster": "c", "weight": 1}}], "direct_response": null, "redirect": null,
              "rewrite": {{"path_prefix": null, "host": null}},
              "request_headers": {{"set": [], "add": [], "remove": []}},
              "response_headers": {{"set": [], "add": [], "remove": []}}}}],
            "tls": {{"certificates": [{{"cert": "{}", "key": "{}"}}], "alpn": ["h2", "http/1.1"],
                    "min_version": "1.2", "client_ca": null, "require_client_certificate": false}},
            "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}}}}],
          "clusters": [{{"name": "c", "endpoints": ["{up}"], "lb": "round_robin", "connect_timeout_ms": 500,
            "max_idle_per_endpoint": 8, "idle_timeout_ms": 1000, "protocol": "http1", "tls": null,
            "hash_on": null, "health_check": null, "panic_threshold_percent": 50}}]}}"#,
        cert_file.display(),
        key_file.display()
    );
    e.apply_json(&snap).unwrap();
    let port = e.listeners()[0].1.port();
    (e, port, cert_file.display().to_string())
}

#[test]
fn https_with_a_ca_file_and_insecure_over_both_versions() {
    let dir = std::env::temp_dir().join(format!("pymesh-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_e, port, ca) = tls_proxy(&dir);
    for http2 in [false, true] {
        let verified = BenchOptions {
            url: format!("https://localhost:{port}/"),
            connections: 2,
            requests: Some(100),
            http2,
            tls: BenchTls { ca: Some(ca.clone()), ..BenchTls::default() },
            ..BenchOptions::default()
        };
        let r = run(&verified).unwrap();
        assert_eq!((r.requests, r.errors.total()), (100, 0), "http2={http2}: {:?}", r.errors);
        // Without the CA the handshake fails; with --insecure it goes through.
        let untrusted = BenchOptions {
            tls: BenchTls::default(),
            requests: None,
            duration: Some(Duration::from_millis(200)),
            ..verified.clone()
        };
        let r = run(&untrusted).unwrap();
        assert_eq!(r.requests, 0);
        assert!(r.errors.connect > 0);
        let insecure = BenchOptions { tls: BenchTls { insecure: true, ..BenchTls::default() }, ..verified };
        assert_eq!(run(&insecure).unwrap().requests, 100);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_loop_charges_a_slow_target_from_each_due_time() {
    let (_e, addr) = echo();
    // One connection due every 10 ms, against answers that take 30 ms: the connection falls
    // further behind with each request, and coordinated-omission correction must show it
    // (latency from the due time), not 30 ms per request.
    let opts = BenchOptions {
        url: format!("http://{addr}/?delay=30ms"),
        connections: 1,
        duration: Some(Duration::from_secs(1)),
        rate: Some(100.0),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert!(r.requests >= 20, "{} requests", r.requests);
    assert!(r.latency_us.p50 > 150_000, "p50 {} µs should include the backlog", r.latency_us.p50);
    assert!(r.latency_us.max > 400_000, "max {} µs", r.latency_us.max);
}

#[test]
fn slow_answers_count_as_timeouts() {
    let (_e, addr) = echo();
    let opts = BenchOptions {
        url: format!("http://{addr}/?delay=400ms"),
        connections: 2,
        duration: Some(Duration::from_millis(900)),
        timeout: Duration::from_millis(100),
        ..BenchOptions::default()
    };
    let r = run(&opts).unwrap();
    assert_eq!(r.requests, 0);
    assert!(r.errors.timeout >= 4, "{:?}", r.errors);
}
