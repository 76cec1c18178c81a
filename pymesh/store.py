"""The versioned config store: every applied config, numbered, with who applied it and why.

``ConfigStore`` is the small interface the host needs; ``SqliteStore`` is the embedded
default (stdlib ``sqlite3``, WAL mode, one file in the data dir). A distributed backend (etcd)
can implement the same interface later.

Writing a version and applying it are one step as far as a client can tell:
:meth:`ConfigStore.append` opens a transaction, inserts the new version, yields its number
to the caller (who applies it to the core), and commits only if the caller returns normally.
A crash before the commit leaves the store at the old version (and the client never got an
answer); a crash after it leaves the new version, which the next start resumes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

__all__ = ["STORE_FILE", "ConfigStore", "Lease", "SqliteStore", "StoredVersion"]

STORE_FILE = "pymesh.db"
"""The SQLite file in the data dir."""


@dataclass(frozen=True)
class StoredVersion:
    """One applied config and its history record."""

    version: int
    applied_at: str
    """ISO 8601 UTC time of the apply, to the millisecond."""
    token: str | None
    """The id of the admin token that applied it (never the secret); None from the CLI."""
    source: str
    """What applied it: ``file``, ``demo``, ``api``, ``rollback``, ``ttl``."""
    config: dict[str, Any]
    """The config in its JSON form (``MeshConfig.model_dump(mode="json")``)."""
    diff: list[dict[str, Any]] = field(default_factory=list)
    """The changes against the previous version (see ``pymesh.diff``)."""


@dataclass(frozen=True)
class Lease:
    """An endpoint registered with a TTL: it leaves its cluster unless heartbeated."""

    cluster: str
    address: str
    ttl_ms: int


class ConfigStore(Protocol):
    """Where applied configs are kept, newest last. Implementations are thread-safe."""

    def latest(self) -> StoredVersion | None:
        """The newest version, or None if nothing was ever applied."""

    def get(self, version: int) -> StoredVersion | None:
        """One version, or None if there is no such version."""

    def history(self, limit: int, before: int | None = None) -> list[StoredVersion]:
        """Up to ``limit`` versions, newest first, all older than ``before`` if given."""

    def append(
        self,
        config: dict[str, Any],
        *,
        token: str | None,
        source: str,
        diff: list[dict[str, Any]],
    ) -> contextlib.AbstractContextManager[int]:
        """A context that reserves the next version number and yields it; the version is
        stored when the context exits normally and discarded if it raises (or the process
        dies inside it)."""

    def leases(self) -> list[Lease]:
        """Every endpoint lease."""

    def put_lease(self, lease: Lease) -> None:
        """Record (or replace) the lease of ``lease.cluster``/``lease.address``."""

    def drop_lease(self, cluster: str, address: str) -> None:
        """Forget a lease (no error if there is none)."""

    def close(self) -> None:
        """Release the store's resources."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version    INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL,
    token      TEXT,
    source     TEXT NOT NULL,
    config     TEXT NOT NULL,
    diff       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    cluster TEXT NOT NULL,
    address TEXT NOT NULL,
    ttl_ms  INTEGER NOT NULL,
    PRIMARY KEY (cluster, address)
);
"""


class SqliteStore:
    """``ConfigStore`` in one SQLite file (WAL mode, synchronous=FULL), or in memory."""

    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the threads of the admin API, serialised by a lock;
        # autocommit mode (isolation_level=None) so transactions are explicit.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def latest(self) -> StoredVersion | None:
        rows = self._query("SELECT * FROM versions ORDER BY version DESC LIMIT 1")
        return rows[0] if rows else None

    def get(self, version: int) -> StoredVersion | None:
        rows = self._query("SELECT * FROM versions WHERE version = ?", (version,))
        return rows[0] if rows else None

    def history(self, limit: int, before: int | None = None) -> list[StoredVersion]:
        if before is None:
            return self._query("SELECT * FROM versions ORDER BY version DESC LIMIT ?", (limit,))
        return self._query(
            "SELECT * FROM versions WHERE version < ? ORDER BY version DESC LIMIT ?",
            (before, limit),
        )

    @contextlib.contextmanager
    def append(
        self,
        config: dict[str, Any],
        *,
        token: str | None,
        source: str,
        diff: list[dict[str, Any]],
    ) -> Iterator[int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM versions")
                version = int(row.fetchone()[0]) + 1
                self._db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        version,
                        datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                        token,
                        source,
                        json.dumps(config, separators=(",", ":")),
                        json.dumps(diff, separators=(",", ":")),
                    ),
                )
                yield version
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def leases(self) -> list[Lease]:
        with self._lock:
            rows = self._db.execute("SELECT cluster, address, ttl_ms FROM leases").fetchall()
        return [Lease(cluster=c, address=a, ttl_ms=int(t)) for c, a, t in rows]

    def put_lease(self, lease: Lease) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                (lease.cluster, lease.address, lease.ttl_ms),
            )

    def drop_lease(self, cluster: str, address: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM leases WHERE cluster = ? AND address = ?", (cluster, address)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[StoredVersion]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            StoredVersion(
                version=int(v),
                applied_at=str(at),
                token=tok,
                source=str(src),
                config=json.loads(cfg),
                diff=json.loads(diff),
            )
            for v, at, tok, src, cfg, diff in rows
        ]
