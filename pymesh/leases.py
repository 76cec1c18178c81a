"""Endpoint leases: an endpoint registered with a TTL leaves its cluster unless heartbeated.

The lease table is kept in memory (deadlines on the monotonic clock) and mirrored in the
config store (cluster, address, TTL), so a restarted ``pymesh run`` re-arms every lease with
a full TTL instead of keeping a vanished endpoint forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymesh.store import ConfigStore, Lease

__all__ = ["LeaseState", "Leases"]


@dataclass(frozen=True)
class LeaseState:
    cluster: str
    address: str
    ttl: float
    """Seconds a heartbeat keeps the endpoint."""
    expires_in: float
    """Seconds left until the endpoint is removed (0 when overdue)."""


class Leases:
    """The leases of one host. Thread-safe."""

    def __init__(self, store: ConfigStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._deadlines: dict[tuple[str, str], tuple[float, float]] = {}
        self._on_grant: Callable[[], Any] | None = None
        now = time.monotonic()
        for lease in store.leases():
            ttl = lease.ttl_ms / 1000
            self._deadlines[(lease.cluster, lease.address)] = (ttl, now + ttl)

    def grant(self, cluster: str, address: str, ttl: float) -> LeaseState:
        """Start (or restart) the lease of an endpoint."""
        with self._lock:
            self._store.put_lease(Lease(cluster, address, round(ttl * 1000)))
            self._deadlines[(cluster, address)] = (ttl, time.monotonic() + ttl)
            state = self._state(cluster, address)
            wake = self._on_grant
        if wake is not None:
            wake()
        return state

    def on_grant(self, wake: Callable[[], Any] | None) -> None:
        """Call ``wake`` (from the granting thread) after each grant: a new lease may run out
        before the watcher's next deadline. Heartbeats only move deadlines later."""
        with self._lock:
            self._on_grant = wake

    def next_deadline(self) -> float | None:
        """The earliest deadline (``time.monotonic()`` seconds), or None without leases."""
        with self._lock:
            return min((deadline for _, deadline in self._deadlines.values()), default=None)

    def heartbeat(self, cluster: str, address: str) -> LeaseState | None:
        """Extend a lease by its TTL; None if the endpoint has no lease."""
        with self._lock:
            entry = self._deadlines.get((cluster, address))
            if entry is None:
                return None
            self._deadlines[(cluster, address)] = (entry[0], time.monotonic() + entry[0])
            return self._state(cluster, address)

    def get(self, cluster: str, address: str) -> LeaseState | None:
        with self._lock:
            if (cluster, address) not in self._deadlines:
                return None
            return self._state(cluster, address)

    def drop(self, cluster: str, address: str) -> None:
        """Forget a lease (the endpoint stays or goes by other means)."""
        with self._lock:
            self._deadlines.pop((cluster, address), None)
            self._store.drop_lease(cluster, address)

    def expired(self) -> list[tuple[str, str]]:
        """The (cluster, address) pairs whose lease ran out."""
        now = time.monotonic()
        with self._lock:
            return [key for key, (_, deadline) in self._deadlines.items() if deadline <= now]

    def postpone(self, cluster: str, address: str) -> None:
        """Give an expired lease another TTL (its removal failed; try again later)."""
        self.heartbeat(cluster, address)

    def _state(self, cluster: str, address: str) -> LeaseState:
        ttl, deadline = self._deadlines[(cluster, address)]
        left = max(0.0, deadline - time.monotonic())
        return LeaseState(cluster, address, ttl, round(left, 3))
