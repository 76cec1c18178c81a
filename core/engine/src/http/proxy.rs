//! The request path of an HTTP listener: route, pick, forward, answer, count.
//!
//! Per request: one read of the current tables (an `ArcSwap` guard, no refcount traffic on
//! the tables themselves), one `Arc` clone of the chosen target, a route scan, a relaxed
//! atomic add for round robin, and the URI rewrite. No lock, no Python.
//!
//! Either side may be HTTP/1.1 or HTTP/2: requests arrive as hyper requests whatever the
//! downstream protocol, and the cluster's client speaks what the cluster is configured for.
//! HTTP/1.1 upgrades (WebSocket) are forwarded with their upgrade headers and, once the
//! upstream answers 101, the two connections are spliced until either side closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::limits::{DownstreamBodyError, Refused, RequestBody};
use super::{local_reply, ProxyBody};
use crate::cluster::Cluster;
use crate::engine::Shared;
use crate::metrics::ProtocolErrorKind;
use crate::router::{RouteAction, Target};

/// Serve one request that arrived on the listener in `slot` from the client at `peer`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    slot: usize,
    peer: SocketAddr,
    mut req: Request<RequestBody>,
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

    // --- load balancing: pick an endpoint in rotation; `in_flight` counts the request on it
    // (least_request, ewma) until the response head is back. No endpoint in rotation: 503.
    let Some((endpoint, mut in_flight)) = target.cluster.pick(&req, peer) else {
        let resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        target.counters.record(resp.status().as_u16());
        target.route_stats.duration.record(start.elapsed());
        return Ok(resp);
    };
    // --- end load balancing
    let mut resp = match upstream_uri(&target, endpoint, &mut req) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            // --- routing: host rewrite and request header edits ---
            target.actions.apply_request(req.headers_mut());
            forward(&target.cluster, req).await
        }
        Err(()) => local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    // --- load balancing: a local 502/503 here means the endpoint gave no answer (connect
    // failure, reset), which ewma must not take for a fast one.
    if matches!(resp.body(), Either::Right(_)) && resp.status().is_server_error() {
        in_flight.failed();
    }
    // --- routing: response header edits ---
    target.actions.apply_response(resp.headers_mut());
    target.counters.record(resp.status().as_u16());
    target.route_stats.duration.record(start.elapsed());
    Ok(resp)
}

/// The request's URI pointed at `endpoint` of the target's cluster, with the route's path
/// rewrite. An HTTP/2 request carries its host only as `:authority`; it becomes the
/// `Host` header before the URI is rewritten.
fn upstream_uri(target: &Target, endpoint: &Authority, req: &mut Request<RequestBody>) -> Result<Uri, ()> {
    let cluster = &target.cluster;
    if !req.headers().contains_key(HOST) {
        if let Some(authority) = req.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(cluster.upstream.scheme.clone());
    parts.authority = Some(endpoint.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // --- routing: path-prefix rewrite ---
    if let Some(rewritten) = target.actions.rewrite_path(parts.path_and_query.as_ref()) {
        parts.path_and_query = Some(rewritten);
    }
    Uri::from_parts(parts).map_err(|_| ())
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` plus `Upgrade: ...`)?
fn is_upgrade(req: &Request<RequestBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

async fn forward(cluster: &Cluster, mut req: Request<RequestBody>) -> Response<ProxyBody> {
    let upgrade = if is_upgrade(&req) {
        let protocol = req.headers().get(UPGRADE).cloned();
        let downstream = hyper::upgrade::on(&mut req);
        strip_hop_by_hop(req.headers_mut());
        req.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            req.headers_mut().insert(UPGRADE, p);
        }
        Some(downstream)
    } else {
        strip_hop_by_hop(req.headers_mut());
        None
    };
    // hyper-util sends HTTP/1.1 or HTTP/2 by what the pooled connection speaks.
    *req.version_mut() = Version::HTTP_11;
    match cluster.upstream.request(req).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(downstream) = upgrade {
                    splice(downstream, hyper::upgrade::on(&mut resp));
                    return resp.map(Either::Left);
                }
            }
            strip_hop_by_hop(resp.headers_mut());
            resp.map(Either::Left)
        }
        // The connector already counted the failure; nothing reached the upstream.
        Err(e) if e.is_connect() => local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect failed\n"),
        // --- hardening: the client's body broke the exchange (over the limit: 413; bad
        // framing: 400), not the upstream.
        Err(e) if DownstreamBodyError::status_of(&e).is_some() => downstream_body_reply(&e),
        Err(_) => {
            cluster.upstream.stats.upstream_errors.inc();
            local_reply(StatusCode::BAD_GATEWAY, "upstream request failed\n")
        }
    }
}

/// 413 or 400 for a request whose own body failed on its way upstream; the connection
/// closes, since the rest of that body is not read.
fn downstream_body_reply(e: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
    let (status, text, kind) = match DownstreamBodyError::status_of(e) {
        Some(StatusCode::PAYLOAD_TOO_LARGE) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n", ProtocolErrorKind::BodyTooLarge)
        }
        _ => (StatusCode::BAD_REQUEST, "malformed request body\n", ProtocolErrorKind::Malformed),
    };
    let mut resp = local_reply(status, text);
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    // The listener counts it (http/limits.rs, `Refused`).
    resp.extensions_mut().insert(Refused(kind));
    resp
}

/// Once both sides have switched protocols, copy bytes both ways until either closes.
fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        if let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        }
    });
}
