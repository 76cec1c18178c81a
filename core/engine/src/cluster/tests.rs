use super::*;
use http::Request;

#[test]
fn endpoints_need_host_and_port() {
    assert_eq!(parse_endpoint("127.0.0.1:9001").unwrap().port_u16(), Some(9001));
    assert_eq!(parse_endpoint("[::1]:80").unwrap().host(), "[::1]");
    assert_eq!(parse_endpoint("svc.local:8080").unwrap().host(), "svc.local");
    assert!(parse_endpoint("127.0.0.1").unwrap_err().contains("needs a port"));
    assert!(parse_endpoint("127.0.0.1:0").unwrap_err().contains("needs a port"));
    assert!(parse_endpoint("http://x:1").is_err());
    assert!(parse_endpoint("user@x:1").is_err());
    assert!(parse_endpoint("").is_err());
}

use std::time::Duration;

use crate::config::{EndpointSpec, HashOnSpec, WeightedEndpointSpec};
use crate::http::client::PoolSettings;

fn spec(lb: LbKind, hash_on: Option<HashOnSpec>, endpoints: &[(&str, u32)], panic: u32) -> ClusterSpec {
    ClusterSpec {
        name: "c".into(),
        endpoints: endpoints
            .iter()
            .map(|(a, w)| EndpointSpec::Weighted(WeightedEndpointSpec { address: (*a).into(), weight: *w }))
            .collect(),
        lb,
        hash_on,
        connect_timeout_ms: 1000,
        max_idle_per_endpoint: 1,
        idle_timeout_ms: 1000,
        health_check: None,
        panic_threshold_percent: panic,
        protocol: crate::config::ClusterProtocol::Http1,
        tls: None,
        policy: None,
    }
}

fn compile(spec: &ClusterSpec) -> Cluster {
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        max_idle_per_endpoint: 1,
        idle_timeout: Duration::from_secs(1),
        protocol: crate::config::ClusterProtocol::Http1,
        max_connections: None,
    };
    let upstream = Arc::new(Upstream::new(settings, None, Arc::default()));
    Cluster::compile(spec, "clusters.0", upstream, None, &Metrics::default()).unwrap()
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::get("/");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn picked(c: &Cluster, req: &Request<()>, from: &str) -> String {
    c.pick(req.headers(), peer(from)).unwrap().0.to_string()
}

