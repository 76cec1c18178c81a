"""Admin API tokens: who may read, who may change.

Tokens live in ``DATA_DIR/admin-tokens.json`` (mode 0600)::

    {"tokens": [{"id": "admin", "secret": "...", "access": "read-write"},
                {"id": "grafana", "secret": "...", "access": "read-only"}]}

On first start, when the file does not exist and ``PYMESH_ADMIN_TOKEN`` is not set, a
read-write token with id ``admin`` is generated into it. ``PYMESH_ADMIN_TOKEN``, when set,
is one more read-write token (id ``env``) and no file is generated. History records name a
token by its id, never its secret. Secrets are compared in constant time
(``hmac.compare_digest`` over SHA-256 digests, so neither content nor length leaks).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pymesh.errors import ConfigError

__all__ = [
    "ENV_TOKEN",
    "TOKENS_FILE",
    "Access",
    "Token",
    "TokenSet",
    "first_read_write_secret",
    "load_tokens",
]

TOKENS_FILE = "admin-tokens.json"
ENV_TOKEN = "PYMESH_ADMIN_TOKEN"

Access = Literal["read-only", "read-write"]


@dataclass(frozen=True)
class Token:
    id: str
    access: Access
    digest: bytes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class TokenSet:
    """The tokens the admin API accepts."""

    def __init__(self, tokens: list[tuple[str, str, Access]]) -> None:
        self._tokens = [Token(id=i, access=a, digest=_digest(s)) for i, s, a in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def find(self, secret: str) -> Token | None:
        """The token whose secret is ``secret``. Every token is compared (constant time per
        token, no early exit), so the answer's timing does not depend on which matched."""
        presented = _digest(secret)
        found: Token | None = None
        for token in self._tokens:
            if hmac.compare_digest(presented, token.digest):
                found = token
        return found


def load_tokens(data_dir: Path) -> tuple[TokenSet, Path | None]:
    """The tokens of ``data_dir`` (generating the file on first start unless the env token is
    set), and the path of the tokens file (None when there is none).

    Raises ConfigError for a malformed file or one that others may read.
    """
    path = data_dir / TOKENS_FILE
    env = os.environ.get(ENV_TOKEN)
    entries: list[tuple[str, str, Access]] = []
    if path.exists():
        entries = _read(path)
    elif not env:
        data_dir.mkdir(parents=True, exist_ok=True)
        # A fixed prefix: a generated secret never starts with "-" (which argparse would
        # read as an option after --token) and is recognisable to secret scanners.
        secret = "pmk_" + secrets.token_urlsafe(32)
        entries = [("admin", secret, "read-write")]
        body = {"tokens": [{"id": "admin", "secret": secret, "access": "read-write"}]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, indent=2) + "\n")
    if env:
        entries.append(("env", env, "read-write"))
    return TokenSet(entries), (path if path.exists() else None)


def first_read_write_secret(data_dir: Path) -> str | None:
    """For the CLI: the secret of the first read-write token in ``data_dir``'s file."""
    path = data_dir / TOKENS_FILE
    if not path.exists():
        return None
    for _, secret, access in _read(path):
        if access == "read-write":
            return secret
    return None


def _read(path: Path) -> list[tuple[str, str, Access]]:
    loc = str(path)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError.single(
                loc, f"other users may read it (mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError.single(loc, f"cannot read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError.single(loc, f"not valid JSON: {e}") from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError.single(f"{loc}: tokens", "expected a list of tokens")
    out: list[tuple[str, str, Access]] = []
    for i, item in enumerate(items):
        at = f"{loc}: tokens.{i}"
        if not isinstance(item, dict):
            raise ConfigError.single(at, "expected {id, secret, access}")
        tid, secret, access = item.get("id"), item.get("secret"), item.get("access")
        if not isinstance(tid, str) or not tid:
            raise ConfigError.single(f"{at}.id", "a non-empty string is required")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError.single(f"{at}.secret", "a string of at least 16 characters")
        if access == "read-only":
            out.append((tid, secret, "read-only"))
        elif access == "read-write":
            out.append((tid, secret, "read-write"))
        else:
            raise ConfigError.single(f"{at}.access", "'read-only' or 'read-write'")
    return out
