"""The host: owns a running Core and the configuration it serves.

``Host.apply`` is the one way configuration reaches the data plane: it checks the config,
numbers it (versions start at 1 and grow by one per successful apply), hands the snapshot to
the core, and records it in ``data_dir/last-applied.json``. A config the core refuses raises
ConfigError and changes nothing. The host also answers readiness, stats and metrics, and
drains the core on shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from pymesh._core import ApplyError, Core
from pymesh.config import ROOT_LOC, MeshConfig, check_config
from pymesh.errors import ConfigError, DrainingError
from pymesh.snapshot import to_snapshot_json

__all__ = ["LAST_APPLIED", "Applied", "Host", "default_data_dir", "write_atomically"]

LAST_APPLIED = "last-applied.json"
"""The file in the data directory that holds the last applied config."""


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

    def __init__(self, core: Core, data_dir: Path | None = None) -> None:
        self.core = core
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._current: Applied | None = None
        self._draining = False

    # === configuration ===

    def apply(self, cfg: MeshConfig) -> int:
        """Apply ``cfg``; answer its version.

        Raises ConfigError (the core refused it: nothing changed, the old config keeps
        serving) or DrainingError (the host is shutting down).
        """
        check_config(cfg)
        with self._lock:
            if self._draining:
                raise DrainingError("pymesh is draining; no new config is applied")
            version = self.version + 1
            try:
                applied = self.core.apply(to_snapshot_json(cfg, version))
            except ApplyError as e:
                loc = e.path or ROOT_LOC
                raise ConfigError.single(loc, str(e).removeprefix(f"{loc}: ")) from None
            self._current = Applied(cfg, applied)
            self._save(cfg, applied)
            return applied

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
        return stats

    def metrics_text(self) -> str:
        """Prometheus text exposition of the core's metrics."""
        return self.core.metrics_text()

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
