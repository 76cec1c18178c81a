use super::*;
use crate::config::Snapshot;
use serde_json::{json, Value};

/// A route in its full snapshot form: `fields` override the defaults (a catch-all to `a`).
fn route(name: &str, fields: Value) -> String {
    let mut r = json!({
        "name": name,
        "match": {"host": null, "path": null, "path_prefix": "/", "path_regex": null,
                  "methods": [], "headers": [], "query": []},
        "to": [{"cluster": "a", "weight": 1}],
        "direct_response": null,
        "redirect": null,
        "rewrite": {"path_prefix": null, "host": null},
        "request_headers": {"set": [], "add": [], "remove": []},
        "response_headers": {"set": [], "add": [], "remove": []},
    });
    for (k, v) in fields.as_object().unwrap() {
        if k == "match" {
            for (mk, mv) in v.as_object().unwrap() {
                r["match"][mk] = mv.clone();
            }
        } else {
            r[k] = v.clone();
        }
    }
    r.to_string()
}

fn snapshot(extra_route: &str, clusters: &str) -> Snapshot {
    let r0 = route("r0", json!({}));
    let text = format!(
        r#"{{"version": 4,
            "listeners": [{{"name": "in", "listen": "127.0.0.1:0", "routes": [{r0}{extra_route}],
                "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}}}}],
            "clusters": [{clusters}]}}"#
    );
    Snapshot::from_json(&text).unwrap()
}

/// The snapshot with a second route made of `fields`.
fn with_route(fields: Value) -> Snapshot {
    snapshot(&format!(", {}", route("r1", fields)), CLUSTER_A)
}

const CLUSTER_A: &str = r#"{"name": "a", "endpoints": ["127.0.0.1:9"], "lb": "round_robin",
    "connect_timeout_ms": 100, "max_idle_per_endpoint": 4, "idle_timeout_ms": 1000,
    "hash_on": null, "health_check": null, "panic_threshold_percent": 50, "protocol": "http1", "tls": null}"#;

fn compile_err(snap: &Snapshot) -> Error {
    compile(snap, &[0], &Metrics::default(), &UpstreamCache::new(), &HealthCache::new(), None).unwrap_err()
}

#[test]
fn a_valid_snapshot_compiles_into_the_listener_slot() {
    let snap = snapshot("", CLUSTER_A);
    let (tables, upstreams) =
        compile(&snap, &[3], &Metrics::default(), &UpstreamCache::new(), &HealthCache::new(), None).unwrap();
    assert_eq!(tables.version, 4);
    assert!(tables.listener(3).is_some());
    assert!(tables.listener(0).is_none());
    let req = http::Request::get("/x").body(()).unwrap();
    assert!(tables.listener(3).unwrap().router.find(&req).is_some());
    assert_eq!(upstreams.len(), 1);
}

#[test]
fn unknown_cluster_is_refused_with_its_path() {
    let err = compile_err(&with_route(json!({"to": [{"cluster": "nope", "weight": 1}]})));
    assert_eq!(err.path, "listeners.0.routes.1.to.0.cluster");
    assert!(err.message.contains("nope"), "{err}");
}

#[test]
fn match_needs_exactly_one_kind_and_a_leading_slash() {
    let both = with_route(json!({"match": {"path": "/x", "path_prefix": "/y"}}));
    assert_eq!(compile_err(&both).path, "listeners.0.routes.1.match");
    let relative = with_route(json!({"match": {"path": "x", "path_prefix": null}}));
    assert_eq!(compile_err(&relative).path, "listeners.0.routes.1.match.path");
    let regex = with_route(json!({"match": {"path_regex": "(", "path_prefix": null}}));
    assert_eq!(compile_err(&regex).path, "listeners.0.routes.1.match.path_regex");
}

#[test]
fn zero_total_weight_and_duplicate_names_are_refused() {
    let zero = with_route(json!({"to": [{"cluster": "a", "weight": 0}]}));
    assert_eq!(compile_err(&zero).path, "listeners.0.routes.1.to");
    let dup_route = snapshot(&format!(", {}", route("r0", json!({}))), CLUSTER_A);
    assert_eq!(compile_err(&dup_route).path, "listeners.0.routes.1.name");
    let dup_cluster = snapshot("", &format!("{CLUSTER_A}, {CLUSTER_A}"));
    assert_eq!(compile_err(&dup_cluster).path, "clusters.1.name");
}

