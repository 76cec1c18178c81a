"""Counters and gauges: JSON stats and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..deps import HostDep

router = APIRouter(tags=["observability"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/stats", summary="Counters and gauges of the data plane, and the config version")
def stats(host: HostDep) -> dict[str, Any]:
    return host.stats()


@router.get(
    "/metrics",
    summary="Prometheus text exposition",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
)
def metrics(host: HostDep) -> Response:
    return Response(host.metrics_text(), headers={"content-type": PROMETHEUS_TEXT})
