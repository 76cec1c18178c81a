"""Fixtures for end-to-end tests (the machinery lives in ``meshtest.py``).

``echo`` starts ``pymesh echo`` upstreams and ``mesh`` starts ``pymesh run`` proxies: real
processes of the installed console script on loopback ports chosen by the OS. Both stop what
they started with SIGTERM at teardown and fail the test if a process does not exit 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshtest import ECHO_LINE, PYMESH, Echo, Mesh, Proc, spawn_mesh, stop_all


@pytest.fixture
def fixed_echo() -> Iterator[Callable[[str, str], Proc]]:
    """Factory: ``fixed_echo(address, id)`` runs ``pymesh echo`` on a given address, so a test
    can stop an upstream and start it again on the same port."""
    started: list[Proc] = []

    def start(address: str, name: str) -> Proc:
        proc = Proc([PYMESH, "echo", "--listen", address, "--workers", "1", "--id", name])
        started.append(proc)
        proc.wait_line(ECHO_LINE)
        return proc

    yield start
    for p in started:
        p.ensure_stopped()


@pytest.fixture
def echo() -> Iterator[Callable[..., Echo]]:
    """Factory: ``echo("v1")`` starts ``pymesh echo --listen 127.0.0.1:0 --id v1``."""
    started: list[Echo] = []

    def start(name: str | None = None) -> Echo:
        args = [PYMESH, "echo", "--listen", "127.0.0.1:0", "--workers", "1"]
        if name is not None:
            args += ["--id", name]
        proc = Proc(args)
        try:
            m = proc.wait_line(ECHO_LINE)
        except AssertionError:
            proc.ensure_stopped()
            raise
        e = Echo(proc, m.group(1), m.group(2))
        started.append(e)
        return e

    yield start
    stop_all([e.proc for e in started])


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    """Factory: ``mesh(config_dict, extra_args=[...])`` runs ``pymesh run --config`` on it."""
    started: list[Mesh] = []

    def start(
        config: dict[str, Any] | None,
        extra_args: list[str] | None = None,
        expect_listeners: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Mesh:
        m = spawn_mesh(tmp_path / f"mesh{len(started)}", config, extra_args, expect_listeners, env)
        started.append(m)
        return m

    yield start
    for m in started:
        m.admin.close()
    stop_all([m.proc for m in started])