#[test]
fn a_route_has_exactly_one_action() {
    let direct = json!({"status": 200, "body": "ok"});
    let redirect = json!({"status": 301, "scheme": null, "host": null, "path": "/n",
                          "prefix_rewrite": null, "strip_query": false});
    let cases = [
        json!({"to": []}),
        json!({"direct_response": direct.clone()}),
        json!({"to": [], "direct_response": direct.clone(), "redirect": redirect.clone()}),
    ];
    for fields in cases {
        assert_eq!(compile_err(&with_route(fields.clone())).path, "listeners.0.routes.1", "{fields}");
    }
    let ok = with_route(json!({"to": [], "redirect": redirect}));
    assert!(compile(&ok, &[0], &Metrics::default(), &UpstreamCache::new(), &HealthCache::new(), None).is_ok());
    let rewrite = with_route(json!({"to": [], "direct_response": direct.clone(),
                                    "rewrite": {"path_prefix": "/x", "host": null}}));
    assert_eq!(compile_err(&rewrite).path, "listeners.0.routes.1.rewrite");
    let req_headers = with_route(json!({"to": [], "direct_response": direct,
                                        "request_headers": {"set": [], "add": [], "remove": ["x-a"]}}));
    assert_eq!(compile_err(&req_headers).path, "listeners.0.routes.1.request_headers");
}

#[test]
fn action_errors_carry_the_route_path() {
    let status = with_route(json!({"to": [], "direct_response": {"status": 42, "body": ""}}));
    assert_eq!(compile_err(&status).path, "listeners.0.routes.1.direct_response.status");
    let value = with_route(json!({"response_headers": {"set": [{"name": "x-a", "value": "a\u{1}"}],
                                                       "add": [], "remove": []}}));
    assert_eq!(compile_err(&value).path, "listeners.0.routes.1.response_headers.set.0.value");
    let host = with_route(json!({"match": {"host": "a.com:80"}}));
    assert_eq!(compile_err(&host).path, "listeners.0.routes.1.match.host");
    let header = with_route(json!({"match": {"headers": [{"name": "x", "exact": null, "regex": "[",
                                                           "present": null}]}}));
    assert_eq!(compile_err(&header).path, "listeners.0.routes.1.match.headers.0.regex");
}

#[test]
fn bad_endpoints_and_zero_timeouts_are_refused() {
    let bad = CLUSTER_A.replace("127.0.0.1:9", "127.0.0.1");
    assert_eq!(compile_err(&snapshot("", &bad)).path, "clusters.0.endpoints.0");
    let zero = CLUSTER_A.replace("\"connect_timeout_ms\": 100", "\"connect_timeout_ms\": 0");
    assert_eq!(compile_err(&snapshot("", &zero)).path, "clusters.0.connect_timeout_ms");
    let none = CLUSTER_A.replace("[\"127.0.0.1:9\"]", "[]");
    assert_eq!(compile_err(&snapshot("", &none)).path, "clusters.0.endpoints");
}

#[test]
fn unknown_snapshot_fields_are_refused() {
    let err =
        Snapshot::from_json(r#"{"version": 1, "listeners": [], "clusters": [], "extra": 1}"#).unwrap_err();
    assert!(err.message.contains("extra"), "{err}");
}

#[test]
fn unchanged_pool_settings_keep_the_upstream_client() {
    let metrics = Metrics::default();
    let snap = snapshot("", CLUSTER_A);
    let (_, first) =
        compile(&snap, &[0], &metrics, &UpstreamCache::new(), &HealthCache::new(), None).unwrap();
    let (_, second) = compile(&snap, &[0], &metrics, &first, &HealthCache::new(), None).unwrap();
    assert!(Arc::ptr_eq(&first["a"], &second["a"]));
    let changed =
        snapshot("", &CLUSTER_A.replace("\"max_idle_per_endpoint\": 4", "\"max_idle_per_endpoint\": 5"));
    let (_, third) = compile(&changed, &[0], &metrics, &second, &HealthCache::new(), None).unwrap();
    assert!(!Arc::ptr_eq(&second["a"], &third["a"]));
}

fn health_of(tables: &Tables) -> HealthCache {
    tables.clusters.iter().map(|(n, c)| (n.clone(), Arc::clone(&c.health))).collect()
}

const CHECKED: &str = r#"{"name": "a", "endpoints": [{"address": "127.0.0.1:9", "weight": 2}, "127.0.0.1:10"],
    "lb": "ring_hash", "hash_on": {"header": "x-user", "cookie": null, "source_ip": false},
    "connect_timeout_ms": 100, "max_idle_per_endpoint": 4, "idle_timeout_ms": 1000,
    "health_check": {"tcp": true, "path": null, "expected_statuses": [], "interval_ms": 1000,
                     "timeout_ms": 100, "healthy_threshold": 2, "unhealthy_threshold": 3},
    "panic_threshold_percent": 50, "protocol": "http1", "tls": null}"#;

