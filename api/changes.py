"""The one way a route changes the config: edit a copy of the serving config with a function,
then validate, store and apply the result as a new version (``Host.update``).

The function edits the config's plain JSON form, so every resource (listeners, routes,
clusters, endpoints, policies) is a few lines, and an invalid result is reported like any
invalid config: a 422 whose ``loc``s are paths in the whole config (``listeners.2.listen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from pymesh.config import MeshConfig, load_config
from pymesh.documents import DocumentError, parse_json
from pymesh.errors import ConfigError
from pymesh.host import Applied, Host
from pymesh.tokens import Token

from .schemas import ConfigApplied

__all__ = [
    "MAX_BODY_BYTES",
    "applied",
    "change",
    "config_data",
    "etag",
    "find_named",
    "read_json",
    "serving",
]

T = TypeVar("T")

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest request body the API accepts."""


def etag(version: int) -> str:
    return f'"{version}"'


def config_data(cfg: MeshConfig | None) -> dict[str, Any]:
    """The editable JSON form of a config: only what was set (so a default that depends on
    another field, like a cluster's protocol from its ALPN, stays a default)."""
    if cfg is None:
        return {}
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_unset=True)
    return data


def serving(host: Host, response: Response | None = None) -> MeshConfig:
    """The serving config (404 before the first apply); sets the ETag on ``response``."""
    current = host.current
    if current is None:
        raise HTTPException(404, "no config has been applied yet")
    if response is not None:
        response.headers["ETag"] = etag(current.version)
    return current.config


async def change(
    host: Host,
    edit: Callable[[dict[str, Any]], T],
    *,
    token: Token,
    if_match: int | None,
    source: str = "api",
) -> tuple[Applied, T]:
    """Edit the serving config with ``edit`` (which changes the dict in place and may raise
    HTTPException for a missing or duplicate item); validate, store and apply the result.
    Answers the applied version and what ``edit`` returned."""
    results: list[T] = []

    def build(current: MeshConfig | None) -> MeshConfig:
        data = config_data(current)
        results.append(edit(data))
        return load_config(data)

    done = await run_in_threadpool(
        host.update, build, token=token.id, source=source, expect_version=if_match
    )
    return done, results[0]


def applied(host: Host, done: Applied, response: Response) -> ConfigApplied:
    """The answer to a change: its version (also as the ETag) and the bound listeners."""
    response.headers["ETag"] = etag(done.version)
    return ConfigApplied(version=done.version, listeners=host.listeners())


async def read_json(request: Request, loc: str = "body") -> Any:
    """The request body parsed as JSON (duplicate keys refused); 413 if too large, 422 with
    ``loc`` if it is not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"a request body is at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"a request body is at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return parse_json(b"".join(chunks))
    except DocumentError as e:
        raise ConfigError.single(loc, str(e)) from None


def find_named(items: list[Any], name: str, kind: str, key: str = "name") -> int:
    """The index of the item called ``name``; 404 if there is none."""
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == name:
            return i
    raise HTTPException(404, f"no {kind} named {name!r}")


def item_named(body: Any, name: str, kind: str) -> dict[str, Any]:
    """A request body that is an object whose ``name`` is ``name`` (filled in if absent)."""
    if not isinstance(body, dict):
        raise ConfigError.single("body", f"a {kind} is a JSON object")
    if body.setdefault("name", name) != name:
        raise ConfigError.single("body.name", f"must be {name!r}, the name in the URL")
    return body


# --- edits of a named list (listeners, clusters, a listener's routes) ---

Edit = Callable[[dict[str, Any]], None]
"""An edit of the config's plain JSON form, as ``change`` takes it."""

Items = Callable[[dict[str, Any]], list[Any]]
"""Where a named list sits in the config's plain JSON form (made if absent)."""

Finder = Callable[[list[Any], str], int]
"""The index of the item with a name in such a list, or HTTP 404."""


def top_level(key: str, kind: str) -> tuple[Items, Finder]:
    """A list at the top of the config (``listeners``, ``clusters``) and its finder."""

    def items(data: dict[str, Any]) -> list[Any]:
        found: list[Any] = data.setdefault(key, [])
        return found

    return items, lambda lst, name: find_named(lst, name, kind)


def adding(items: Items, find: Finder, body: Any, kind: str, at: int | None = None) -> Edit:
    """Insert ``body`` at ``at`` (default: the end); 409 when its name is taken."""

    def add(data: dict[str, Any]) -> None:
        lst = items(data)
        name = body.get("name") if isinstance(body, dict) else None
        if isinstance(name, str):
            try:
                find(lst, name)
            except HTTPException:
                pass
            else:
                raise HTTPException(409, f"a {kind} named {name!r} exists; PUT it")
        lst.insert(len(lst) if at is None else at, body)

    return add


def replacing(items: Items, find: Finder, name: str, body: dict[str, Any]) -> Edit:
    """Replace the item called ``name`` in place, or append ``body`` when there is none."""

    def replace(data: dict[str, Any]) -> None:
        lst = items(data)
        try:
            lst[find(lst, name)] = body
        except HTTPException:
            lst.append(body)

    return replace


def removing(items: Items, find: Finder, name: str) -> Edit:
    """Remove the item called ``name``; 404 when there is none."""

    def remove(data: dict[str, Any]) -> None:
        lst = items(data)
        del lst[find(lst, name)]

    return remove
