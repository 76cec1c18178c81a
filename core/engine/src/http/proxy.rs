//! The request path of an HTTP listener: route, pick, forward, answer, count.
//!
//! Per request: one read of the current tables (an `ArcSwap` guard, no refcount traffic on
//! the tables themselves), one `Arc` clone of the chosen target, a route scan, a relaxed
//! atomic add for round robin, and the URI rewrite. No lock, no Python.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::headers::strip_hop_by_hop;
use super::{local_reply, ProxyBody};
use crate::engine::Shared;
use crate::router::RouteAction;

/// Serve one request that arrived on the listener in `slot`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    slot: usize,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let target = {
        let tables = shared.tables.load();
        let Some(listener) = tables.listener(slot) else {
            // The listener was removed from the config while this connection was open.
            return Ok(local_reply(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n"));
        };
        // --- routing: match, then forward or answer locally (http/actions.rs) ---
        match listener.router.find(&req) {
            Some(route) => match &route.action {
                RouteAction::Forward(weighted) => Arc::clone(weighted.pick()),
                RouteAction::Local(local) => return Ok(local.respond(&req, start)),
            },
            None => {
                listener.unrouted.record(404);
                return Ok(local_reply(StatusCode::NOT_FOUND, "no route matched\n"));
            }
        }
    };

    let endpoint = target.cluster.pick().clone();
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(endpoint);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // --- routing: path-prefix rewrite ---
    if let Some(rewritten) = target.actions.rewrite_path(parts.path_and_query.as_ref()) {
        parts.path_and_query = Some(rewritten);
    }
    let mut resp = match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            strip_hop_by_hop(req.headers_mut());
            // --- routing: host rewrite and request header edits ---
            target.actions.apply_request(req.headers_mut());
            forward(&target.cluster, req).await
        }
        Err(_) => local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    // --- routing: response header edits ---
    target.actions.apply_response(resp.headers_mut());
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
