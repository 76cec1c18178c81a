"""Effective traffic policies: what the policy engine resolved, and where each value came
from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from pymesh.policy import effective

from ..deps import HostDep

router = APIRouter(prefix="/policy", tags=["policy"])


@router.get(
    "/effective",
    summary="The effective value of every policy setting of a route and/or a cluster, and the "
    "level (built-in, defaults, listener, route, cluster) and config path it came from",
    responses={404: {"description": "No config yet, or no such route or cluster."}},
)
def get_effective(
    host: HostDep,
    route: str | None = Query(default=None, description="`LISTENER/ROUTE`"),
    cluster: str | None = Query(default=None, description="A cluster's name"),
) -> dict[str, Any]:
    if route is None and cluster is None:
        raise HTTPException(422, "give route=LISTENER/ROUTE, cluster=NAME, or both")
    cfg = host.config
    if cfg is None:
        raise HTTPException(404, "no config has been applied yet")
    result = effective(cfg, route, cluster)
    if isinstance(result, str):
        raise HTTPException(404, result)
    result["version"] = host.version
    return result