const THREE: [(&str, u32); 3] = [("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)];

fn hash_on(header: Option<&str>, cookie: Option<&str>, source_ip: bool) -> Option<HashOnSpec> {
    Some(HashOnSpec { header: header.map(Into::into), cookie: cookie.map(Into::into), source_ip })
}

#[test]
fn cookie_values_are_found_among_others() {
    assert_eq!(cookie_value(b"a=1; session=abc; b=2", b"session"), Some(&b"abc"[..]));
    assert_eq!(cookie_value(b"session=x", b"session"), Some(&b"x"[..]));
    assert_eq!(cookie_value(b"sessionid=x; other", b"session"), None);
    assert_eq!(cookie_value(b"", b"session"), None);
}

#[test]
fn hashing_keys_stick_by_header_cookie_and_source_ip() {
    for lb in [LbKind::RingHash, LbKind::Maglev] {
        let by_header = compile(&spec(lb, hash_on(Some("x-user"), None, false), &THREE, 50));
        let by_cookie = compile(&spec(lb, hash_on(None, Some("session"), false), &THREE, 50));
        let by_ip = compile(&spec(lb, hash_on(None, None, true), &THREE, 50));
        let mut seen = std::collections::HashSet::new();
        for user in 0..60 {
            let h = request(&[("x-user", &format!("u{user}"))]);
            let first = picked(&by_header, &h, "127.0.0.9");
            seen.insert(first.clone());
            // The same key, whatever else differs (client, other headers), lands the same.
            for from in ["127.0.0.1", "10.1.2.3"] {
                assert_eq!(picked(&by_header, &h, from), first);
            }
            let c = request(&[("cookie", &format!("a=1; session=s{user}"))]);
            assert_eq!(picked(&by_cookie, &c, "127.0.0.1"), picked(&by_cookie, &c, "10.0.0.1"));
            let ip = format!("10.0.0.{user}");
            assert_eq!(picked(&by_ip, &request(&[]), &ip), picked(&by_ip, &h, &ip));
        }
        assert_eq!(seen.len(), 3, "{lb:?}: 60 keys should reach every endpoint");
        // No key: random over all.
        let keyless: std::collections::HashSet<_> =
            (0..100).map(|_| picked(&by_header, &request(&[]), "127.0.0.1")).collect();
        assert_eq!(keyless.len(), 3);
    }
}

#[test]
fn source_ip_hashing_treats_mapped_ipv4_as_ipv4() {
    let c = compile(&spec(LbKind::Maglev, hash_on(None, None, true), &THREE, 50));
    for i in 0..20 {
        let v4 = format!("10.0.0.{i}");
        let mapped = format!("::ffff:10.0.0.{i}");
        assert_eq!(picked(&c, &request(&[]), &v4), picked(&c, &request(&[]), &mapped));
    }
}

#[test]
fn unhealthy_endpoints_leave_the_rotation_above_the_panic_threshold() {
    let c = compile(&spec(LbKind::RoundRobin, None, &THREE, 50));
    let all: std::collections::HashSet<_> = (0..30).map(|_| picked(&c, &request(&[]), "127.0.0.1")).collect();
    assert_eq!(all.len(), 3);
    // 2 of 3 healthy (67% >= 50%): endpoint 1 leaves.
    c.health.set_for_test(1, false);
    let seen: std::collections::HashSet<_> =
        (0..30).map(|_| picked(&c, &request(&[]), "127.0.0.1")).collect();
    assert_eq!(seen, ["127.0.0.1:1".to_owned(), "127.0.0.1:3".to_owned()].into());
    // 1 of 3 healthy (33% < 50%): panic, balance over all three.
    c.health.set_for_test(2, false);
    let seen: std::collections::HashSet<_> =
        (0..30).map(|_| picked(&c, &request(&[]), "127.0.0.1")).collect();
    assert_eq!(seen.len(), 3);
    // Back to health.
    c.health.set_for_test(1, true);
    c.health.set_for_test(2, true);
    assert_eq!(
        (0..30)
            .map(|_| picked(&c, &request(&[]), "127.0.0.1"))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
}

#[test]
fn with_panic_mode_off_an_empty_rotation_picks_nothing() {
    let c = compile(&spec(LbKind::LeastRequest, None, &THREE[..1], 0));
    assert!(c.pick(request(&[]).headers(), peer("127.0.0.1")).is_some());
    c.health.set_for_test(0, false);
    assert!(c.pick(request(&[]).headers(), peer("127.0.0.1")).is_none());
}

#[test]
fn weights_reach_the_balancer() {
    let c = compile(&spec(LbKind::RoundRobin, None, &[("127.0.0.1:1", 3), ("127.0.0.1:2", 1)], 50));
    let ones = (0..400).filter(|_| picked(&c, &request(&[]), "127.0.0.1") == "127.0.0.1:1").count();
    assert_eq!(ones, 300);
}

#[test]
fn in_flight_requests_steer_least_request() {
    let c = compile(&spec(LbKind::LeastRequest, None, &THREE[..2], 50));
    let (first, guard) = c.pick(request(&[]).headers(), peer("127.0.0.1")).unwrap();
    let first = first.to_string();
    // While the first is busy, every pick goes to the other.
    for _ in 0..20 {
        assert_ne!(picked(&c, &request(&[]), "127.0.0.1"), first);
    }
    drop(guard);
}

#[test]
fn tcp_connections_hash_on_source_ip_only() {
    let by_ip = compile(&spec(LbKind::RingHash, hash_on(None, None, true), &THREE, 50));
    for i in 0..20 {
        let ip = format!("10.0.0.{i}");
        let conn = by_ip.pick_connection(peer(&ip)).unwrap().0.to_string();
        assert_eq!(conn, picked(&by_ip, &request(&[]), &ip));
    }
    // A header key means nothing to a TCP connection: random over all.
    let by_header = compile(&spec(LbKind::Maglev, hash_on(Some("x-user"), None, false), &THREE, 50));
    let seen: std::collections::HashSet<_> =
        (0..100).map(|_| by_header.pick_connection(peer("10.0.0.1")).unwrap().0.to_string()).collect();
    assert_eq!(seen.len(), 3);
}

#[test]
fn only_load_reading_balancers_count_requests_in_flight() {
    for (lb, counted) in
        [(LbKind::RoundRobin, 0), (LbKind::Random, 0), (LbKind::LeastRequest, 1), (LbKind::Ewma, 1)]
    {
        let c = compile(&spec(lb, None, &THREE[..1], 50));
        let guard = c.pick(request(&[]).headers(), peer("127.0.0.1")).unwrap();
        assert_eq!(c.endpoints[0].load.in_flight(), counted, "{lb:?}");
        drop(guard);
        assert_eq!(c.endpoints[0].load.in_flight(), 0);
    }
}

// === outlier ejection (policy/outlier.rs) in the rotation ===

#[test]
fn an_ejected_endpoint_leaves_the_rotation_of_every_balancer_and_returns() {
    use crate::config::{ClusterPolicySpec, OutlierSpec};
    use crate::policy::TryOutcome;
    let outlier = OutlierSpec {
        consecutive_5xx: 1,
        consecutive_gateway_errors: 0,
        success_rate: None,
        // Long enough that a descheduled test thread still sees the ejection (30 ms did not,
        // under load), short enough to wait out.
        base_ejection_ms: 300,
        max_ejection_ms: 300,
        max_ejection_percent: 50,
    };
    let addresses = [("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)];
    for (lb, hash_on) in [
        (LbKind::RoundRobin, None),
        (LbKind::LeastRequest, None),
        (LbKind::Maglev, Some(HashOnSpec { header: None, cookie: None, source_ip: true })),
    ] {
        let mut s = spec(lb, hash_on, &addresses, 0);
        s.policy =
            Some(ClusterPolicySpec { circuit_breaker: None, outlier_detection: Some(outlier.clone()) });
        let c = compile(&s);
        let req = request(&[]);
        let (first, _, _) = c.pick_indexed(req.headers(), peer("10.0.0.1")).unwrap();
        c.policy.outlier.as_ref().unwrap().observe(first, TryOutcome::Response { status: 503, grpc: None });
        for k in 0..30 {
            let (i, _, _) = c.pick_indexed(req.headers(), peer(&format!("10.0.0.{k}"))).unwrap();
            assert_ne!(i, first, "{lb:?}: the ejected endpoint is out of rotation");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let back = (0..30)
                .any(|k| c.pick_indexed(req.headers(), peer(&format!("10.0.0.{k}"))).unwrap().0 == first);
            if back {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{lb:?}: the endpoint never returned");
            // Polling for the ejection to end (bounded by the deadline), not synchronising.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
