use super::*;

#[test]
fn histogram_puts_observations_in_the_first_bucket_that_holds_them() {
    let h = Histogram::default();
    h.record(Duration::from_micros(100)); // on the bound: le=0.0001
    h.record(Duration::from_micros(101)); // next bucket
    h.record(Duration::from_secs(60)); // past the last bound: +Inf
    let (counts, sum) = h.snapshot();
    assert_eq!(counts[0], 1);
    assert_eq!(counts[1], 1);
    assert_eq!(counts[LATENCY_BUCKETS_US.len()], 1);
    assert_eq!(sum, 100 + 101 + 60_000_000);
}

#[test]
fn status_counters_group_by_class() {
    let c = StatusCounters::default();
    for s in [200, 204, 404, 503, 599, 101] {
        c.record(s);
    }
    assert_eq!(c.classes[0].get(), 1);
    assert_eq!(c.classes[1].get(), 2);
    assert_eq!(c.classes[3].get(), 1);
    assert_eq!(c.classes[4].get(), 2);
    assert_eq!(c.total(), 6);
    let codes: Vec<_> = c.codes.seen().collect();
    assert_eq!(codes, [(101, 1), (200, 1), (204, 1), (404, 1), (503, 1), (599, 1)]);
}

#[test]
fn render_is_prometheus_text_with_cumulative_buckets_and_escaped_labels() {
    let m = Metrics::default();
    let t = m.target("in\"gress", "r", "c");
    t.record(200);
    t.record(200);
    let r = m.route("in\"gress", "r");
    r.duration.record(Duration::from_micros(300));
    m.config_version.set(7);
    let text = m.render();
    assert!(text.contains(
        "pymesh_requests_total{listener=\"in\\\"gress\",route=\"r\",cluster=\"c\",status_class=\"2xx\"} 2"
    ));
    assert!(text.contains(
        "pymesh_request_duration_seconds_bucket{listener=\"in\\\"gress\",route=\"r\",le=\"0.00025\"} 0"
    ));
    assert!(text.contains(
        "pymesh_request_duration_seconds_bucket{listener=\"in\\\"gress\",route=\"r\",le=\"0.0005\"} 1"
    ));
    assert!(text.contains(
        "pymesh_request_duration_seconds_bucket{listener=\"in\\\"gress\",route=\"r\",le=\"+Inf\"} 1"
    ));
    assert!(text.contains("pymesh_request_duration_seconds_count{listener=\"in\\\"gress\",route=\"r\"} 1"));
    assert!(text.contains("pymesh_config_version 7"));
    assert_eq!(m.requests_total(), 2);
}

#[test]
fn handles_for_the_same_series_are_shared() {
    let m = Metrics::default();
    m.cluster("a").connect_failures.inc();
    assert_eq!(m.cluster("a").connect_failures.get(), 1);
    assert!(Arc::ptr_eq(&m.listener("x"), &m.listener("x")));
}

#[test]
fn status_codes_allocate_a_page_per_hundred_seen_and_keep_every_3_digit_code() {
    let c = StatusCodes::default();
    for s in [200, 200, 299, 999, 100] {
        c.record(s);
    }
    c.record(99); // not a status: ignored, no page
    c.record(1000);
    assert_eq!(c.seen().collect::<Vec<_>>(), [(100, 1), (200, 2), (299, 1), (999, 1)]);
    let pages = c.0.iter().filter(|p| p.get().is_some()).count();
    assert_eq!(pages, 3, "pages for 1xx, 2xx and 9xx only");
}

#[test]
fn grpc_statuses_render_by_name_and_unknown_numbers_count_as_unknown() {
    let m = Metrics::default();
    let t = m.target("web", "api", "grpc");
    t.record_grpc(0);
    t.record_grpc(0);
    t.record_grpc(5);
    t.record_grpc(99);
    let text = m.render();
    let labels = "listener=\"web\",route=\"api\",cluster=\"grpc\"";
    assert!(text.contains(&format!("pymesh_grpc_responses_total{{{labels},grpc_code=\"OK\"}} 2")), "{text}");
    assert!(text.contains(&format!("pymesh_grpc_responses_total{{{labels},grpc_code=\"NOT_FOUND\"}} 1")));
    assert!(text.contains(&format!("pymesh_grpc_responses_total{{{labels},grpc_code=\"UNKNOWN\"}} 1")));
    assert!(!text.contains("grpc_code=\"CANCELLED\""), "codes never seen are not rendered");
}

