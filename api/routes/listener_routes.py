"""Routes within a listener: list, get, create, replace, delete. A route is named by its
``name``, or ``route-N`` (its index) when it has none. Order matters (the first match wins):
POST appends, or inserts before ``?index=N``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from pymesh.config import route_name

from ..auth import WriteToken, authenticate
from ..changes import (
    Items,
    adding,
    applied,
    change,
    find_named,
    item_named,
    read_json,
    removing,
    replacing,
    serving,
)
from ..deps import HostDep, IfMatch
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied

router = APIRouter(
    prefix="/listeners/{listener}/routes", tags=["routes"], dependencies=[Depends(authenticate)]
)

ROUTE = {"$ref": "#/components/schemas/Route"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": ROUTE}}}}
WRITE: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: INVALID_CONFIG}


def _routes(listener: str) -> Items:
    """Where the routes of ``listener`` sit in the config (404 when it has no such listener)."""

    def routes(data: dict[str, Any]) -> list[Any]:
        items = data.setdefault("listeners", [])
        found: list[Any] = items[find_named(items, listener, "listener")].setdefault("routes", [])
        return found

    return routes


def _index(routes: list[Any], name: str) -> int:
    for i, r in enumerate(routes):
        given = r.get("name") if isinstance(r, dict) else None
        if (given if given is not None else f"route-{i}") == name:
            return i
    raise HTTPException(404, f"no route named {name!r}")


def _serving_routes(host: HostDep, listener: str, response: Response) -> list[dict[str, Any]]:
    for lst in serving(host, response).listeners:
        if lst.name == listener:
            return [
                {**r.model_dump(mode="json"), "name": route_name(r, i)}
                for i, r in enumerate(lst.routes)
            ]
    raise HTTPException(404, f"no listener named {listener!r}")


@router.get(
    "",
    summary="The routes of a listener, in match order",
    responses={
        200: {"content": {"application/json": {"schema": {"type": "array", "items": ROUTE}}}},
        404: NOT_FOUND,
    },
)
def list_routes(listener: str, host: HostDep, response: Response) -> list[dict[str, Any]]:
    return _serving_routes(host, listener, response)


@router.get(
    "/{name}",
    summary="One route",
    responses={200: {"content": {"application/json": {"schema": ROUTE}}}, 404: NOT_FOUND},
)
def get_route(listener: str, name: str, host: HostDep, response: Response) -> dict[str, Any]:
    for r in _serving_routes(host, listener, response):
        if r["name"] == name:
            return r
    raise HTTPException(404, f"no route named {name!r}")


@router.post(
    "",
    summary="Add a route (at the end, or before position `index`)",
    status_code=201,
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def create_route(
    *,
    listener: str,
    request: Request,
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
    index: int | None = Query(None, ge=0, le=100_000, description="Insert at this position."),
) -> ConfigApplied:
    edit = adding(_routes(listener), _index, await read_json(request), "route", at=index)
    done, _ = await change(host, edit, token=token, if_match=if_match)
    return applied(host, done, response)


@router.put(
    "/{name}",
    summary="Replace a route in place (or append it)",
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def replace_route(
    *,
    listener: str,
    name: str,
    request: Request,
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
) -> ConfigApplied:
    body = item_named(await read_json(request), name, "route")
    edit = replacing(_routes(listener), _index, name, body)
    done, _ = await change(host, edit, token=token, if_match=if_match)
    return applied(host, done, response)


@router.delete("/{name}", summary="Remove a route", response_model=ConfigApplied, responses=WRITE)
async def delete_route(
    *,
    listener: str,
    name: str,
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
) -> ConfigApplied:
    done, _ = await change(
        host, removing(_routes(listener), _index, name), token=token, if_match=if_match
    )
    return applied(host, done, response)
