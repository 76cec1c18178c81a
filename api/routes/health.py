"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import HostDep
from ..schemas import Live, Ready

router = APIRouter(tags=["health"])


@router.get("/live", response_model=Live, summary="The process answers")
def live() -> Live:
    return Live(live=True)


@router.get(
    "/ready",
    response_model=Ready,
    summary="A config is serving and the proxy is not draining",
    responses={503: {"model": Ready, "description": "No config yet, or draining."}},
)
def ready(host: HostDep, response: Response) -> Ready:
    is_ready = host.ready
    if not is_ready:
        response.status_code = 503
    return Ready(ready=is_ready, version=host.version, listeners=host.listeners())
