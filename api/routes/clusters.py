"""Clusters: list, get (with each endpoint's health and ejection state as the data plane
reports it), create, replace, delete. Each change is a new config version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from pymesh.host import Host
from pymesh.leases import Leases

from ..auth import WriteToken, authenticate
from ..changes import (
    adding,
    applied,
    change,
    item_named,
    read_json,
    removing,
    replacing,
    serving,
    top_level,
)
from ..deps import HostDep, IfMatch, LeasesDep
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ClusterState, ConfigApplied, EndpointState

router = APIRouter(prefix="/clusters", tags=["clusters"], dependencies=[Depends(authenticate)])

CLUSTER = {"$ref": "#/components/schemas/Cluster"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": CLUSTER}}}}
WRITE: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: INVALID_CONFIG}
ITEMS = top_level("clusters", "cluster")


def endpoint_address(entry: Any) -> str:
    """The address of a cluster's endpoint entry (``host:port`` or ``{address, ...}``)."""
    if isinstance(entry, dict):
        return str(entry.get("address"))
    return str(entry)


def cluster_states(host: Host, leases: Leases, response: Response) -> list[ClusterState]:
    """Every cluster's config, joined with what the core's stats say about it and its
    endpoints. The core may report per-endpoint state as ``endpoint_status`` (a list of
    objects with an ``address``); whatever it reports is passed through, and absent fields
    stay null."""
    cfg = serving(host, response)
    core_clusters = host.stats().get("clusters")
    if not isinstance(core_clusters, dict):
        core_clusters = {}
    out: list[ClusterState] = []
    for cluster in cfg.clusters:
        spec = cluster.model_dump(mode="json")
        stats = core_clusters.get(cluster.name)
        stats = dict(stats) if isinstance(stats, dict) else {}
        reported = stats.pop("endpoint_status", None)
        by_address: dict[str, dict[str, Any]] = {}
        if isinstance(reported, list):
            for item in reported:
                if isinstance(item, dict) and "address" in item:
                    by_address[str(item["address"])] = item
        endpoints = []
        for entry in spec["endpoints"]:
            address = endpoint_address(entry)
            state: dict[str, Any] = dict(entry) if isinstance(entry, dict) else {}
            state.update(by_address.get(address, {}))
            state["address"] = address
            lease = leases.get(cluster.name, address)
            if lease is not None:
                state["lease_ttl"] = lease.ttl
                state["lease_expires_in"] = lease.expires_in
            endpoints.append(EndpointState.model_validate(state))
        out.append(ClusterState(name=cluster.name, spec=spec, endpoints=endpoints, stats=stats))
    return out


@router.get(
    "",
    summary="Every cluster: config, endpoints with health and ejection state, counters",
    response_model=list[ClusterState],
)
def list_clusters(host: HostDep, leases: LeasesDep, response: Response) -> list[ClusterState]:
    return cluster_states(host, leases, response)


@router.get(
    "/{name}", summary="One cluster", response_model=ClusterState, responses={404: NOT_FOUND}
)
def get_cluster(name: str, host: HostDep, leases: LeasesDep, response: Response) -> ClusterState:
    for state in cluster_states(host, leases, response):
        if state.name == name:
            return state
    raise HTTPException(404, f"no cluster named {name!r}")


@router.post(
    "",
    summary="Add a cluster",
    status_code=201,
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def create_cluster(
    *, request: Request, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    edit = adding(*ITEMS, await read_json(request), "cluster")
    done, _ = await change(host, edit, token=token, if_match=if_match)
    return applied(host, done, response)


@router.put(
    "/{name}",
    summary="Replace a cluster (or add it)",
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def replace_cluster(
    *,
    name: str,
    request: Request,
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
) -> ConfigApplied:
    body = item_named(await read_json(request), name, "cluster")
    done, _ = await change(host, replacing(*ITEMS, name, body), token=token, if_match=if_match)
    return applied(host, done, response)


@router.delete(
    "/{name}",
    summary="Remove a cluster (422 while a route still sends to it)",
    response_model=ConfigApplied,
    responses=WRITE,
)
async def delete_cluster(
    *, name: str, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    done, _ = await change(host, removing(*ITEMS, name), token=token, if_match=if_match)
    return applied(host, done, response)
