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
    assert_eq!(bad(BenchOptions { connections: 0, ..base.clone() }), "connections");
    assert_eq!(bad(BenchOptions { requests: None, ..base.clone() }), "duration");
    assert_eq!(bad(BenchOptions { rate: Some(0.0), ..base.clone() }), "rate");
    assert_eq!(bad(BenchOptions { method: "get me".into(), ..base.clone() }), "method");
    assert_eq!(bad(BenchOptions { headers: vec![("a".into(), "b\r\nc".into())], ..base }), "headers");
}
