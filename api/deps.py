"""Dependencies of the route handlers, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pymesh.host import Host


def get_host(request: Request) -> Host:
    """The Host this app was built around (``create_app(host)``)."""
    host: Host = request.app.state.host
    return host


HostDep = Annotated[Host, Depends(get_host)]
