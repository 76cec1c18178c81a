"""Mesh-wide policy defaults: the config's top-level ``defaults`` section, read and replaced
as a whole. The router exists only when the config model has that section."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pymesh.config import MeshConfig

from ..auth import WriteToken, authenticate
from ..changes import applied, change, read_json, serving
from ..deps import HostDep, IfMatch
from ..problems import CONFLICT, INVALID_CONFIG, NOT_FOUND
from ..schemas import ConfigApplied

SECTION = "defaults"
AVAILABLE = SECTION in MeshConfig.model_fields
"""True when ``MeshConfig`` has the policy defaults section (then ``/policies`` is served)."""

router = APIRouter(prefix="/policies", tags=["policies"], dependencies=[Depends(authenticate)])

SCHEMA = {"$ref": f"#/components/schemas/MeshConfig/properties/{SECTION}"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": SCHEMA}}}}


@router.get(
    "",
    summary="The mesh-wide policy defaults",
    responses={200: {"content": {"application/json": {"schema": SCHEMA}}}, 404: NOT_FOUND},
)
def get_policies(host: HostDep, response: Response) -> Any:
    return serving(host, response).model_dump(mode="json").get(SECTION)


@router.put(
    "",
    summary="Replace the mesh-wide policy defaults",
    response_model=ConfigApplied,
    responses={409: CONFLICT, 422: INVALID_CONFIG},
    openapi_extra=BODY,
)
async def put_policies(
    request: Request, response: Response, host: HostDep, token: WriteToken, if_match: IfMatch
) -> ConfigApplied:
    body = await read_json(request)

    def replace(data: dict[str, Any]) -> None:
        data[SECTION] = body

    done, _ = await change(host, replace, token=token, if_match=if_match)
    return applied(host, done, response)