#[test]
fn codes_first_byte_bytes_and_connections_render_with_their_labels() {
    let m = Metrics::default();
    let t = m.target("web", "api", "backend");
    t.record(200);
    t.record(200);
    t.record(503);
    t.upstream_first_byte.record(Duration::from_millis(3));
    let r = m.route("web", "api");
    r.request_bytes.add(11);
    r.response_bytes.add(22);
    let l = m.listener("web");
    l.connections_total.inc();
    l.connections_closed.inc();
    l.tls_handshakes.add(2);
    l.tls_handshake_failures.inc();
    l.active_requests.inc();
    let c = m.cluster("backend");
    drop(OpenConnection::new(Arc::clone(&c)));
    let open = OpenConnection::new(Arc::clone(&c));
    m.access_log_dropped.add(4);
    let text = m.render();
    let target = "listener=\"web\",route=\"api\",cluster=\"backend\"";
    for line in [
        format!("pymesh_responses_total{{{target},code=\"200\"}} 2"),
        format!("pymesh_responses_total{{{target},code=\"503\"}} 1"),
        format!("pymesh_requests_total{{{target},status_class=\"2xx\"}} 2"),
        format!("pymesh_upstream_first_byte_seconds_bucket{{{target},le=\"0.0025\"}} 0"),
        format!("pymesh_upstream_first_byte_seconds_bucket{{{target},le=\"0.005\"}} 1"),
        format!("pymesh_upstream_first_byte_seconds_sum{{{target}}} 0.003"),
        format!("pymesh_upstream_first_byte_seconds_count{{{target}}} 1"),
        "pymesh_request_bytes_total{listener=\"web\",route=\"api\"} 11".to_owned(),
        "pymesh_response_bytes_total{listener=\"web\",route=\"api\"} 22".to_owned(),
        "pymesh_requests_active{listener=\"web\"} 1".to_owned(),
        "pymesh_downstream_connections_total{listener=\"web\"} 1".to_owned(),
        "pymesh_downstream_connections_closed_total{listener=\"web\"} 1".to_owned(),
        "pymesh_downstream_tls_handshakes_total{listener=\"web\"} 2".to_owned(),
        "pymesh_downstream_tls_handshake_failures_total{listener=\"web\"} 1".to_owned(),
        "pymesh_upstream_connections_total{cluster=\"backend\"} 2".to_owned(),
        "pymesh_upstream_connections_closed_total{cluster=\"backend\"} 1".to_owned(),
        "pymesh_upstream_connections_active{cluster=\"backend\"} 1".to_owned(),
        "pymesh_access_log_dropped_total 4".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    drop(open);
    assert!(m.render().contains("pymesh_upstream_connections_active{cluster=\"backend\"} 0"));
}

#[test]
fn a_target_without_a_cluster_has_no_first_byte_histogram() {
    let m = Metrics::default();
    m.target("web", "", "").record(404);
    let text = m.render();
    assert!(text.contains("pymesh_responses_total{listener=\"web\",route=\"\",cluster=\"\",code=\"404\"} 1"));
    assert!(!text.contains("pymesh_upstream_first_byte_seconds_bucket{listener=\"web\",route=\"\""));
}

/// Every family: one HELP and one TYPE line before its samples, a name that says its unit
/// (`_total` counters, `_seconds` histograms), samples only of declared families, and the
/// label values escaped.
#[test]
fn every_family_is_declared_once_named_by_convention_and_its_labels_escaped() {
    let m = Metrics::default();
    let nasty = "a\\b\"c\nd";
    m.target(nasty, "r", "c").record(200);
    m.route(nasty, "r").duration.record(Duration::from_millis(1));
    m.listener(nasty);
    m.cluster("c");
    m.health_checks("c");
    let _held = m.endpoint_health("c", "127.0.0.1:1");
    let text = m.render();

    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(families.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice for {name}");
            assert!(name.starts_with("pymesh_"), "{name}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "counter {name} must end in _total"),
                "histogram" => assert!(name.ends_with("_seconds"), "histogram {name} must be in seconds"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge {name} named like a counter"),
                other => panic!("unknown type {other}"),
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(families.contains_key(family), "sample {name} of an undeclared family");
        }
    }
    assert!(text.contains("listener=\"a\\\\b\\\"c\\nd\""), "escaped label value:\n{text}");
    assert!(!text.contains("a\\b\"c\nd"), "a raw label value leaked");
    for family in ["pymesh_requests_total", "pymesh_request_duration_seconds", "pymesh_responses_total"] {
        assert!(families.contains_key(family), "{family} missing");
    }
}

/// The label names any series may carry: config names (listener, route, cluster,
/// endpoint), closed sets (status_class, code, grpc_code, kind, limit, result) and `le`.
/// No path, authority, method, client address or header value, whatever the traffic.
#[test]
fn label_names_are_a_closed_set_and_traffic_values_never_become_labels() {
    let m = Metrics::default();
    let t = m.target("web", "api", "backend");
    for code in [200, 404, 418, 503] {
        t.record(code);
    }
    t.record_grpc(3);
    m.route("web", "api").duration.record(Duration::from_millis(2));
    m.listener("web");
    m.health_checks("backend");
    let _held = m.endpoint_health("backend", "10.0.0.1:80");
    let allowed = [
        "listener",
        "route",
        "cluster",
        "endpoint",
        "status_class",
        "code",
        "grpc_code",
        "kind",
        "limit",
        "result",
        "le",
    ];
    let text = m.render();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else { continue };
        let labels = &rest[..rest.rfind('}').unwrap()];
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap();
            assert!(allowed.contains(&key), "label {key} in {line}");
            if key == "code" {
                let value = value.trim_end_matches('"');
                assert!(value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()), "{line}");
            }
            count += 1;
        }
    }
    assert!(count > 50, "the check saw the labels ({count})");
}
