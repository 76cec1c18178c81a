"""Dependencies of the route handlers, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from pymesh.host import Host
from pymesh.leases import Leases


def get_host(request: Request) -> Host:
    """The Host this app was built around (``create_app(host)``)."""
    host: Host = request.app.state.host
    return host


def get_leases(request: Request) -> Leases:
    """The endpoint leases of this app's host."""
    leases: Leases = request.app.state.leases
    return leases


def if_match(
    if_match: Annotated[
        str | None,
        Header(
            description='Apply only if the serving config is this version (an ETag, `"N"`); '
            "otherwise 409 and nothing changes."
        ),
    ] = None,
) -> int | None:
    """The version an ``If-Match`` header names (None: no condition)."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HTTPException(400, 'If-Match must be a config ETag, like "3"')
    return int(text)


HostDep = Annotated[Host, Depends(get_host)]
LeasesDep = Annotated[Leases, Depends(get_leases)]
IfMatch = Annotated[int | None, Depends(if_match)]
