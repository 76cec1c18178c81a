"""Liveness, readiness and draining."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response
from starlette.background import BackgroundTasks

from pymesh.errors import CoreError
from pymesh.host import Host

from ..auth import WriteToken
from ..deps import HostDep
from ..schemas import Draining, Live, Ready

router = APIRouter(tags=["health"])


@router.get("/live", response_model=Live, summary="The process answers (no token needed)")
def live() -> Live:
    return Live(live=True)


@router.get(
    "/ready",
    response_model=Ready,
    summary="A config is serving, its listeners are bound, not draining (no token needed)",
    responses={503: {"model": Ready, "description": "No config yet, or draining."}},
)
def ready(host: HostDep, response: Response) -> Ready:
    is_ready = host.ready
    if not is_ready:
        response.status_code = 503
    return Ready(ready=is_ready, version=host.version, listeners=host.listeners())


@router.post(
    "/drain",
    response_model=Draining,
    status_code=202,
    summary="Start draining: /ready turns 503, listeners stop accepting, open connections "
    "finish (up to drain_timeout); the process keeps running until stopped",
)
def drain(host: HostDep, token: WriteToken, background: BackgroundTasks) -> Draining:
    if not host.draining:
        host.begin_drain()
        config = host.config
        seconds = config.drain_timeout.total_seconds() if config is not None else 5.0
        background.add_task(_drain, host, seconds)
    return Draining(draining=True)


def _drain(host: Host, seconds: float) -> None:
    with contextlib.suppress(CoreError):
        host.drain(seconds)
