"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every error the API answers has this shape; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pymesh.errors import ConfigError, CoreError, DrainingError, ErrorItem, StaleVersionError

from .schemas import Problem, ProblemItem

PROBLEM_JSON = "application/problem+json"

INVALID_CONFIG = {
    "model": Problem,
    "description": "Invalid config; nothing was applied and the old config keeps serving.",
    "content": {PROBLEM_JSON: {}},
}
"""An OpenAPI ``responses`` entry for a 422 problem document."""

CONFLICT = {
    "model": Problem,
    "description": "`If-Match` named a version that is no longer serving, or the item "
    "already exists; nothing changed.",
    "content": {PROBLEM_JSON: {}},
}
NOT_FOUND = {"model": Problem, "description": "No such item.", "content": {PROBLEM_JSON: {}}}


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[ErrorItem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem document response."""
    body = Problem(
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        errors=[ProblemItem(loc=e["loc"], msg=e["msg"]) for e in errors]
        if errors is not None
        else None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_JSON,
    )


def invalid_config(error: ConfigError) -> JSONResponse:
    """422 for a config that was refused."""
    n = len(error.errors)
    detail = f"{n} problem{'' if n == 1 else 's'} found; nothing was applied: " + "; ".join(
        error.lines()
    )
    return problem(422, detail, title="invalid config", errors=error.errors)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error the app raises as a problem document."""
    app.add_exception_handler(ConfigError, _on_config_error)
    app.add_exception_handler(DrainingError, _on_draining)
    app.add_exception_handler(StaleVersionError, _on_stale)
    app.add_exception_handler(CoreError, _on_core_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_config_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    return invalid_config(exc)


async def _on_draining(request: Request, exc: Exception) -> JSONResponse:
    return problem(503, str(exc), title="draining")


async def _on_stale(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StaleVersionError)
    return problem(409, str(exc), title="stale version", headers={"ETag": f'"{exc.current}"'})


async def _on_core_error(request: Request, exc: Exception) -> JSONResponse:
    return problem(500, f"the data plane failed: {exc}", title="core error")


async def _on_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        ErrorItem(loc=".".join(str(p) for p in e.get("loc", ())), msg=str(e.get("msg", "")))
        for e in exc.errors()
    ]
    return problem(422, "the request is not valid", title="invalid request", errors=errors)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail: Any = exc.detail
    return problem(exc.status_code, str(detail), headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, never the client's input: answered as a problem document too, and logged.
    print(
        f"pymesh: admin API error on {request.method} {request.url.path}: {exc!r}",
        file=sys.stderr,
        flush=True,
    )
    return problem(500, "internal error; see the proxy's log", title="internal error")
