use std::sync::Arc;
use std::time::Duration;

use super::{Tap, TapFilter};
use crate::observe::accesslog::tests::record;

const NOW: Duration = Duration::from_millis(0);

#[test]
fn nobody_listening_is_inactive_and_leaving_makes_it_inactive_again() {
    let tap = Arc::new(Tap::default());
    assert!(!tap.active());
    let a = tap.subscribe(&TapFilter::default(), 8).unwrap();
    let b = tap.subscribe(&TapFilter::default(), 8).unwrap();
    assert!(tap.active());
    assert_eq!(tap.subscribers(), 2);
    drop(a);
    assert_eq!(tap.subscribers(), 1);
    drop(b);
    assert!(!tap.active());
    assert_eq!(tap.subscribers(), 0);
}

#[test]
fn subscribers_get_what_their_filter_takes() {
    let tap = Arc::new(Tap::default());
    let all = tap.subscribe(&TapFilter::default(), 8).unwrap();
    let fives = tap.subscribe(&TapFilter { status: Some("5xx".into()), ..TapFilter::default() }, 8).unwrap();
    let exact = tap.subscribe(&TapFilter { status: Some("503".into()), ..TapFilter::default() }, 8).unwrap();
    let fours = tap.subscribe(&TapFilter { status: Some("4xx".into()), ..TapFilter::default() }, 8).unwrap();
    let other_route =
        tap.subscribe(&TapFilter { route: Some("web".into()), ..TapFilter::default() }, 8).unwrap();
    let api = tap
        .subscribe(
            &TapFilter {
                listener: Some("web".into()),
                route: Some("api".into()),
                cluster: Some("backend".into()),
                path_prefix: Some("/api/".into()),
                status: None,
            },
            8,
        )
        .unwrap();
    let other_path =
        tap.subscribe(&TapFilter { path_prefix: Some("/v2".into()), ..TapFilter::default() }, 8).unwrap();
    tap.publish(&record());
    for sub in [&all, &fives, &exact, &api] {
        let e = sub.next(NOW).expect("a matching subscriber gets the record");
        assert_eq!((e.status, e.flags.as_str(), e.attempts), (503, "UF,URX", 3));
        assert_eq!(e.route.as_deref(), Some("api"));
        assert_eq!(e.endpoint.as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(e.time, "2024-01-02T03:04:05.678Z");
        assert_eq!(e.trace_id, Some("ab".repeat(16)));
    }
    for sub in [&fours, &other_route, &other_path] {
        assert!(sub.next(NOW).is_none());
    }
    assert_eq!(tap.records.get(), 1);
}

#[test]
fn a_slow_subscriber_loses_records_and_counts_them() {
    let tap = Arc::new(Tap::default());
    let slow = tap.subscribe(&TapFilter::default(), 2).unwrap();
    for _ in 0..5 {
        tap.publish(&record());
    }
    assert_eq!(tap.dropped.get(), 3);
    assert!(slow.next(NOW).is_some() && slow.next(NOW).is_some() && slow.next(NOW).is_none());
}

#[test]
fn bad_status_filters_are_refused() {
    let tap = Arc::new(Tap::default());
    for bad in ["5", "600", "5xy", "abc", "6xx"] {
        let e =
            tap.subscribe(&TapFilter { status: Some(bad.into()), ..TapFilter::default() }, 1).unwrap_err();
        assert_eq!(e.path, "status", "{bad}");
    }
    assert!(!tap.active(), "a refused subscription does not listen");
}
