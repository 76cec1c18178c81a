"""The host: owns a running Core and the configuration it serves.

``Host.update`` (and ``Host.apply``, its simple form) is the one way configuration reaches the
data plane: under one lock it builds the new config from the serving one, checks it, and, in
one store transaction, records it as the next version and hands its snapshot to the core; the
transaction commits only once the core has taken it. A config the core refuses raises
ConfigError and changes nothing (no version is stored). The host also answers readiness,
stats and metrics, and drains the core on shutdown. After each apply it also writes
``data_dir/last-applied.json``, a readable copy of what serves (the store is the truth).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from pymesh._core import ApplyError, Core, Tap
from pymesh.config import ROOT_LOC, MeshConfig, check_config
from pymesh.diff import Change, config_diff
from pymesh.errors import ConfigError, DrainingError, StaleVersionError
from pymesh.snapshot import to_snapshot_json
from pymesh.store import ConfigStore, SqliteStore, StoredVersion

__all__ = [
    "CRASH_ENV",
    "LAST_APPLIED",
    "Applied",
    "Host",
    "default_data_dir",
    "write_atomically",
]

LAST_APPLIED = "last-applied.json"
"""The file in the data directory that holds the last applied config."""

CRASH_ENV = "PYMESH_TEST_CRASH"
"""For the atomicity test only: ``POINT:VERSION`` makes the process SIGKILL itself at POINT
(``before-apply``, ``before-commit``, ``after-commit``) while applying VERSION."""


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/pymesh``, or ``~/.local/share/pymesh``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pymesh"


class Applied(NamedTuple):
    """A config that is serving, and its version."""

    config: MeshConfig
    version: int


class Host:
    """A Core and the configuration it serves. Safe to use from several threads."""

    def __init__(
        self, core: Core, data_dir: Path | None = None, store: ConfigStore | None = None
    ) -> None:
        self.core = core
        self.data_dir = data_dir
        self.store: ConfigStore = store if store is not None else SqliteStore(":memory:")
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._current: Applied | None = None
        self._draining = False
        self._crash = _crash_point(os.environ.get(CRASH_ENV, ""))

    # === configuration ===

    def apply(self, cfg: MeshConfig, *, token: str | None = None, source: str = "api") -> int:
        """Apply ``cfg`` as a new version; answer its version (see ``update``)."""
        return self.update(lambda _: cfg, token=token, source=source).version

    def update(
        self,
        build: Callable[[MeshConfig | None], MeshConfig],
        *,
        token: str | None = None,
        source: str = "api",
        expect_version: int | None = None,
    ) -> Applied:
        """Build a config from the serving one (None before the first apply), then validate,
        store and apply it as one new version; answer it.

        ``build`` runs under the host's lock, so no other change lands between reading the
        serving config and replacing it. Raises StaleVersionError (``expect_version`` is not
        the serving version), ConfigError (invalid, or the core refused it), DrainingError,
        or whatever ``build`` raises; in every case nothing changed.
        """
        with self._lock:
            if self._draining:
                raise DrainingError("pymesh is draining; no new config is applied")
            current = self._current
            if expect_version is not None and expect_version != self.version:
                raise StaleVersionError(expect_version, self.version)
            cfg = build(current.config if current is not None else None)
            check_config(cfg)
            old = current.config.model_dump(mode="json") if current is not None else {}
            changes = config_diff(old, cfg.model_dump(mode="json"))
            # Stored as given (fields that were set): a default that follows another field
            # (a cluster's protocol from its ALPN) stays a default when the version is loaded.
            given = cfg.model_dump(mode="json", exclude_unset=True)
            with self.store.append(given, token=token, source=source, diff=changes) as version:
                self._maybe_crash("before-apply", version)
                self._apply_core(cfg, version)
                self._maybe_crash("before-commit", version)
            self._maybe_crash("after-commit", version)
            self._current = Applied(cfg, version)
            self._save(cfg, version)
            return self._current

    def resume(self, stored: StoredVersion, cfg: MeshConfig) -> int:
        """Serve a stored version again (at start), under its own number; stores nothing."""
        with self._lock:
            check_config(cfg)
            self._apply_core(cfg, stored.version)
            self._current = Applied(cfg, stored.version)
            self._save(cfg, stored.version)
            return stored.version

    def diff(self, cfg: MeshConfig) -> list[Change]:
        """The changes ``cfg`` would make to the serving config (a dry run)."""
        check_config(cfg)
        current = self._current
        old = current.config.model_dump(mode="json") if current is not None else {}
        return config_diff(old, cfg.model_dump(mode="json"))

    def _apply_core(self, cfg: MeshConfig, version: int) -> None:
        try:
            self.core.apply(to_snapshot_json(cfg, version))
        except ApplyError as e:
            loc = e.path or ROOT_LOC
            raise ConfigError.single(loc, str(e).removeprefix(f"{loc}: ")) from None

    def _maybe_crash(self, point: str, version: int) -> None:
        if self._crash == (point, version):
            os.kill(os.getpid(), signal.SIGKILL)

    @property
    def current(self) -> Applied | None:
        """The config now serving and its version, read together (None before the first
        apply)."""
        return self._current

    @property
    def config(self) -> MeshConfig | None:
        """The config now serving (None before the first apply)."""
        current = self._current
        return current.config if current is not None else None

    @property
    def version(self) -> int:
        """The version of the config now serving (0 before the first apply)."""
        current = self._current
        return current.version if current is not None else 0

    def listeners(self) -> dict[str, str]:
        """Each listener's name and bound ``ip:port`` (port 0 resolved)."""
        return self.core.listeners()

    # === health and observability ===

    @property
    def ready(self) -> bool:
        """True once a config is serving, until draining starts."""
        return self._current is not None and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    def stats(self) -> dict[str, Any]:
        """The core's counters and gauges, plus ``config_version``."""
        stats: dict[str, Any] = json.loads(self.core.stats_json())
        stats["config_version"] = self.version
        stats["uptime_seconds"] = round(time.monotonic() - self.started, 3)
        return stats

    def metrics_text(self) -> str:
        """Prometheus text exposition of the core's metrics."""
        return self.core.metrics_text()

    def tap(
        self,
        *,
        listener: str | None = None,
        route: str | None = None,
        cluster: str | None = None,
        status: str | None = None,
        path_prefix: str | None = None,
    ) -> Tap:
        """Subscribe to the live tap (see ``pymesh._core.Core.tap``); ``close()`` it when done."""
        return self.core.tap(
            listener=listener, route=route, cluster=cluster, status=status, path_prefix=path_prefix
        )

    # === shutdown ===

    def begin_drain(self) -> None:
        """Mark the host draining: not ready, no new config. Returns at once (it does not
        wait for an apply in progress, so it is safe to call from an event loop)."""
        self._draining = True

    def drain(self, timeout: float) -> bool:
        """Stop accepting and wait up to ``timeout`` seconds for open connections to finish.

        Answer True if they all did. Blocks: call it from a worker thread in async code.
        """
        self.begin_drain()
        return self.core.drain(timeout)

    # === persistence ===

    def _save(self, cfg: MeshConfig, version: int) -> None:
        """Write ``last-applied.json`` atomically; a failure is reported, never raised (the
        config is already serving)."""
        if self.data_dir is None:
            return
        record = {
            "version": version,
            "applied_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "config": cfg.model_dump(mode="json"),
        }
        try:
            write_atomically(self.data_dir / LAST_APPLIED, json.dumps(record, indent=2) + "\n")
        except OSError as e:
            where = self.data_dir / LAST_APPLIED
            print(f"pymesh: warning: cannot write {where}: {e}", file=sys.stderr, flush=True)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _crash_point(spec: str) -> tuple[str, int] | None:
    point, _, version = spec.partition(":")
    if not point or not version.isdigit():
        return None
    return point, int(version)
