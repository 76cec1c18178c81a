"""The dashboard: a static page (HTML, CSS, JavaScript shipped in ``pymesh.api.ui``).

The page and its assets are served without a token: they hold no data. The page asks for an
admin token (or takes one from the URL fragment ``#token=...``), keeps it in the tab's
``sessionStorage`` and sends it as ``Authorization: Bearer`` on every API call it makes. A
strict Content-Security-Policy keeps the page to its own scripts and to this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

router = APIRouter(prefix="/ui", tags=["dashboard"], include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
"""Where the page's files live: ``api/ui`` in the tree, ``pymesh/api/ui`` when installed."""

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no dashboard asset {name!r}")
    body = (UI_DIR / name).read_bytes()
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("")
def page() -> Response:
    return _asset("index.html")


@router.get("/{name}")
def asset(name: str) -> Response:
    return _asset(name)
