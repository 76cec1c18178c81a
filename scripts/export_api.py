"""Regenerate the committed contract files: api/openapi.json and api/mesh.schema.json.

Run it with the venv's Python after installing the package (it imports the installed
``pymesh.api``): ``.venv/bin/python scripts/export_api.py``. tests/test_api_contract.py
fails until the committed files match the code.
"""

from __future__ import annotations

from pathlib import Path

from pymesh.api.export import write_all

if __name__ == "__main__":
    for path in write_all(Path(__file__).resolve().parent.parent / "api"):
        print(f"wrote {path}")
