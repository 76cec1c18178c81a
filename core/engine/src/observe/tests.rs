use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::{tap::Tap, Exchange, Flags, Observe};
use crate::http::local_reply;
use crate::metrics::RouteStats;

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
