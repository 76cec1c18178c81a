"""The config store and the diff, in process (no proxy): versions commit only when the
apply inside ``append`` returns, leases persist, and diffs name list items by name."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import cast

import pytest
from pymesh.api.app import LEASE_RETRY, _lease_loop

from pymesh.diff import config_diff, format_change
from pymesh.errors import DrainingError
from pymesh.host import Host
from pymesh.leases import Leases
from pymesh.store import Lease, SqliteStore
from pymesh.tokens import first_read_write_secret, load_tokens


def test_append_commits_on_success_and_discards_on_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pymesh.db")
    assert store.latest() is None
    with store.append({"a": 1}, token="admin", source="file", diff=[]) as v:
        assert v == 1
    with pytest.raises(RuntimeError), store.append({"a": 2}, token=None, source="api", diff=[]):
        raise RuntimeError("the core refused it")
    with store.append({"a": 3}, token=None, source="api", diff=[{"op": "add"}]) as v:
        assert v == 2  # the refused one left no gap
    store.close()

    reopened = SqliteStore(tmp_path / "pymesh.db")
    latest = reopened.latest()
    assert latest is not None
    assert (latest.version, latest.config, latest.token) == (2, {"a": 3}, None)
    assert reopened.get(1) is not None
    assert reopened.get(3) is None
    assert [v.version for v in reopened.history(10)] == [2, 1]
    assert [v.version for v in reopened.history(10, before=2)] == [1]
    reopened.put_lease(Lease("c", "127.0.0.1:1", 1500))
    reopened.put_lease(Lease("c", "127.0.0.1:1", 2500))
    assert reopened.leases() == [Lease("c", "127.0.0.1:1", 2500)]
    reopened.drop_lease("c", "127.0.0.1:1")
    assert reopened.leases() == []
    reopened.close()


def test_diff_names_list_items_by_name() -> None:
    old = {
        "listeners": [{"name": "a", "listen": "1"}, {"name": "b", "listen": "2"}],
        "workers": None,
        "list": [1, 2],
    }
    new = {
        "listeners": [
            {"name": "x", "listen": "0"},
            {"name": "a", "listen": "9"},
            old["listeners"][1],
        ],
        "drain_timeout": "5s",
        "list": [1, 2, 3],
    }
    changes = config_diff(old, new)
    assert {"op": "replace", "path": "listeners[a].listen", "old": "1", "new": "9"} in changes
    assert {"op": "add", "path": "listeners[x]", "new": {"name": "x", "listen": "0"}} in changes
    assert not any(c["path"].startswith("listeners[b]") for c in changes)
    assert {"op": "remove", "path": "workers", "old": None} in changes
    assert {"op": "add", "path": "drain_timeout", "new": "5s"} in changes
    assert {"op": "replace", "path": "list", "old": [1, 2], "new": [1, 2, 3]} in changes
    assert config_diff(new, new) == []
    assert format_change(changes[0]).startswith(("~ ", "+ ", "- "))

    reordered = {"listeners": [old["listeners"][1], old["listeners"][0]]}
    assert config_diff({"listeners": old["listeners"]}, reordered) == [
        {"op": "replace", "path": "listeners.(order)", "old": ["a", "b"], "new": ["b", "a"]}
    ]


def test_generated_admin_token_is_safe_on_a_command_line(tmp_path: Path) -> None:
    # A secret beginning with "-" is read by argparse as an option after --token; the
    # generated one carries a fixed prefix, so no draw of the random part can do that.
    for i in range(20):
        data = tmp_path / str(i)
        load_tokens(data)
        secret = first_read_write_secret(data)
        assert secret is not None and secret.startswith("pmk_"), secret
        assert len(secret) > 40


def test_leases_report_their_earliest_deadline_and_wake_the_watcher_on_a_grant(
    tmp_path: Path,
) -> None:
    leases = Leases(SqliteStore(tmp_path / "store.db"))
    assert leases.next_deadline() is None
    woken: list[int] = []
    leases.on_grant(lambda: woken.append(1))
    before = time.monotonic()
    leases.grant("a", "127.0.0.1:1", 30.0)
    leases.grant("a", "127.0.0.1:2", 5.0)
    assert len(woken) == 2
    deadline = leases.next_deadline()
    assert deadline is not None and before + 5.0 <= deadline <= time.monotonic() + 5.0
    # heartbeats move deadlines later and wake nobody
    leases.heartbeat("a", "127.0.0.1:2")
    assert len(woken) == 2
    leases.drop("a", "127.0.0.1:2")
    later = leases.next_deadline()
    assert later is not None and later >= before + 30.0
    leases.on_grant(None)
    leases.grant("b", "127.0.0.1:3", 1.0)
    assert len(woken) == 2


def test_the_lease_loop_waits_between_tries_when_an_expired_lease_cannot_go(
    tmp_path: Path,
) -> None:
    """A draining host refuses removals: the loop must retry at its floor, not spin."""
    leases = Leases(SqliteStore(tmp_path / "store.db"))
    leases.grant("a", "127.0.0.1:1", 0.001)
    tries: list[float] = []

    class Draining:
        def update(self, *_args: object, **_kw: object) -> None:
            tries.append(time.monotonic())
            raise DrainingError("draining")

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(_lease_loop(cast(Host, Draining()), leases))
        # Not a sync: the loop runs for a fixed window whose tries are then counted.
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_for(1.0))
    # a try at once, then one per LEASE_RETRY (0.2 s): about 5, never hundreds
    assert 3 <= len(tries) <= 7, len(tries)
    assert all(b - a >= LEASE_RETRY * 0.9 for a, b in itertools.pairwise(tries))
    # the loop let go of the lease table's wake-up when it ended
    assert leases._on_grant is None
