"""Endpoints of a cluster: register (optionally with a TTL), heartbeat, deregister.

Registering or deregistering changes the cluster's ``endpoints`` and so makes a new config
version; a heartbeat only extends a lease (no new version). An endpoint whose lease runs out
is deregistered by the app's lease loop (``api.app``), as a version whose source is ``ttl``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response

from pymesh.durations import parse_duration
from pymesh.errors import ConfigError

from ..auth import WriteToken, authenticate
from ..changes import applied, change, find_named, serving
from ..deps import HostDep, IfMatch, LeasesDep
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied, EndpointRegistration, EndpointState
from .clusters import cluster_states, endpoint_address

router = APIRouter(
    prefix="/clusters/{cluster}/endpoints",
    tags=["endpoints"],
    dependencies=[Depends(authenticate)],
)

WRITE: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: INVALID_CONFIG}
MIN_TTL, MAX_TTL = 1.0, 86_400.0


def _endpoints(data: dict[str, Any], cluster: str) -> list[Any]:
    items = data.setdefault("clusters", [])
    endpoints: list[Any] = items[find_named(items, cluster, "cluster")].setdefault("endpoints", [])
    return endpoints


def _position(endpoints: list[Any], address: str) -> int | None:
    for i, entry in enumerate(endpoints):
        if endpoint_address(entry) == address:
            return i
    return None


@router.get(
    "",
    summary="The endpoints of a cluster, with health, ejection and lease state",
    response_model=list[EndpointState],
    responses={404: NOT_FOUND},
)
def list_endpoints(
    *, cluster: str, host: HostDep, leases: LeasesDep, response: Response
) -> list[EndpointState]:
    for state in cluster_states(host, leases, response):
        if state.name == cluster:
            return state.endpoints
    raise HTTPException(404, f"no cluster named {cluster!r}")


@router.post(
    "",
    summary="Register an endpoint (201; 200 if it was registered: its lease restarts)",
    status_code=201,
    response_model=ConfigApplied,
    responses={**WRITE, 200: {"model": ConfigApplied, "description": "Already registered."}},
)
async def register_endpoint(
    *,
    cluster: str,
    response: Response,
    host: HostDep,
    leases: LeasesDep,
    token: WriteToken,
    if_match: IfMatch,
    registration: EndpointRegistration,
) -> ConfigApplied:
    ttl = _ttl(registration.ttl)
    address = registration.address
    entry: Any = (
        address
        if registration.weight is None
        else {"address": address, "weight": registration.weight}
    )
    existing = serving(host)
    for c in existing.clusters:
        if c.name == cluster and address in {
            endpoint_address(e) for e in c.model_dump(mode="json")["endpoints"]
        }:
            # Already there: restart (or clear) its lease; no new version.
            _lease(leases, cluster, address, ttl)
            response.status_code = 200
            response.headers["ETag"] = f'"{host.version}"'
            return ConfigApplied(version=host.version, listeners=host.listeners())

    def add(data: dict[str, Any]) -> None:
        endpoints = _endpoints(data, cluster)
        if _position(endpoints, address) is None:
            endpoints.append(entry)

    done, _ = await change(host, add, token=token, if_match=if_match)
    _lease(leases, cluster, address, ttl)
    return applied(host, done, response)


@router.post(
    "/{address}/heartbeat",
    summary="Extend an endpoint's lease by its TTL (no new version)",
    response_model=EndpointState,
    responses={404: NOT_FOUND},
)
def heartbeat(
    *, cluster: str, address: str, host: HostDep, leases: LeasesDep, token: WriteToken
) -> EndpointState:
    lease = leases.heartbeat(cluster, address)
    if lease is None:
        raise HTTPException(404, f"endpoint {address!r} of cluster {cluster!r} has no lease")
    return EndpointState(address=address, lease_ttl=lease.ttl, lease_expires_in=lease.expires_in)


@router.delete(
    "/{address}",
    summary="Deregister an endpoint (422 if it is the cluster's last)",
    response_model=ConfigApplied,
    responses=WRITE,
)
async def deregister_endpoint(
    *,
    cluster: str,
    address: str,
    response: Response,
    host: HostDep,
    leases: LeasesDep,
    token: WriteToken,
    if_match: IfMatch,
) -> ConfigApplied:
    def remove(data: dict[str, Any]) -> None:
        endpoints = _endpoints(data, cluster)
        i = _position(endpoints, address)
        if i is None:
            raise HTTPException(404, f"cluster {cluster!r} has no endpoint {address!r}")
        del endpoints[i]

    done, _ = await change(host, remove, token=token, if_match=if_match)
    leases.drop(cluster, address)
    return applied(host, done, response)


def _ttl(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as e:
        raise ConfigError.single("body.ttl", str(e)) from None
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise ConfigError.single("body.ttl", "must be between 1s and 24h")
    return seconds


def _lease(leases: LeasesDep, cluster: str, address: str, ttl: float | None) -> None:
    if ttl is None:
        leases.drop(cluster, address)
    else:
        leases.grant(cluster, address, ttl)
