"""The running configuration: read it, replace it.

PUT reads the raw body itself (rather than letting FastAPI validate a body parameter) so that
unparseable JSON and wrong shapes get the same 422 problem document, with dotted ``loc``s, as
every other invalid config. The body's schema is still declared for the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pymesh.config import load_config
from pymesh.documents import DocumentError, parse_json
from pymesh.errors import ConfigError
from pymesh.host import Host

from ..deps import HostDep
from ..problems import INVALID_CONFIG
from ..schemas import ConfigApplied

router = APIRouter(prefix="/config", tags=["config"])

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest config document PUT accepts."""

MESH_CONFIG_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/MeshConfig"}
"""The config's JSON Schema, placed among the OpenAPI components by ``create_app``."""

_ETAG = {"ETag": {"description": 'The config version, quoted: "N".', "schema": {"type": "string"}}}


@router.get(
    "",
    summary="The running config (durations as strings)",
    response_class=JSONResponse,
    responses={
        200: {"content": {"application/json": {"schema": MESH_CONFIG_SCHEMA}}, "headers": _ETAG},
        404: {"description": "No config has been applied yet."},
    },
)
def get_config(host: HostDep) -> JSONResponse:
    current = host.current
    if current is None:
        raise HTTPException(404, "no config has been applied yet")
    return JSONResponse(
        current.config.model_dump(mode="json"), headers={"ETag": _etag(current.version)}
    )


@router.put(
    "",
    summary="Validate and apply a new config",
    response_model=ConfigApplied,
    responses={
        200: {"headers": _ETAG},
        413: {"description": "Body too large."},
        422: INVALID_CONFIG,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MESH_CONFIG_SCHEMA}},
        }
    },
)
async def put_config(request: Request, response: Response, host: HostDep) -> ConfigApplied:
    body = await _read_body(request)
    try:
        data = parse_json(body)
    except DocumentError as e:
        raise ConfigError.single("body", str(e)) from None
    version = await run_in_threadpool(_load_and_apply, host, data)
    response.headers["ETag"] = _etag(version)
    return ConfigApplied(version=version, listeners=host.listeners())


def _load_and_apply(host: Host, data: object) -> int:
    return host.apply(load_config(data))


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"a config is at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"a config is at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _etag(version: int) -> str:
    return f'"{version}"'
