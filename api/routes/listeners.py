"""Listeners: list, get, create, replace, delete. Each change is a new config version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from ..auth import WriteToken, authenticate
from ..changes import applied, change, find_named, item_named, read_json, serving
from ..deps import HostDep, IfMatch
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied

router = APIRouter(prefix="/listeners", tags=["listeners"], dependencies=[Depends(authenticate)])

LISTENER = {"$ref": "#/components/schemas/Listener"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": LISTENER}}}}
WRITE: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: INVALID_CONFIG}


@router.get(
    "",
    summary="Every listener",
    responses={
        200: {"content": {"application/json": {"schema": {"type": "array", "items": LISTENER}}}}
    },
)
def list_listeners(host: HostDep, response: Response) -> list[dict[str, Any]]:
    return [lst.model_dump(mode="json") for lst in serving(host, response).listeners]


@router.get(
    "/{name}",
    summary="One listener",
    responses={200: {"content": {"application/json": {"schema": LISTENER}}}, 404: NOT_FOUND},
)
def get_listener(name: str, host: HostDep, response: Response) -> dict[str, Any]:
    for lst in serving(host, response).listeners:
        if lst.name == name:
            return lst.model_dump(mode="json")
    raise HTTPException(404, f"no listener named {name!r}")


@router.post(
    "",
    summary="Add a listener",
    status_code=201,
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def create_listener(
    *, request: Request, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    body = await read_json(request)

    def add(data: dict[str, Any]) -> None:
        items = data.setdefault("listeners", [])
        if isinstance(body, dict) and any(i.get("name") == body.get("name") for i in items):
            raise HTTPException(409, f"a listener named {body.get('name')!r} exists; PUT it")
        items.append(body)

    done, _ = await change(host, add, token=token, if_match=if_match)
    return applied(host, done, response)


@router.put(
    "/{name}",
    summary="Replace a listener (or add it)",
    response_model=ConfigApplied,
    responses=WRITE,
    openapi_extra=BODY,
)
async def replace_listener(
    *,
    name: str,
    request: Request,
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
) -> ConfigApplied:
    body = item_named(await read_json(request), name, "listener")

    def replace(data: dict[str, Any]) -> None:
        items = data.setdefault("listeners", [])
        try:
            items[find_named(items, name, "listener")] = body
        except HTTPException:
            items.append(body)

    done, _ = await change(host, replace, token=token, if_match=if_match)
    return applied(host, done, response)


@router.delete(
    "/{name}", summary="Remove a listener", response_model=ConfigApplied, responses=WRITE
)
async def delete_listener(
    *, name: str, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    def remove(data: dict[str, Any]) -> None:
        items = data.setdefault("listeners", [])
        del items[find_named(items, name, "listener")]

    done, _ = await change(host, remove, token=token, if_match=if_match)
    return applied(host, done, response)
