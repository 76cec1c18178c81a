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
    assert_eq!(c.0[0].get(), 1);
    assert_eq!(c.0[1].get(), 2);
    assert_eq!(c.0[3].get(), 1);
    assert_eq!(c.0[4].get(), 2);
    assert_eq!(c.total(), 6);
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
