"""A small HTTP client of the admin API, for the CLI (stdlib ``urllib``: no extra dependency).

Where the server and the token come from, first found wins: the flags (``--admin URL``,
``--token``), the environment (``PYMESH_ADMIN``, ``PYMESH_ADMIN_TOKEN``), the data dir
(``--data-dir``, default the same as ``pymesh run``'s: its ``admin-url`` file, written by
``pymesh run`` at start, and the first read-write token of its ``admin-tokens.json``), and
finally ``http://127.0.0.1:9901``.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymesh.tokens import ENV_TOKEN, first_read_write_secret

__all__ = [
    "ADMIN_ENV",
    "ADMIN_URL_FILE",
    "DEFAULT_ADMIN_URL",
    "AdminClient",
    "AdminError",
    "Reply",
    "resolve_admin",
]

ADMIN_ENV = "PYMESH_ADMIN"
ADMIN_URL_FILE = "admin-url"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"


class AdminError(Exception):
    """The admin API could not be reached, or answered an error (``status``, ``problem``)."""

    def __init__(self, message: str, status: int = 0, problem: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any = field(default=None)

    @property
    def version(self) -> int | None:
        """The config version of the ETag header, if any."""
        tag = self.headers.get("etag", "").strip('"')
        return int(tag) if tag.isdigit() else None


def resolve_admin(admin: str | None, token: str | None, data_dir: Path) -> tuple[str, str | None]:
    """The admin URL and token to use (see the module docstring)."""
    url = admin or os.environ.get(ADMIN_ENV)
    if not url:
        try:
            url = (data_dir / ADMIN_URL_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            url = DEFAULT_ADMIN_URL
    secret = token or os.environ.get(ENV_TOKEN)
    if not secret:
        try:
            secret = first_read_write_secret(data_dir)
        except ValueError:  # an unreadable tokens file: go without, the server says 401
            secret = None
    return url.rstrip("/"), secret


class AdminClient:
    def __init__(
        self, url: str, token: str | None, timeout: float = 10.0, cafile: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=cafile) if cafile else None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Reply:
        """Send one request; answer the reply, or raise AdminError for a status not in
        ``ok`` (with the problem document) or when the server cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                reply = Reply(resp.status, _headers(resp.headers), _decode(resp.read()))
        except urllib.error.HTTPError as e:
            reply = Reply(e.code, _headers(e.headers), _decode(e.read()))
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None
        if reply.status not in ok:
            problem = reply.body if isinstance(reply.body, dict) else {}
            detail = problem.get("detail") or str(reply.body or "")
            raise AdminError(f"{method} {path}: {reply.status} {detail}", reply.status, problem)
        return reply

    def get(self, path: str, ok: tuple[int, ...] = (200,)) -> Reply:
        return self.request("GET", path, ok=ok)

    def events(self, path: str) -> Generator[dict[str, Any] | None, None, None]:
        """The server-sent events of ``GET path``: each ``data:`` event decoded from JSON,
        and None for each comment (the server's keep-alive), so that a caller can check its
        own deadline while the stream is idle. Raises AdminError like ``request``."""
        req = urllib.request.Request(self.url + path, method="GET")
        req.add_header("accept", "text/event-stream")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl)
        except urllib.error.HTTPError as e:
            body = _decode(e.read())
            problem = body if isinstance(body, dict) else {}
            detail = problem.get("detail") or str(body or "")
            raise AdminError(f"GET {path}: {e.code} {detail}", e.code, problem) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None
        with resp:
            data: list[str] = []
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield json.loads("\n".join(data))
                        data = []
                elif line.startswith(":"):
                    yield None
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


def _headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
