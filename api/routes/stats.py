"""Counters and gauges: JSON stats and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from ..auth import AuthFailures, authenticate
from ..deps import HostDep

router = APIRouter(tags=["observability"], dependencies=[Depends(authenticate)])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/stats", summary="Counters and gauges of the data plane, and the config version")
def stats(host: HostDep) -> dict[str, Any]:
    return host.stats()


@router.get(
    "/metrics",
    summary="Prometheus text exposition (the core's metrics and the admin API's own)",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
)
def metrics(host: HostDep, request: Request) -> Response:
    failures: AuthFailures = request.app.state.auth_failures
    text = host.metrics_text()
    if text and not text.endswith("\n"):
        text += "\n"
    return Response(text + failures.prometheus(), headers={"content-type": PROMETHEUS_TEXT})
