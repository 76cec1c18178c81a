"""Listeners: list, get, create, replace, delete. Each change is a new config version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

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
from ..deps import HostDep, IfMatch
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied

router = APIRouter(prefix="/listeners", tags=["listeners"], dependencies=[Depends(authenticate)])

LISTENER = {"$ref": "#/components/schemas/Listener"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": LISTENER}}}}
WRITE: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: INVALID_CONFIG}
ITEMS = top_level("listeners", "listener")


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
    edit = adding(*ITEMS, await read_json(request), "listener")
    done, _ = await change(host, edit, token=token, if_match=if_match)
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
    done, _ = await change(host, replacing(*ITEMS, name, body), token=token, if_match=if_match)
    return applied(host, done, response)


@router.delete(
    "/{name}", summary="Remove a listener", response_model=ConfigApplied, responses=WRITE
)
async def delete_listener(
    *, name: str, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    done, _ = await change(host, removing(*ITEMS, name), token=token, if_match=if_match)
    return applied(host, done, response)
