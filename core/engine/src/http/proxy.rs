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
//!
//! Traffic policies (policy/) run here, in this order: rate limit (429), fault injection
//! (delay, abort), circuit breaker admission (503), body buffering for replay, mirroring,
//! then the tries under the whole-request timeout (504), each try under its per-try timeout
//! and the pending-request limit, observed by outlier detection and retried as the retry
//! policy, the budget and the breaker allow. A route with no policy, to a cluster with no
//! breaker or outlier detection, takes the plain path and pays one branch for all of it.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, RETRY_AFTER, UPGRADE};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::time::Instant as TokioInstant;

use super::client::{ConnectionLimit, OutgoingBody, UpstreamError, UpstreamResponseBody};
use super::h1pool::{Encoded, H1Pool};
use super::headers::{has_token, strip_hop_by_hop};
use super::limits::{DownstreamBodyError, Refusals, Refused, RequestBody};
use super::{local_reply, ProxyBody};
use crate::cluster::Cluster;
use crate::engine::Shared;
use crate::metrics::ProtocolErrorKind;
use crate::observe::{Exchange, Flags, ObservedBody};
use crate::policy::breaker::{BreakerGuard, Limit};
use crate::policy::ratelimit::retry_after_secs;
use crate::policy::retry::{self, Tee};
use crate::policy::timeouts::{self, Kind, UpstreamBody};
use crate::policy::{RoutePolicy, TryOutcome};
use crate::router::{RouteAction, Target};
use crate::tables::ListenerKind;
use crate::workers::Deadline;

/// Bodies up to this size are buffered to mirror them when the route has no retry policy
/// (which brings its own `buffer_limit`).
const DEFAULT_BUFFER_LIMIT: u64 = 64 * 1024;

