"""The echo upstream (``pymesh echo``), seen directly, without the proxy."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx
from meshtest import HTTP_TIMEOUT, Echo


def test_server_id_is_the_given_name(echo: Callable[..., Echo]) -> None:
    e = echo("alpha")
    assert e.name == "alpha"
    r = httpx.get(e.url + "/", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    assert r.headers["server-id"] == "alpha"
    assert len(r.content) > 0


def test_server_id_defaults_to_the_bound_address(echo: Callable[..., Echo]) -> None:
    e = echo()
    host, port = e.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    r = httpx.get(e.url + "/", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    assert r.headers["server-id"] == e.address


def test_size(echo: Callable[..., Echo]) -> None:
    e = echo("sized")
    with httpx.Client(base_url=e.url, timeout=HTTP_TIMEOUT) as c:
        for n in (0, 1, 1024, 100_000, 1_000_000):
            r = c.get("/", params={"size": n})
            assert r.status_code == 200
            assert len(r.content) == n, n
            assert r.headers["server-id"] == "sized"


def test_status(echo: Callable[..., Echo]) -> None:
    e = echo("st")
    with httpx.Client(base_url=e.url, timeout=HTTP_TIMEOUT) as c:
        for s in (200, 204, 404, 418, 503):
            r = c.get("/", params={"status": s})
            assert r.status_code == s
            assert r.headers["server-id"] == "st"


def test_delay_is_roughly_respected(echo: Callable[..., Echo]) -> None:
    e = echo("slow")
    with httpx.Client(base_url=e.url, timeout=HTTP_TIMEOUT) as c:
        c.get("/healthz")  # connect first, so the timing below is the delay alone
        for delay, seconds in (("300ms", 0.3), ("1s", 1.0), ("0.5s", 0.5)):
            t0 = time.monotonic()
            r = c.get("/", params={"delay": delay})
            elapsed = time.monotonic() - t0
            assert r.status_code == 200
            assert seconds * 0.95 <= elapsed < seconds + 1.0, (delay, elapsed)
        t0 = time.monotonic()
        assert c.get("/").status_code == 200
        assert time.monotonic() - t0 < 0.25


def test_post_echoes_the_body(echo: Callable[..., Echo]) -> None:
    e = echo("poster")
    body = os.urandom(256 * 1024)
    with httpx.Client(base_url=e.url, timeout=HTTP_TIMEOUT) as c:
        r = c.post("/anything", content=body)
        assert r.status_code == 200
        assert r.content == body
        r = c.post("/", content=b"")
        assert r.status_code == 200
        assert r.content == b""
        r = c.post("/", content=b"hello pymesh")
        assert r.content == b"hello pymesh"


def test_healthz(echo: Callable[..., Echo]) -> None:
    e = echo("h")
    r = httpx.get(e.url + "/healthz", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    assert r.headers["server-id"] == "h"


def test_keep_alive_and_sigterm_exit_code(echo: Callable[..., Echo]) -> None:
    e = echo("ka")
    with httpx.Client(base_url=e.url, timeout=HTTP_TIMEOUT) as c:
        for _ in range(200):
            assert c.get("/").status_code == 200
    assert e.proc.stop() == 0
