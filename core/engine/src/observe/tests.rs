use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::{grpc_status, tap::Tap, Exchange, Flags, Observe};
use crate::http::local_reply;
use crate::metrics::{Gauge, GaugeGuard, RouteStats, StatusCounters};

fn exchange(stats: &Arc<RouteStats>) -> Exchange {
    let observe = Arc::new(Observe { listener: "web".into(), access_log: None, tracer: None });
    let mut req = Request::new(Full::new(Bytes::new()));
    let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut ex = Exchange::begin(&observe, &Arc::new(Tap::default()), &mut req, peer);
    ex.route_stats = Some(Arc::clone(stats));
    ex
}

#[test]
fn flags_print_as_envoy_short_names() {
    let mut f = Flags::default();
    assert_eq!(f.text(), "-");
    f.set(Flags::UPSTREAM_TIMEOUT);
    f.set(Flags::NO_ROUTE);
    f.set(Flags::RETRY_LIMIT_EXCEEDED);
    assert_eq!(f.text(), "NR,UT,URX");
    assert!(f.contains(Flags::NO_ROUTE) && !f.contains(Flags::RATE_LIMITED));
}

#[tokio::test]
async fn a_whole_body_counts_its_bytes_once() {
    let stats = Arc::new(RouteStats::default());
    let resp = exchange(&stats).finish(local_reply(StatusCode::OK, "hello\n"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello\n");
    assert_eq!(stats.response_bytes.get(), 6);
}

#[tokio::test]
async fn a_body_dropped_unread_still_finishes() {
    let stats = Arc::new(RouteStats::default());
    let resp =
        exchange(&stats).finish(http::Response::new(Either::Right(Full::new(Bytes::from_static(b"xyz")))));
    drop(resp);
    assert_eq!(stats.response_bytes.get(), 0, "nothing was sent");
}

#[tokio::test]
async fn the_duration_is_recorded_when_the_response_ends_not_at_its_head() {
    let stats = Arc::new(RouteStats::default());
    let active = Arc::new(Gauge::default());
    let target = Arc::new(StatusCounters::default());
    let mut ex = exchange(&stats);
    ex.active = Some(GaugeGuard::new(Arc::clone(&active)));
    ex.target_stats = Some(Arc::clone(&target));
    ex.upstream_answered(&http::HeaderMap::new());
    let resp = ex.finish(local_reply(StatusCode::OK, "hello\n"));
    assert_eq!(active.get(), 1, "in flight until the body ends");
    let count = |s: &RouteStats| s.duration.count();
    assert_eq!(count(&stats), 0, "the head alone records nothing");
    resp.into_body().collect().await.unwrap();
    assert_eq!(count(&stats), 1);
    assert_eq!(active.get(), 0);
    assert_eq!(target.upstream_first_byte.count(), 1);
}

#[test]
fn grpc_status_reads_a_number_from_a_head_or_trailers() {
    let mut h = http::HeaderMap::new();
    assert_eq!(grpc_status(&h), None);
    h.insert("grpc-status", http::HeaderValue::from_static("14"));
    assert_eq!(grpc_status(&h), Some(14));
    h.insert("grpc-status", http::HeaderValue::from_static("nope"));
    assert_eq!(grpc_status(&h), None);
}