/// Answer one request that arrived on the listener in `slot` from the client at `peer`:
/// the refusal `limits::admit` made of it, or the request path's answer; what the request
/// path learns goes into `ex` (observe.rs), which the answer's body carries to its end.
///
/// One future from admission to answer, not several nested: each layer's future would be
/// moved whole into the one above it on every request. Written as a function returning an
/// `async move` block, not an `async fn`: an `async fn` stores its arguments twice in its
/// future (as captured and again as locals), and this future is copied into its box once per
/// request (1,344 bytes this way, 1,912 as an `async fn`).
#[allow(clippy::manual_async_fn, reason = "an async fn's future holds its arguments twice")]
pub(crate) fn handle(
    shared: Arc<Shared>,
    kind: Arc<ListenerKind>,
    slot: usize,
    peer: SocketAddr,
    mut req: Request<RequestBody>,
    mut ex: Exchange,
) -> impl std::future::Future<Output = Response<ObservedBody>> + Send + 'static {
    async move {
        let resp = 'answer: {
            let target = {
                let tables = shared.tables.load();
                let Some(listener) = tables.listener(slot) else {
                    // The listener was removed from the config while this connection was open.
                    break 'answer local_reply(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n");
                };
                // --- routing: match, then forward or answer locally (http/actions.rs) ---
                match listener.router.find(&req) {
                    Some(route) => {
                        ex.note_route(&route.name);
                        match &route.action {
                            RouteAction::Forward(weighted) => Arc::clone(weighted.pick()),
                            RouteAction::Local(local) => {
                                ex.route_stats = Some(local.route_stats());
                                break 'answer local.respond(&req);
                            }
                        }
                    }
                    None => {
                        ex.flags.set(Flags::NO_ROUTE);
                        listener.unrouted.record(404);
                        break 'answer local_reply(StatusCode::NOT_FOUND, "no route matched\n");
                    }
                }
            };

            let cluster = &target.cluster;
            ex.note_cluster(&cluster.name);
            ex.route_stats = Some(Arc::clone(&target.route_stats));
            ex.target_stats = Some(Arc::clone(&target.counters));
            // --- metrics: the body counts its bytes into the route's counter as it streams ---
            if !req.body().is_end_stream() {
                req.body_mut().count_into(Arc::clone(&target.route_stats));
            }
            cluster.policy.budget.record_request(ex.started());
            // The plain path: no policy beyond the whole-request timeout (on by default), to a
            // cluster with no breaker or outlier detection. One try, so the timeout is a deadline on
            // that try; the policy path's machinery (and its future, 3.6 KiB moved per request) is
            // boxed away for the routes that use it.
            let deadline = match target.policy.as_deref() {
                None => Some(None),
                Some(p) if p.only_timeout() => {
                    Some(p.timeout.map(|t| TokioInstant::from_std(ex.started()) + t))
                }
                Some(_) => None,
            };
            let plain = cluster.policy.breaker.is_none() && cluster.policy.outlier.is_none();
            let mut resp = if let (true, Some(deadline)) = (plain, deadline) {
                // --- load balancing: pick an endpoint in rotation; `in_flight` counts the request on
                // it (least_request, ewma) until the response head is back. None in rotation: 503.
                let Some((endpoint, mut in_flight)) = cluster.pick(req.headers(), peer) else {
                    ex.flags.set(Flags::NO_HEALTHY_UPSTREAM);
                    let resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
                    target.counters.record(resp.status().as_u16());
                    break 'answer resp;
                };
                // --- end load balancing
                let resp = match prepare(&target, &mut req) {
                    Ok(pq) => {
                        // --- routing: host rewrite and request header edits ---
                        target.actions.apply_request(req.headers_mut());
                        begin_try(endpoint, &mut ex);
                        let upgrade = is_upgrade(&req);
                        // --- a plaintext HTTP/1.1 cluster and no body: our own client sends the
                        // head as it is encoded here (http/h1pool.rs). Inline, and with `req`
                        // dropped first: only the head and our client's future are kept across
                        // the wait. Everything else goes through hyper, boxed.
                        match own_request(cluster, &mut req, &pq, upgrade) {
                            Some((h1, mut encoded)) => {
                                // Our own server writes the answer and no route edit reads its
                                // headers: the upstream's head may pass as read (h1pool.rs).
                                encoded.pass_head =
                                    req.body().read_by_own_server() && !target.actions.edits_response();
                                drop(req);
                                // Pinned where it is made, and raced by reference: moved
                                // into `Until` and with it into this future's state, the
                                // client's 376-byte future was copied four times.
                                let send = std::pin::pin!(h1.send(&encoded, endpoint));
                                match Until::new(deadline, send).await {
                                    Some(sent) => {
                                        let sent = sent.map(|r| r.map(UpstreamResponseBody::Own));
                                        answered(cluster, sent, None, &mut ex)
                                    }
                                    None => request_timed_out(cluster, &mut ex),
                                }
                            }
                            None => {
                                Box::pin(forward_hyper(
                                    cluster, endpoint, req, pq, upgrade, deadline, &mut ex,
                                ))
                                .await
                            }
                        }
                    }
                    Err(()) => local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
                };
                // --- load balancing: a local 502/503 here means the endpoint gave no answer (connect
                // failure, reset), which ewma must not take for a fast one.
                if matches!(resp.body(), Either::Right(_)) && resp.status().is_server_error() {
                    in_flight.failed();
                }
                resp
            } else {
                match prepare(&target, &mut req) {
                    Ok(pq) => {
                        target.actions.apply_request(req.headers_mut());
                        Box::pin(forward_with_policy(
                            &target,
                            target.policy.as_deref(),
                            peer,
                            req,
                            pq,
                            &mut ex,
                        ))
                        .await
                    }
                    Err(()) => local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
                }
            };
            // --- routing: response header edits ---
            target.actions.apply_response(resp.headers_mut());
            target.counters.record(resp.status().as_u16());
            // The duration is recorded when the response ends (observe.rs).
            resp
        };
        // --- hardening: a refusal the request path made (a body over the limit) is counted ---
        if let ListenerKind::Http(http) = &*kind {
            let refusals = Refusals { errors: &http.stats.protocol_errors, replies: &http.unrouted };
            if refusals.count(&resp) {
                ex.flags.set(Flags::DOWNSTREAM_PROTOCOL_ERROR);
            }
        }
        ex.finish(resp)
    }
}

