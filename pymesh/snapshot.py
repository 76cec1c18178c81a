"""The snapshot: a MeshConfig resolved into the exact JSON form ``Core.apply`` accepts.

Every field of the snapshot is explicit (defaults filled in: route names ``route-<index>``,
durations as whole milliseconds), because the core refuses missing and unknown fields.
"""

from __future__ import annotations

import json
from typing import Any

from pymesh.config import Cluster, HashOn, HealthCheck, Listener, MeshConfig, route_name
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


def _listener(lst: Listener) -> dict[str, Any]:
    return {
        "name": lst.name,
        "listen": lst.listen,
        "routes": [
            {
                "name": route_name(route, i),
                "match": {"path": route.match.path, "path_prefix": route.match.path_prefix},
                "to": [{"cluster": d.cluster, "weight": d.weight} for d in route.to],
            }
            for i, route in enumerate(lst.routes)
        ],
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
