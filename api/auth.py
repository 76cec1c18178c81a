"""Bearer-token authentication and the read-only / read-write split.

Every route except ``/live`` and ``/ready`` depends on ``authenticate`` (a missing or unknown
token: 401); routes that change anything also depend on ``require_write`` (a read-only
token: 403). Both refusals are counted for ``pymesh_admin_auth_failures_total``.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pymesh.tokens import Token, TokenSet

__all__ = ["AuthFailures", "ReadToken", "WriteToken", "authenticate", "require_write"]

_bearer = HTTPBearer(
    auto_error=False,
    description="An admin token from DATA_DIR/admin-tokens.json (or PYMESH_ADMIN_TOKEN).",
)


class AuthFailures:
    """Counts of refused requests, by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unauthenticated = 0
        self.forbidden = 0

    def count(self, reason: str) -> None:
        with self._lock:
            if reason == "forbidden":
                self.forbidden += 1
            else:
                self.unauthenticated += 1

    def prometheus(self) -> str:
        with self._lock:
            counts = {"unauthenticated": self.unauthenticated, "forbidden": self.forbidden}
        lines = [
            "# HELP pymesh_admin_auth_failures_total Admin API requests refused: no or an "
            "unknown token (unauthenticated, 401) or a read-only token on a write "
            "(forbidden, 403).",
            "# TYPE pymesh_admin_auth_failures_total counter",
        ]
        lines += [
            f'pymesh_admin_auth_failures_total{{reason="{r}"}} {n}' for r, n in counts.items()
        ]
        return "\n".join(lines) + "\n"


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Token:
    """The token of the request; 401 if it has none or an unknown one."""
    tokens: TokenSet = request.app.state.tokens
    token = tokens.find(credentials.credentials) if credentials is not None else None
    if token is None:
        failures: AuthFailures = request.app.state.auth_failures
        failures.count("unauthenticated")
        raise HTTPException(
            401,
            "a valid admin token is required: Authorization: Bearer TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


ReadToken = Annotated[Token, Depends(authenticate)]


def require_write(request: Request, token: ReadToken) -> Token:
    """The token of the request if it may change things; 403 for a read-only token."""
    if token.access != "read-write":
        failures: AuthFailures = request.app.state.auth_failures
        failures.count("forbidden")
        raise HTTPException(403, f"token {token.id!r} is read-only")
    return token


WriteToken = Annotated[Token, Depends(require_write)]
