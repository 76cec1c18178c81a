"""The live tap: finished requests streamed as server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from pymesh._core import Tap
from pymesh.errors import ApplyError

from ..auth import authenticate
from ..deps import HostDep

router = APIRouter(tags=["observability"], dependencies=[Depends(authenticate)])

POLL_S = 0.25
"""Seconds one wait for a record lasts: how soon a disconnected client is noticed."""
KEEPALIVE_S = 1.0
"""An idle stream sends an SSE comment this often, so clients can check their own deadlines
and a vanished client is noticed by the failed write."""

_STATUS = r"^[1-5]([0-9][0-9]|xx)$"


@router.get(
    "/tap",
    summary="Live request summaries as server-sent events, filtered",
    description="One `data:` event per finished HTTP request that every given filter takes, "
    "a JSON object with `time`, `listener`, `route`, `cluster`, `method`, `authority`, "
    "`path`, `status`, `flags` (Envoy response flags, `-` for none), `duration_ms`, "
    "`endpoint`, `attempts`, `trace_id` and `request_id`. Idle streams get a `: keep-alive` "
    "comment every second. A client that reads too slowly loses events (counted in "
    "`pymesh_tap_dropped_total`); nothing is recorded while nobody listens.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def tap(
    host: HostDep,
    request: Request,
    *,
    listener: Annotated[str | None, Query(description="Only this listener.")] = None,
    route: Annotated[str | None, Query(description="Only this route.")] = None,
    cluster: Annotated[str | None, Query(description="Only this cluster.")] = None,
    status: Annotated[
        str | None,
        Query(pattern=_STATUS, description="Only this status (`503`) or class (`5xx`)."),
    ] = None,
    path_prefix: Annotated[
        str | None, Query(description="Only request paths that start with this.")
    ] = None,
) -> StreamingResponse:
    try:
        sub = host.tap(
            listener=listener, route=route, cluster=cluster, status=status, path_prefix=path_prefix
        )
    except ApplyError as e:  # the pattern above should have caught it
        raise HTTPException(422, str(e)) from None
    return StreamingResponse(
        _events(sub, request),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _events(sub: Tap, request: Request) -> AsyncIterator[str]:
    try:
        yield ": tap open\n\n"
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            event = await anyio.to_thread.run_sync(sub.next, POLL_S)
            if event is not None:
                quiet_since = time.monotonic()
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
            elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
    finally:
        # Leave even when cancelled; close() may wait for a next() in flight (<= POLL_S).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sub.close)
