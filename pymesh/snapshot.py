"""The snapshot: a MeshConfig resolved into the exact JSON form ``Core.apply`` accepts.

Every field of the snapshot is explicit (defaults filled in: route names ``route-<index>``,
durations as whole milliseconds), because the core refuses missing and unknown fields.
"""

from __future__ import annotations

import json
from typing import Any

from pymesh.config import (
    Certificate,
    Cluster,
    Listener,
    ListenerTls,
    MeshConfig,
    WeightedCluster,
    route_name,
)
from pymesh.durations import to_millis

__all__ = ["to_snapshot", "to_snapshot_json"]


def to_snapshot(cfg: MeshConfig, version: int) -> dict[str, Any]:
    """The snapshot as plain data."""
    return {
        "version": version,
        "listeners": [_listener(lst) for lst in cfg.listeners],
        "clusters": [_cluster(c) for c in cfg.clusters],
    }


def to_snapshot_json(cfg: MeshConfig, version: int) -> str:
    """The snapshot as the JSON text ``Core.apply`` takes."""
    return json.dumps(to_snapshot(cfg, version), separators=(",", ":"))


def _to(dests: list[WeightedCluster]) -> list[dict[str, Any]]:
    return [{"cluster": d.cluster, "weight": d.weight} for d in dests]


def _listener(lst: Listener) -> dict[str, Any]:
    passthrough = lst.protocol == "tls-passthrough"
    return {
        "name": lst.name,
        "listen": lst.listen,
        "protocol": lst.protocol,
        "routes": []
        if passthrough
        else [
            {
                "name": route_name(route, i),
                "match": {"path": route.match.path, "path_prefix": route.match.path_prefix},
                "to": _to(route.to),
            }
            for i, route in enumerate(lst.routes)
        ],
        "tls": None if lst.tls is None else _listener_tls(lst.tls),
        "to": _to(lst.to),
        "sni_routes": [
            {"name": route_name(route, i), "sni": route.match.sni, "to": _to(route.to)}
            for i, route in enumerate(lst.routes)
        ]
        if passthrough
        else [],
        "idle_timeout_ms": to_millis(lst.idle_timeout),
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


def _cluster(c: Cluster) -> dict[str, Any]:
    return {
        "name": c.name,
        "endpoints": list(c.endpoints),
        "lb": c.lb,
        "connect_timeout_ms": to_millis(c.connect_timeout),
        "max_idle_per_endpoint": c.pool.max_idle_per_endpoint,
        "idle_timeout_ms": to_millis(c.pool.idle_timeout),
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