/// The answer to a request `limits::admit` refused.
pub(crate) fn refused(refusal: Response<ProxyBody>, mut ex: Exchange) -> Response<ObservedBody> {
    ex.flags.set(Flags::DOWNSTREAM_PROTOCOL_ERROR);
    ex.finish(refusal)
}

/// The path and query sent upstream (with the route's prefix rewrite). An HTTP/2 request
/// carries its host only as `:authority`; it becomes the `Host` header here.
fn prepare(target: &Target, req: &mut Request<RequestBody>) -> Result<PathAndQuery, ()> {
    if !req.headers().contains_key(HOST) {
        if let Some(authority) = req.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
    }
    let pq = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    // --- routing: path-prefix rewrite ---
    Ok(target.actions.rewrite_path(Some(&pq)).unwrap_or(pq))
}

/// The URI of `pq` at `endpoint` of `cluster`.
fn upstream_uri(cluster: &Cluster, endpoint: &Authority, pq: PathAndQuery) -> Result<Uri, ()> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(cluster.upstream.scheme.clone());
    parts.authority = Some(endpoint.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| ())
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` plus `Upgrade: ...`)?
fn is_upgrade(req: &Request<RequestBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req.headers().get_all(CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// What every try records before it is sent.
fn begin_try(endpoint: &Authority, ex: &mut Exchange) {
    ex.note_endpoint(endpoint);
    ex.attempts += 1;
    ex.sending_upstream();
}

/// Our own HTTP/1.1 client and the request encoded for it, when it can carry `req`: a
/// plaintext HTTP/1.1 cluster, no body, no upgrade.
fn own_request<'c>(
    cluster: &'c Cluster,
    req: &mut Request<RequestBody>,
    pq: &PathAndQuery,
    upgrade: bool,
) -> Option<(&'c H1Pool, Encoded)> {
    let h1 = cluster.upstream.own_h1().filter(|_| !upgrade && req.body().is_end_stream())?;
    strip_hop_by_hop(req.headers_mut());
    Encoded::new(req.method(), pq.as_str(), req.headers(), None, Bytes::new()).map(|e| (h1, e))
}

/// One try to `endpoint` through hyper-util's client (bodies, upgrades, TLS and HTTP/2
/// clusters), no policy but the whole-request timeout's `deadline` on the wait for the
/// response head.
async fn forward_hyper(
    cluster: &Cluster,
    endpoint: &Authority,
    mut req: Request<RequestBody>,
    pq: PathAndQuery,
    upgrade: bool,
    deadline: Option<TokioInstant>,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    let protocol = if upgrade { req.headers().get(UPGRADE).cloned() } else { None };
    strip_hop_by_hop(req.headers_mut());
    match upstream_uri(cluster, endpoint, pq) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(()) => return local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
    }
    let upgrade = if upgrade {
        let downstream = hyper::upgrade::on(&mut req);
        req.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            req.headers_mut().insert(UPGRADE, p);
        }
        Some(downstream)
    } else {
        None
    };
    // hyper-util sends HTTP/1.1 or HTTP/2 by what the pooled connection speaks.
    *req.version_mut() = Version::HTTP_11;
    match Until::new(deadline, cluster.upstream.request(req.map(Either::Left))).await {
        Some(sent) => answered(cluster, sent, upgrade, ex),
        None => request_timed_out(cluster, ex),
    }
}

/// The response of one plain try, or the local reply its failure gets.
fn answered(
    cluster: &Cluster,
    result: Result<Response<UpstreamResponseBody>, UpstreamError>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    match result {
        Ok(mut resp) => {
            ex.upstream_answered(resp.headers());
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(downstream) = upgrade {
                    splice(downstream, hyper::upgrade::on(&mut resp));
                    return resp.map(|b| Either::Left(UpstreamBody::plain(b)));
                }
            }
            strip_hop_by_hop(resp.headers_mut());
            resp.map(|b| Either::Left(UpstreamBody::plain(b)))
        }
        Err(e) if chain_has::<ConnectionLimit>(&e) => overflow(Limit::Connections, ex),
        Err(e) if e.is_connect() && timed_out(&e) => {
            cluster.upstream.stats.timeouts[Kind::Connect as usize].inc();
            ex.flags.set(Flags::UPSTREAM_TIMEOUT);
            timeouts::reply(Kind::Connect)
        }
        // The connector already counted the failure; nothing reached the upstream.
        Err(e) if e.is_connect() => {
            ex.flags.set(Flags::UPSTREAM_CONNECT_FAILURE);
            local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect failed\n")
        }
        // --- hardening: the client's body broke the exchange (over the limit: 413; bad
        // framing: 400), not the upstream.
        Err(e) if DownstreamBodyError::status_of(&e).is_some() => downstream_body_reply(&e),
        Err(_) => {
            cluster.upstream.stats.upstream_errors.inc();
            ex.flags.set(Flags::UPSTREAM_RESET);
            local_reply(StatusCode::BAD_GATEWAY, "upstream request failed\n")
        }
    }
}

// === the policy path ===

async fn forward_with_policy(
    target: &Target,
    policy: Option<&RoutePolicy>,
    peer: SocketAddr,
    req: Request<RequestBody>,
    pq: PathAndQuery,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    let cluster = &target.cluster;
    if let Some(p) = policy {
        // --- policy: local rate limit (policy/ratelimit.rs) ---
        if let Some(limit) = &p.rate_limit {
            if let Err(wait) = limit.check(req.headers(), Some(peer.ip()), ex.started()) {
                p.stats.rate_limited.inc();
                ex.flags.set(Flags::RATE_LIMITED);
                let mut resp = local_reply(StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
                return resp;
            }
        }
        // --- policy: fault injection (policy/fault.rs) ---
        if let Some(fault) = &p.fault {
            if let Some(delay) = fault.delay() {
                p.stats.faults_delayed.inc();
                ex.flags.set(Flags::DELAY_INJECTED);
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = fault.abort() {
                p.stats.faults_aborted.inc();
                ex.flags.set(Flags::FAULT_INJECTED);
                let mut resp = local_reply(status, "fault injected\n");
                resp.headers_mut().insert("x-pymesh-fault", HeaderValue::from_static("abort"));
                return resp;
            }
        }
    }
    // --- policy: circuit breaker, requests in flight (policy/breaker.rs) ---
    let mut guard = match &cluster.policy.breaker {
        Some(b) => match b.admit(Limit::Requests) {
            Some(g) => Some(g),
            None => return overflow(Limit::Requests, ex),
        },
        None => None,
    };
    if is_upgrade(&req) {
        let Some((endpoint, _in_flight)) = cluster.pick(req.headers(), peer) else {
            ex.flags.set(Flags::NO_HEALTHY_UPSTREAM);
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        };
        // Boxed: upgrades are rare, and inline this future would enlarge every policed
        // request's.
        begin_try(endpoint, ex);
        return Box::pin(forward_hyper(cluster, endpoint, req, pq, true, None, ex)).await;
    }
    // --- policy: whole-request timeout (policy/timeouts.rs), kept as a deadline that each
    // wait in the tries honours, so that a request runs under one timer at a time ---
    let deadline = policy.and_then(|p| p.timeout).map(|t| TokioInstant::from_std(ex.started()) + t);

    // === the tries: buffer, mirror, then try, observe and retry as allowed, all before
    // `deadline`. In this fn, not one of its own, whose future would be moved whole into
    // this one's on every policed request. ===
    let stats = &cluster.upstream.stats;
    let retry = policy.and_then(|p| p.retry.as_ref());
    let mirror = policy.and_then(|p| p.mirror.as_ref()).filter(|m| m.wanted());
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);

    // --- policy: keep the body for replay or mirroring when it fits (policy/retry.rs): read
    // whole when its length is known, else streamed to the first try while a copy is kept ---
    let limit = retry.map_or(DEFAULT_BUFFER_LIMIT, |r| r.buffer_limit);
    let mut body = body;
    let mut copy = None;
    let (mut buffered, mut streamed): (Option<Bytes>, Option<OutgoingBody>) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if retry.is_some() || mirror.is_some() {
        let read = retry::buffer_known(&mut body, limit);
        let Some(read) = Until::new(deadline, read).await else {
            return request_timed_out(cluster, ex);
        };
        match read {
            Some(Ok(bytes)) => (Some(bytes), None),
            Some(Err(())) => {
                return local_reply(StatusCode::BAD_REQUEST, "request body could not be read\n");
            }
            None if retry.is_some() => {
                let (tee, kept) = Tee::new(body, limit);
                copy = Some(kept);
                (None, Some(Either::Right(Either::Right(tee))))
            }
            None => (None, Some(Either::Left(body))),
        }
    } else {
        (None, Some(Either::Left(body)))
    };

    // --- policy: mirroring (policy/mirror.rs), fire and forget ---
    if let (Some(m), Some(b)) = (mirror, &buffered) {
        m.send(&parts, pq.clone(), b.clone(), peer);
    }

    // --- a plaintext HTTP/1.1 cluster and the body in hand: the request is encoded once for
    // every try (http/h1pool.rs), so that no try clones headers or builds a request ---
    let encoded = match (cluster.upstream.own_h1(), &buffered) {
        (Some(h1), Some(b)) => {
            Encoded::new(&parts.method, pq.as_str(), &parts.headers, None, b.clone()).map(|e| (h1, e))
        }
        _ => None,
    };
    let per_try = policy.and_then(|p| p.per_try_timeout);
    let idle = policy.and_then(|p| p.idle_timeout);
    let mut done = 0u32;
    let mut _retry_place: Option<BreakerGuard> = None;
    loop {
        let last = (buffered.is_none() && copy.is_none()) || retry.is_none_or(|r| done >= r.attempts);
        // --- load balancing: an endpoint in rotation (outlier ejection takes endpoints out of
        // it); `in_flight` counts the try on it until its outcome is known ---
        let Some((index, endpoint, mut in_flight)) = cluster.pick_indexed(&parts.headers, peer) else {
            ex.flags.set(Flags::NO_HEALTHY_UPSTREAM);
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        };
        begin_try(endpoint, ex);
        // Encoded once (our own HTTP/1.1 client), or a request built for this try.
        let up = match &encoded {
            Some(_) => None,
            None => {
                let body: OutgoingBody = match (&buffered, streamed.take()) {
                    (Some(b), _) => Either::Right(Either::Left(Full::new(b.clone()))),
                    (None, Some(s)) => s,
                    (None, None) => return local_reply(StatusCode::BAD_GATEWAY, "upstream request failed\n"),
                };
                let mut up = Request::new(body);
                *up.method_mut() = parts.method.clone();
                *up.version_mut() = Version::HTTP_11;
                *up.headers_mut() =
                    if last { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
                let Ok(uri) = upstream_uri(cluster, endpoint, pq.clone()) else {
                    return local_reply(StatusCode::BAD_REQUEST, "bad request target\n");
                };
                *up.uri_mut() = uri;
                Some(up)
            }
        };

        // --- policy: circuit breaker, pending requests ---
        let pending = match &cluster.policy.breaker {
            Some(b) => match b.admit(Limit::Pending) {
                Some(g) => Some(g),
                None => return overflow(Limit::Pending, ex),
            },
            None => None,
        };
        let sent = async {
            match (up, &encoded) {
                // Boxed, as in `forward`: rarer than our own HTTP/1.1 client, and large.
                (Some(up), _) => Box::pin(cluster.upstream.request(up)).await,
                (None, Some((h1, e))) => h1.send(e, endpoint).await.map(|r| r.map(UpstreamResponseBody::Own)),
                (None, None) => unreachable!("a try has a request or an encoded one"),
            }
        };
        // --- policy: per-try timeout, or the request's deadline if that comes first ---
        // The first try counts from the request's arrival (microseconds earlier), which
        // spares a clock reading; a retry, after its backoff, from now.
        let began = || if done == 0 { TokioInstant::from_std(ex.started()) } else { TokioInstant::now() };
        let until = match (per_try, deadline) {
            (Some(d), Some(at)) => Some((began() + d).min(at)),
            (Some(d), None) => Some(began() + d),
            (None, at) => at,
        };
        let result = Until::new(until, sent).await;
        drop(pending);
        if result.is_none() && deadline.is_some_and(|at| TokioInstant::now() >= at) {
            return request_timed_out(cluster, ex);
        }
        let (outcome, resp) = match result {
            None => {
                stats.timeouts[Kind::PerTry as usize].inc();
                (TryOutcome::PerTryTimeout, None)
            }
            Some(Ok(resp)) => {
                ex.upstream_answered(resp.headers());
                let grpc = ex.grpc_status;
                (TryOutcome::Response { status: resp.status().as_u16(), grpc }, Some(resp))
            }
            Some(Err(e)) if chain_has::<ConnectionLimit>(&e) => return overflow(Limit::Connections, ex),
            Some(Err(e)) if e.is_connect() && timed_out(&e) => {
                stats.timeouts[Kind::Connect as usize].inc();
                (TryOutcome::ConnectTimeout, None)
            }
            Some(Err(e)) if e.is_connect() => (TryOutcome::ConnectFailure, None),
            // The client's body broke the exchange: its fault, answered at once, not retried.
            Some(Err(e)) if DownstreamBodyError::status_of(&e).is_some() => return downstream_body_reply(&e),
            Some(Err(e)) if refused_stream(&e) => (TryOutcome::RefusedStream, None),
            Some(Err(_)) => {
                stats.upstream_errors.inc();
                (TryOutcome::Reset, None)
            }
        };
        if resp.is_none() {
            in_flight.failed();
        }
        drop(in_flight);
        // --- policy: outlier detection observes every try (policy/outlier.rs) ---
        if let Some(outlier) = &cluster.policy.outlier {
            outlier.observe(index, outcome);
        }
        // --- policy: a streamed body that went through whole can be replayed from its copy ---
        if buffered.is_none() {
            if let Some(kept) = copy.take() {
                buffered = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).whole();
            }
        }
        let last = last || buffered.is_none();
        // --- policy: retry, within the attempts, the budget and the breaker ---
        if let Some(r) = retry.filter(|r| !last && r.retries(outcome, &parts.method)) {
            let place = match &cluster.policy.breaker {
                Some(b) => b.admit(Limit::Retries).map(Some),
                None => Some(None),
            };
            if let Some(place) = place {
                if cluster.policy.budget.try_retry(r.budget_percent, r.min_retries_per_second) {
                    done += 1;
                    stats.retries.inc();
                    _retry_place = place;
                    drop(resp);
                    let wake = TokioInstant::now() + r.backoff(done);
                    match deadline {
                        Some(at) if wake >= at => {
                            tokio::time::sleep_until(at).await;
                            return request_timed_out(cluster, ex);
                        }
                        _ => tokio::time::sleep_until(wake).await,
                    }
                    continue;
                }
                stats.budget_exhausted.inc();
            }
            ex.flags.set(Flags::RETRY_LIMIT_EXCEEDED);
        } else if retry.is_some_and(|r| r.retries(outcome, &parts.method)) {
            ex.flags.set(Flags::RETRY_LIMIT_EXCEEDED);
        }
        return match (outcome, resp) {
            (_, Some(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                resp.map(|b| Either::Left(UpstreamBody::with_policy(b, idle, stats, guard.take())))
            }
            (TryOutcome::ConnectTimeout | TryOutcome::PerTryTimeout, None) => {
                ex.flags.set(Flags::UPSTREAM_TIMEOUT);
                let kind = if outcome == TryOutcome::ConnectTimeout { Kind::Connect } else { Kind::PerTry };
                timeouts::reply(kind)
            }
            (TryOutcome::ConnectFailure, None) => {
                ex.flags.set(Flags::UPSTREAM_CONNECT_FAILURE);
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect failed\n")
            }
            (_, None) => {
                ex.flags.set(Flags::UPSTREAM_RESET);
                local_reply(StatusCode::BAD_GATEWAY, "upstream request failed\n")
            }
        };
    }
}

pin_project_lite::pin_project! {
    /// `fut`'s output, or None if `deadline` came first: `tokio::time::timeout_at` without
    /// a timer when there is no deadline, with a worker's reused timer when there is one
    /// (workers.rs `Deadline`), and as a plain future rather than an `async fn`, which would
    /// hold `fut` twice.
    struct Until<F> {
        #[pin]
        fut: F,
        deadline: Option<Deadline>,
    }
}

impl<F: std::future::Future> Until<F> {
    fn new(deadline: Option<TokioInstant>, fut: F) -> Self {
        Self { fut, deadline: deadline.map(Deadline::at) }
    }
}

impl<F: std::future::Future> std::future::Future for Until<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(out) = this.fut.poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        match this.deadline.as_mut().map(|d| d.poll(cx)) {
            Some(std::task::Poll::Ready(())) => std::task::Poll::Ready(None),
            _ => std::task::Poll::Pending,
        }
    }
}

/// The 504 of the whole-request timeout, counted.
fn request_timed_out(cluster: &Cluster, ex: &mut Exchange) -> Response<ProxyBody> {
    cluster.upstream.stats.timeouts[Kind::Request as usize].inc();
    ex.flags.set(Flags::UPSTREAM_TIMEOUT);
    timeouts::reply(Kind::Request)
}

/// 413 or 400 for a request whose own body failed on its way upstream; the connection
/// closes, since the rest of that body is not read.
fn downstream_body_reply(e: &UpstreamError) -> Response<ProxyBody> {
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

/// The 503 of a tripped circuit breaker, at once, with `x-pymesh-overflow` saying so.
fn overflow(limit: Limit, ex: &mut Exchange) -> Response<ProxyBody> {
    ex.flags.set(Flags::UPSTREAM_OVERFLOW);
    let text = match limit {
        Limit::Connections => "circuit breaker open: too many upstream connections\n",
        Limit::Pending => "circuit breaker open: too many pending requests\n",
        Limit::Requests => "circuit breaker open: too many requests\n",
        Limit::Retries => "circuit breaker open: too many retries\n",
    };
    let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, text);
    resp.headers_mut().insert("x-pymesh-overflow", HeaderValue::from_static("circuit-breaker"));
    resp
}

/// Whether any error in `e`'s source chain is a `T`.
fn chain_has<T: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A connect that failed because the connect timeout fired.
fn timed_out(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An HTTP/2 REFUSED_STREAM: the server did not process the request.
fn refused_stream(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) == Some(h2::Reason::REFUSED_STREAM) {
            return true;
        }
        cur = err.source();
    }
    false
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
