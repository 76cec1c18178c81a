"""The admin API application factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from pymesh import __version__
from pymesh.config import MeshConfig
from pymesh.host import Host

from .problems import install_problem_handlers
from .routes import api_router

__all__ = ["create_app"]

_DESCRIPTION = """\
Health, configuration, stats and metrics of one pymesh proxy.

Errors are `application/problem+json` documents; an invalid config is a 422 whose `errors`
name each bad field by its dotted path, and nothing is applied.
"""


class AdminApp(FastAPI):
    """FastAPI whose OpenAPI document also carries the config's JSON Schema (``MeshConfig``
    and the models it uses), which ``GET``/``PUT /config`` refer to."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            config_schema = MeshConfig.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(config_schema.pop("$defs", {}))
            components["MeshConfig"] = config_schema
        return self.openapi_schema or {}


def create_app(host: Host) -> FastAPI:
    """The admin API around ``host`` (kept on ``app.state.host``)."""
    app = AdminApp(title="pymesh admin API", version=__version__, description=_DESCRIPTION)
    app.state.host = host
    install_problem_handlers(app)
    app.include_router(api_router)
    return app
