"""The whole config: read it, replace it, dry-run it, its history, rollback.

Bodies are read raw (rather than validated by FastAPI as a body parameter) so that unparseable
JSON and wrong shapes get the same 422 problem document, with dotted ``loc``s, as every other
invalid config. The body's schema is still declared for the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pymesh.config import load_config
from pymesh.errors import ConfigError

from ..auth import WriteToken, authenticate
from ..changes import applied, change, etag, read_json, serving
from ..deps import HostDep, IfMatch
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied, DryRun, VersionDetail, VersionSummary

router = APIRouter(prefix="/config", tags=["config"], dependencies=[Depends(authenticate)])

MAX_VERSION = 2**62
"""The largest version number a URL may name (SQLite integers are 64-bit)."""

MESH_CONFIG_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/MeshConfig"}
"""The config's JSON Schema, placed among the OpenAPI components by ``create_app``."""

ETAG_HEADER = {
    "ETag": {"description": 'The config version, quoted: "N".', "schema": {"type": "string"}}
}
CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": MESH_CONFIG_SCHEMA}},
    }
}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": ETAG_HEADER},
    409: CONFLICT,
    413: {"description": "Body too large."},
    422: INVALID_CONFIG,
}


@router.get(
    "",
    summary="The running config (durations as strings)",
    response_class=JSONResponse,
    responses={
        200: {
            "content": {"application/json": {"schema": MESH_CONFIG_SCHEMA}},
            "headers": ETAG_HEADER,
        },
        404: NOT_FOUND,
    },
)
def get_config(host: HostDep) -> JSONResponse:
    current = host.current
    if current is None:
        raise HTTPException(404, "no config has been applied yet")
    return JSONResponse(
        current.config.model_dump(mode="json"), headers={"ETag": etag(current.version)}
    )


@router.put(
    "",
    summary="Validate and apply a new config (a new version)",
    response_model=ConfigApplied,
    responses=WRITE_RESPONSES,
    openapi_extra=CONFIG_BODY,
)
async def put_config(
    request: Request, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    body = await read_json(request)

    def replace(data: dict[str, Any]) -> None:
        admin = data.get("admin")
        data.clear()
        if not isinstance(body, dict):  # let validation name the problem at the root
            raise_invalid_root(body)
        data.update(body)
        # The admin section is read at start only: a config without one keeps the serving one
        # rather than recording a change that cannot take effect.
        if admin is not None:
            data.setdefault("admin", admin)

    done, _ = await change(host, replace, token=token, if_match=if_match)
    return applied(host, done, response)


def raise_invalid_root(body: object) -> None:
    load_config(body)  # raises ConfigError: the document is not a mapping


@router.post(
    "/validate",
    summary="Dry run: validate a config and diff it against the running one; apply nothing",
    response_model=DryRun,
    response_model_exclude_unset=True,
    responses={422: INVALID_CONFIG, 413: {"description": "Body too large."}},
    openapi_extra=CONFIG_BODY,
)
async def validate_config(request: Request, host: HostDep) -> dict[str, Any]:
    body = await read_json(request)
    serving_cfg = host.config
    if isinstance(body, dict) and "admin" not in body and serving_cfg is not None:
        body["admin"] = serving_cfg.admin.model_dump(mode="json", exclude_unset=True)
    cfg = await run_in_threadpool(load_config, body)
    changes = await run_in_threadpool(host.diff, cfg)
    return {"valid": True, "version": host.version, "changes": changes}


@router.get(
    "/versions",
    summary="History: applied versions, newest first",
    response_model=list[VersionSummary],
)
def list_versions(
    host: HostDep,
    limit: int = Query(50, ge=1, le=1000, description="At most this many versions."),
    before: int | None = Query(
        None, ge=1, le=MAX_VERSION, description="Only versions older than this one."
    ),
) -> list[VersionSummary]:
    return [
        VersionSummary(
            version=v.version,
            applied_at=v.applied_at,
            token=v.token,
            source=v.source,
            changes=len(v.diff),
        )
        for v in host.store.history(limit, before)
    ]


@router.get(
    "/versions/{version}",
    summary="One version: its config and its diff against the previous one",
    response_model=VersionDetail,
    response_model_exclude_unset=True,
    responses={404: NOT_FOUND},
)
def get_version(host: HostDep, version: int = Path(ge=1, le=MAX_VERSION)) -> dict[str, Any]:
    v = host.store.get(version)
    if v is None:
        raise HTTPException(404, f"no version {version}")
    return {
        "version": v.version,
        "applied_at": v.applied_at,
        "token": v.token,
        "source": v.source,
        "changes": len(v.diff),
        "diff": v.diff,
        "config": _full(v.config),
    }


def _full(given: dict[str, Any]) -> dict[str, Any]:
    """A stored config (fields as given) with every default filled in, as GET /config shows
    it; as stored if this pymesh can no longer load it."""
    try:
        full: dict[str, Any] = load_config(given).model_dump(mode="json")
    except ConfigError:
        return given
    return full


@router.post(
    "/rollback/{version}",
    summary="Apply an old version again, as a new version",
    response_model=ConfigApplied,
    responses={**WRITE_RESPONSES, 404: NOT_FOUND},
)
async def rollback(
    response: Response,
    host: HostDep,
    token: WriteToken,
    if_match: IfMatch,
    version: int = Path(ge=1, le=MAX_VERSION),
) -> ConfigApplied:
    old = host.store.get(version)
    if old is None:
        raise HTTPException(404, f"no version {version}")

    def restore(data: dict[str, Any]) -> None:
        data.clear()
        data.update(old.config)

    done, _ = await change(
        host, restore, token=token, if_match=if_match, source=f"rollback:{version}"
    )
    return applied(host, done, response)


__all__ = ["MESH_CONFIG_SCHEMA", "router", "serving"]
