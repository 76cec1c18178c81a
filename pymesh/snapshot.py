"""The snapshot: a MeshConfig resolved into the exact JSON form ``Core.apply`` accepts.

Every field of the snapshot is explicit (defaults filled in: route names ``route-<index>``,
durations as whole milliseconds), because the core refuses missing and unknown fields.
"""

from __future__ import annotations

import json
from typing import Any

from pymesh.config import (
    AccessLog,
    Certificate,
    Cluster,
    HashOn,
    HeaderActions,
    HeaderMatch,
    HealthCheck,
    Limits,
    Listener,
    ListenerTls,
    MeshConfig,
    QueryMatch,
    Rewrite,
    Route,
    RouteMatch,
    WeightedCluster,
    route_name,
)
from pymesh.durations import to_millis
from pymesh.policy import cluster_snapshot, route_snapshot
from pymesh.tracing import tracing_snapshot

__all__ = ["to_snapshot", "to_snapshot_json"]


def to_snapshot(cfg: MeshConfig, version: int) -> dict[str, Any]:
    """The snapshot as plain data."""
    return {
        "version": version,
        "listeners": [
            _listener(lst, [route_snapshot(cfg, i, j) for j in range(len(lst.routes))])
            for i, lst in enumerate(cfg.listeners)
        ],
        "clusters": [
            {**_cluster(c), "policy": cluster_snapshot(cfg, i)} for i, c in enumerate(cfg.clusters)
        ],
        "tracing": tracing_snapshot(cfg.tracing),
    }


def to_snapshot_json(cfg: MeshConfig, version: int) -> str:
    """The snapshot as the JSON text ``Core.apply`` takes."""
    return json.dumps(to_snapshot(cfg, version), separators=(",", ":"))


def _to(dests: list[WeightedCluster]) -> list[dict[str, Any]]:
    return [{"cluster": d.cluster, "weight": d.weight} for d in dests]


def _listener(lst: Listener, policies: list[dict[str, Any] | None]) -> dict[str, Any]:
    """``policies[j]``: the resolved policy of route ``j`` (pymesh/policy.py)."""
    passthrough = lst.protocol == "tls-passthrough"
    return {
        "name": lst.name,
        "listen": lst.listen,
        "protocol": lst.protocol,
        "routes": []
        if passthrough
        else [{**_route(route, i), "policy": policies[i]} for i, route in enumerate(lst.routes)],
        "tls": None if lst.tls is None else _listener_tls(lst.tls),
        "to": _to(lst.to),
        "sni_routes": [
            {"name": route_name(route, i), "sni": route.match.sni, "to": _to(route.to or [])}
            for i, route in enumerate(lst.routes)
        ]
        if passthrough
        else [],
        "idle_timeout_ms": to_millis(lst.idle_timeout),
        "limits": _limits(lst.limits) if lst.protocol == "http" else None,
        "access_log": _access_log(lst.access_log),
    }


def _access_log(a: AccessLog | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "format": a.format,
        "template": a.effective_template(),
        "path": None if a.path in (None, "-") else a.path,
        "sample_percent": a.sample_percent,
    }


def _limits(lim: Limits) -> dict[str, Any]:
    return {
        "max_request_headers": lim.max_request_headers,
        "max_request_header_bytes": lim.max_request_header_bytes,
        "header_read_timeout_ms": to_millis(lim.header_read_timeout),
        "idle_timeout_ms": to_millis(lim.idle_timeout),
        "max_concurrent_streams": lim.max_concurrent_streams,
        "max_request_body_bytes": lim.max_request_body_bytes,
    }


def _certificate(c: Certificate) -> dict[str, Any]:
    return {"cert": c.cert, "key": c.key}


def _listener_tls(t: ListenerTls) -> dict[str, Any]:
    return {
        "certificates": [_certificate(c) for c in t.all_certificates()],
        "alpn": list(t.alpn),
        "min_version": t.min_version,
        "client_ca": t.client_ca,
        "require_client_certificate": t.require_client_certificate,
    }


def _route(route: Route, index: int) -> dict[str, Any]:
    rewrite = route.rewrite or Rewrite()
    redirect = route.redirect
    direct = route.direct_response
    return {
        "name": route_name(route, index),
        "match": _match(route.match),
        "to": [{"cluster": d.cluster, "weight": d.weight} for d in route.to or []],
        "direct_response": None
        if direct is None
        else {"status": direct.status, "body": direct.body},
        "redirect": None
        if redirect is None
        else {
            "status": redirect.status,
            "scheme": redirect.scheme,
            "host": redirect.host,
            "path": redirect.path,
            "prefix_rewrite": redirect.prefix_rewrite,
            "strip_query": redirect.strip_query,
        },
        "rewrite": {"path_prefix": rewrite.path_prefix, "host": rewrite.host},
        "request_headers": _header_actions(route.request_headers),
        "response_headers": _header_actions(route.response_headers),
    }


def _match(m: RouteMatch) -> dict[str, Any]:
    kind, value = m.path_condition()
    paths: dict[str, str | None] = {"path": None, "path_prefix": None, "path_regex": None}
    paths[kind] = value
    return {
        "host": m.host,
        **paths,
        "methods": list(m.methods),
        "headers": [_value_match(c) for c in m.headers],
        "query": [_value_match(c) for c in m.query],
    }


def _value_match(c: HeaderMatch | QueryMatch) -> dict[str, Any]:
    return {"name": c.name, "exact": c.exact, "regex": c.regex, "present": c.present}


def _header_actions(h: HeaderActions) -> dict[str, Any]:
    return {
        "set": [{"name": n, "value": v} for n, v in h.set.items()],
        "add": [{"name": n, "value": v} for n, v in h.add.items()],
        "remove": list(h.remove),
    }


def _cluster(c: Cluster) -> dict[str, Any]:
    return {
        "name": c.name,
        "endpoints": [{"address": e.address, "weight": e.weight} for e in c.weighted_endpoints()],
        "lb": c.lb,
        "hash_on": _hash_on(c.hash_on),
        "connect_timeout_ms": to_millis(c.connect_timeout),
        "max_idle_per_endpoint": c.pool.max_idle_per_endpoint,
        "idle_timeout_ms": to_millis(c.pool.idle_timeout),
        "health_check": _health_check(c.health_check),
        "panic_threshold_percent": c.panic_threshold_percent,
        "protocol": c.effective_protocol(),
        "tls": None
        if c.tls is None
        else {
            "sni": c.tls.sni,
            "ca": c.tls.ca,
            "client_certificate": None
            if c.tls.client_certificate is None
            else _certificate(c.tls.client_certificate),
        },
    }


def _hash_on(h: HashOn | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"header": h.header, "cookie": h.cookie, "source_ip": h.source_ip}


def _health_check(hc: HealthCheck | None) -> dict[str, Any] | None:
    if hc is None:
        return None
    return {
        "tcp": hc.tcp,
        "path": hc.http_path,
        "expected_statuses": list(hc.expected_statuses),
        "interval_ms": to_millis(hc.interval),
        "timeout_ms": to_millis(hc.timeout),
        "healthy_threshold": hc.healthy_threshold,
        "unhealthy_threshold": hc.unhealthy_threshold,
    }
