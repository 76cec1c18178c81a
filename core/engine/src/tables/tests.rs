use super::*;
use crate::config::Snapshot;

fn snapshot(extra_route: &str, clusters: &str) -> Snapshot {
    let text = format!(
        r#"{{"version": 4,
            "listeners": [{{"name": "in", "listen": "127.0.0.1:0", "routes": [
                {{"name": "r0", "match": {{"path": null, "path_prefix": "/"}},
                  "to": [{{"cluster": "a", "weight": 1}}]}}{extra_route}],
                "protocol": "http", "tls": null, "to": [], "sni_routes": [], "idle_timeout_ms": 1000}}],
            "clusters": [{clusters}]}}"#
    );
    Snapshot::from_json(&text).unwrap()
}

const CLUSTER_A: &str = r#"{"name": "a", "endpoints": ["127.0.0.1:9"], "lb": "round_robin",
    "connect_timeout_ms": 100, "max_idle_per_endpoint": 4, "idle_timeout_ms": 1000, "protocol": "http1", "tls": null}"#;

fn compile_err(snap: &Snapshot) -> Error {
    compile(snap, &[0], &Metrics::default(), &UpstreamCache::new()).unwrap_err()
}

#[test]
fn a_valid_snapshot_compiles_into_the_listener_slot() {
    let snap = snapshot("", CLUSTER_A);
    let (tables, upstreams) = compile(&snap, &[3], &Metrics::default(), &UpstreamCache::new()).unwrap();
    assert_eq!(tables.version, 4);
    assert!(tables.listener(3).is_some());
    assert!(tables.listener(0).is_none());
    assert!(tables.listener(3).unwrap().router.find("/x").is_some());
    assert_eq!(upstreams.len(), 1);
}

#[test]
fn unknown_cluster_is_refused_with_its_path() {
    let snap = snapshot(
        r#", {"name": "r1", "match": {"path": "/x", "path_prefix": null}, "to": [{"cluster": "nope", "weight": 1}]}"#,
        CLUSTER_A,
    );
    let err = compile_err(&snap);
    assert_eq!(err.path, "listeners.0.routes.1.to.0.cluster");
    assert!(err.message.contains("nope"), "{err}");
}

#[test]
fn match_needs_exactly_one_kind_and_a_leading_slash() {
    let both = snapshot(
        r#", {"name": "r1", "match": {"path": "/x", "path_prefix": "/y"}, "to": [{"cluster": "a", "weight": 1}]}"#,
        CLUSTER_A,
    );
    assert_eq!(compile_err(&both).path, "listeners.0.routes.1.match");
    let relative = snapshot(
        r#", {"name": "r1", "match": {"path": "x", "path_prefix": null}, "to": [{"cluster": "a", "weight": 1}]}"#,
        CLUSTER_A,
    );
    assert_eq!(compile_err(&relative).path, "listeners.0.routes.1.match.path");
}

#[test]
fn zero_total_weight_and_duplicate_names_are_refused() {
    let zero = snapshot(
        r#", {"name": "r1", "match": {"path": "/x", "path_prefix": null}, "to": [{"cluster": "a", "weight": 0}]}"#,
        CLUSTER_A,
    );
    assert_eq!(compile_err(&zero).path, "listeners.0.routes.1.to");
    let dup_route = snapshot(
        r#", {"name": "r0", "match": {"path": "/x", "path_prefix": null}, "to": [{"cluster": "a", "weight": 1}]}"#,
        CLUSTER_A,
    );
    assert_eq!(compile_err(&dup_route).path, "listeners.0.routes.1.name");
    let dup_cluster = snapshot("", &format!("{CLUSTER_A}, {CLUSTER_A}"));
    assert_eq!(compile_err(&dup_cluster).path, "clusters.1.name");
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
    let (_, first) = compile(&snap, &[0], &metrics, &UpstreamCache::new()).unwrap();
    let (_, second) = compile(&snap, &[0], &metrics, &first).unwrap();
    assert!(Arc::ptr_eq(&first["a"], &second["a"]));
    let changed =
        snapshot("", &CLUSTER_A.replace("\"max_idle_per_endpoint\": 4", "\"max_idle_per_endpoint\": 5"));
    let (_, third) = compile(&changed, &[0], &metrics, &second).unwrap();
    assert!(!Arc::ptr_eq(&second["a"], &third["a"]));
}
