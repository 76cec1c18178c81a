//! The request path of an HTTP listener: route, pick, forward, answer, count.
//!
//! Per request: one read of the current tables (an `ArcSwap` guard, no refcount traffic on
//! the tables themselves), one `Arc` clone of the chosen target, a route scan, a relaxed
//! atomic add for round robin, and the URI rewrite. No lock, no Python.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::headers::strip_hop_by_hop;
use super::{local_reply, ProxyBody};
use crate::engine::Shared;

/// Serve one request that arrived on the listener in `slot` from the client at `peer`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    slot: usize,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let target = {
        let tables = shared.tables.load();
        let Some(listener) = tables.listener(slot) else {
            // The listener was removed from the config while this connection was open.
            return Ok(local_reply(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n"));
        };
        match listener.router.find(req.uri().path()) {
            Some(route) => Arc::clone(route.pick()),
            None => {
                listener.unrouted.record(404);
                return Ok(local_reply(StatusCode::NOT_FOUND, "no route matched\n"));
            }
        }
    };

    // --- load balancing: pick an endpoint in rotation; `in_flight` counts the request on it
    // (least_request, ewma) until the response head is back.
    let Some((endpoint, mut in_flight)) = target.cluster.pick(&req, peer) else {
        let resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        target.counters.record(resp.status().as_u16());
        target.route_stats.duration.record(start.elapsed());
        return Ok(resp);
    };
    let endpoint = endpoint.clone();
    // --- end load balancing
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(endpoint);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let resp = match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            strip_hop_by_hop(req.headers_mut());
            forward(&target.cluster, req).await
        }
        Err(_) => local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    // A local 502/503 here means the endpoint gave no answer (connect failure, reset).
    if matches!(resp.body(), Either::Right(_)) && resp.status().is_server_error() {
        in_flight.failed();
    }
    target.counters.record(resp.status().as_u16());
    target.route_stats.duration.record(start.elapsed());
    Ok(resp)
}

async fn forward(cluster: &crate::cluster::Cluster, req: Request<Incoming>) -> Response<ProxyBody> {
    match cluster.upstream.client.request(req).await {
        Ok(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            resp.map(Either::Left)
        }
        // The connector already counted the failure; nothing reached the upstream.
        Err(e) if e.is_connect() => local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect failed\n"),
        Err(_) => {
            cluster.upstream.stats.upstream_errors.inc();
            local_reply(StatusCode::BAD_GATEWAY, "upstream request failed\n")
        }
    }
}
