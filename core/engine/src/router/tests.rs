use super::*;
use crate::config::{ClusterSpec, EndpointSpec, LbKind};
use crate::http::client::{PoolSettings, Upstream};
use std::time::Duration;

fn target(cluster: &str) -> Arc<Target> {
    let spec = ClusterSpec {
        name: cluster.into(),
        endpoints: vec![EndpointSpec::Address("127.0.0.1:1".into())],
        lb: LbKind::RoundRobin,
        connect_timeout_ms: 1000,
        max_idle_per_endpoint: 1,
        idle_timeout_ms: 1000,
        hash_on: None,
        health_check: None,
        panic_threshold_percent: 50,
    };
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        max_idle_per_endpoint: 1,
        idle_timeout: Duration::from_secs(1),
    };
    let upstream = Arc::new(Upstream::new(settings, Arc::default()));
    Arc::new(Target {
        cluster: Arc::new(
            Cluster::compile(&spec, "clusters.0", upstream, None, &crate::metrics::Metrics::default())
                .unwrap(),
        ),
        counters: Arc::default(),
        route_stats: Arc::default(),
    })
}

fn route(name: &str, m: PathMatch, to: &[(&str, u32)]) -> Route {
    Route::new(name.into(), m, to.iter().map(|(c, w)| (*w, target(c))).collect())
}

#[test]
fn first_matching_route_wins_in_config_order() {
    let router = Router::new(vec![
        route("exact", PathMatch::Exact("/api/health".into()), &[("a", 1)]),
        route("api", PathMatch::Prefix("/api".into()), &[("b", 1)]),
        route("all", PathMatch::Prefix("/".into()), &[("c", 1)]),
    ]);
    let name = |p: &str| router.find(p).map(|r| r.name.to_string());
    assert_eq!(name("/api/health").as_deref(), Some("exact"));
    assert_eq!(name("/api/health/x").as_deref(), Some("api"));
    assert_eq!(name("/apix").as_deref(), Some("api"));
    assert_eq!(name("/").as_deref(), Some("all"));
    assert_eq!(name("/other").as_deref(), Some("all"));
}

#[test]
fn no_route_when_nothing_matches() {
    let router = Router::new(vec![route("api", PathMatch::Prefix("/api".into()), &[("b", 1)])]);
    assert!(router.find("/").is_none());
    assert!(router.find("/ap").is_none());
    assert!(Router::default().find("/").is_none());
}

#[test]
fn weighted_split_covers_the_weight_line_exactly() {
    let r = route("split", PathMatch::Prefix("/".into()), &[("v1", 90), ("none", 0), ("v2", 10)]);
    let mut counts = std::collections::HashMap::new();
    for at in 0..100 {
        *counts.entry(r.pick_at(at).cluster.name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("v1"), Some(&90));
    assert_eq!(counts.get("v2"), Some(&10));
    assert_eq!(counts.get("none"), None);
}

#[test]
fn weighted_split_by_random_choice_lands_near_its_weights() {
    let r = route("split", PathMatch::Prefix("/".into()), &[("v1", 90), ("v2", 10)]);
    let v2 = (0..20_000).filter(|_| &*r.pick().cluster.name == "v2").count();
    // 10% of 20000 is 2000; the standard deviation is ~42, so ±300 is far outside chance.
    assert!((1700..2300).contains(&v2), "v2 got {v2}");
}
