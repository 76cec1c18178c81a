"""The committed contract files in ``api/``, generated from the code.

``api/openapi.json`` is the admin API's OpenAPI document and ``api/mesh.schema.json`` the
JSON Schema of a config file (for editors: ``# yaml-language-server: $schema=...``). Both are
written by ``python scripts/export_api.py`` and checked by ``tests/test_api_contract.py``,
which fails when the committed copies differ from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pymesh._core import Core
from pymesh.config import MeshConfig
from pymesh.host import Host
from pymesh.tokens import TokenSet

from .app import create_app

__all__ = ["FILES", "config_schema", "openapi_document", "render", "write_all"]

FILES = {"openapi.json": "openapi", "mesh.schema.json": "schema"}


def openapi_document() -> dict[str, Any]:
    """The admin API's OpenAPI document."""
    # The document does not depend on the host; a small idle core stands in for one.
    app = create_app(Host(Core(1)), TokenSet([]))
    return app.openapi()


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a pymesh config document."""
    schema = MeshConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render(kind: str) -> str:
    """The text of one contract file (``openapi`` or ``schema``)."""
    doc = openapi_document() if kind == "openapi" else config_schema()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every contract file into ``directory``; answer the paths."""
    written = []
    for name, kind in FILES.items():
        path = directory / name
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written