#[test]
fn unchanged_health_checks_and_endpoints_keep_the_health_group() {
    let metrics = Metrics::default();
    let snap = snapshot("", CHECKED);
    let (first, ups) =
        compile(&snap, &[0], &metrics, &UpstreamCache::new(), &HealthCache::new(), None).unwrap();
    // A weight or balancer change keeps what the checks found.
    let reweighted = snapshot("", &CHECKED.replace("\"weight\": 2", "\"weight\": 5"));
    let (second, ups) = compile(&reweighted, &[0], &metrics, &ups, &health_of(&first), None).unwrap();
    assert!(Arc::ptr_eq(&first.clusters["a"].health, &second.clusters["a"].health));
    // New endpoints or new check settings start over.
    let moved = snapshot("", &CHECKED.replace("127.0.0.1:10", "127.0.0.1:11"));
    let (third, ups) = compile(&moved, &[0], &metrics, &ups, &health_of(&second), None).unwrap();
    assert!(!Arc::ptr_eq(&second.clusters["a"].health, &third.clusters["a"].health));
    let slower = snapshot("", &CHECKED.replace("\"interval_ms\": 1000", "\"interval_ms\": 2000"));
    let (fourth, _) = compile(&slower, &[0], &metrics, &ups, &health_of(&first), None).unwrap();
    assert!(!Arc::ptr_eq(&first.clusters["a"].health, &fourth.clusters["a"].health));
}

#[test]
fn balancing_and_health_fields_are_checked_with_their_paths() {
    let cases = [
        (CHECKED.replace("\"weight\": 2", "\"weight\": 0"), "clusters.0.endpoints.0.weight"),
        (CHECKED.replace("\"weight\": 2", "\"weight\": 1001"), "clusters.0.endpoints.0.weight"),
        (CHECKED.replace("127.0.0.1:10", "127.0.0.1:9"), "clusters.0.endpoints.1"),
        (CHECKED.replace("\"cookie\": null", "\"cookie\": \"s\""), "clusters.0.hash_on"),
        (CHECKED.replace("\"x-user\"", "\"bad header\""), "clusters.0.hash_on.header"),
        (CHECKED.replace("\"lb\": \"ring_hash\"", "\"lb\": \"random\""), "clusters.0.hash_on"),
        (
            CHECKED.replace(r#"{"header": "x-user", "cookie": null, "source_ip": false}"#, "null"),
            "clusters.0.hash_on",
        ),
        (CHECKED.replace("\"path\": null", "\"path\": \"/x\""), "clusters.0.health_check"),
        (
            CHECKED.replace("\"tcp\": true, \"path\": null", "\"tcp\": false, \"path\": \"/x\""),
            "clusters.0.health_check.expected_statuses",
        ),
        (
            CHECKED.replace("\"interval_ms\": 1000", "\"interval_ms\": 0"),
            "clusters.0.health_check.interval_ms",
        ),
        (
            CHECKED.replace("\"unhealthy_threshold\": 3", "\"unhealthy_threshold\": 0"),
            "clusters.0.health_check.unhealthy_threshold",
        ),
        (
            CHECKED.replace("\"panic_threshold_percent\": 50", "\"panic_threshold_percent\": 101"),
            "clusters.0.panic_threshold_percent",
        ),
    ];
    let h2 = CHECKED
        .replace("\"tcp\": true, \"path\": null", "\"tcp\": false, \"path\": \"/h\"")
        .replace("\"expected_statuses\": []", "\"expected_statuses\": [200]")
        .replace("\"protocol\": \"http1\"", "\"protocol\": \"http2\"");
    // HTTP checks speak the cluster's protocol; they and TCP checks suit any cluster.
    let (tables, _) = compile(
        &snapshot("", &h2),
        &[0],
        &Metrics::default(),
        &UpstreamCache::new(),
        &HealthCache::new(),
        None,
    )
    .unwrap();
    assert!(tables.clusters.contains_key("a"));
    let tcp_h2 = CHECKED.replace("\"protocol\": \"http1\"", "\"protocol\": \"http2\"");
    assert!(compile(
        &snapshot("", &tcp_h2),
        &[0],
        &Metrics::default(),
        &UpstreamCache::new(),
        &HealthCache::new(),
        None
    )
    .is_ok());
    for (text, path) in cases {
        assert_eq!(compile_err(&snapshot("", &text)).path, path, "{text}");
    }
}
