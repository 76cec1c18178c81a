"""The live tap end to end: ``GET /tap`` server-sent events over real HTTP, filtered; the
subscriber leaves when the client disconnects; ``pymesh tap`` prints rows; and with nobody
listening no record is made."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from meshtest import HTTP_TIMEOUT, PYMESH, Echo, Mesh, Proc, cluster, listener, poll


def _config(echo: Echo) -> dict[str, Any]:
    routes = [
        {"name": "api", "match": {"path_prefix": "/api"}, "to": [{"cluster": "up"}]},
        {"name": "web", "match": {"path_prefix": "/"}, "to": [{"cluster": "up"}]},
    ]
    return {"listeners": [listener("in", routes)], "clusters": [cluster("up", echo.address)]}


@contextmanager
def _tap(m: Mesh, **params: str) -> Iterator[queue.Queue[dict[str, Any]]]:
    """Subscribe over HTTP in a thread; events land in the queue. Leaving the block closes
    the connection (a client that goes away)."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    opened = threading.Event()
    stop = threading.Event()
    client = httpx.Client(base_url=m.admin_url, headers=m.auth, timeout=HTTP_TIMEOUT)

    def run() -> None:
        with client.stream("GET", "/tap", params=params) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                opened.set()
                if stop.is_set():
                    return
                if line.startswith("data:"):
                    events.put(json.loads(line[5:]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert opened.wait(HTTP_TIMEOUT), "the tap stream never opened"
        yield events
    finally:
        stop.set()
        t.join(HTTP_TIMEOUT)  # the server's keep-alive (1 s) wakes the reader
        client.close()
        assert not t.is_alive()


def _drain(events: queue.Queue[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [events.get(timeout=HTTP_TIMEOUT) for _ in range(n)]


def test_tap_streams_filtered_events_and_leaves_on_disconnect(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("v1")
    m = mesh(_config(up))
    url = m.listener("in")
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        # Nobody listens yet: requests make no tap record.
        for _ in range(20):
            assert c.get("/api/quiet").status_code == 200
        stats = m.stats()["tap"]
        assert (stats["subscribers"], stats["records_total"]) == (0, 0), stats

        with (
            _tap(m) as everything,
            _tap(m, route="api", status="5xx") as api_errors,
            _tap(m, path_prefix="/api/x", status="200") as prefix,
        ):
            poll(lambda: m.stats()["tap"]["subscribers"] == 3, what="three subscribers")
            assert c.get("/api/x1").status_code == 200
            assert c.get("/api/x2?status=503").status_code == 503
            assert c.get("/other?status=500").status_code == 500
            assert c.get("/api/y").status_code == 200

            got = _drain(everything, 4)
            assert [e["path"] for e in got] == [
                "/api/x1",
                "/api/x2?status=503",
                "/other?status=500",
                "/api/y",
            ]
            first = got[0]
            assert (first["listener"], first["route"], first["cluster"]) == ("in", "api", "up")
            assert (first["method"], first["status"], first["flags"], first["attempts"]) == (
                "GET",
                200,
                "-",
                1,
            )
            assert first["endpoint"] == up.address and first["duration_ms"] > 0
            assert first["time"].endswith("Z") and "trace_id" in first
            assert [e["path"] for e in _drain(api_errors, 1)] == ["/api/x2?status=503"]
            assert [e["path"] for e in _drain(prefix, 1)] == ["/api/x1"]
            assert api_errors.empty() and prefix.empty()
    # Every client went away: every subscriber left, and the tap is off again.
    poll(lambda: m.stats()["tap"]["subscribers"] == 0, what="subscribers back to 0")
    records = m.stats()["tap"]["records_total"]
    assert records == 4, records
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        assert c.get("/api/after").status_code == 200
    assert m.stats()["tap"]["records_total"] == records, "nobody listens: no records"
    assert "pymesh_tap_subscribers 0" in m.metrics()


def test_a_bad_status_filter_is_refused(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    m = mesh(_config(echo("v1")))
    r = m.admin.get("/tap", params={"status": "5x"})
    assert r.status_code == 422, r.text
    assert m.stats()["tap"]["subscribers"] == 0


def test_pymesh_tap_prints_rows(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    m = mesh(_config(echo("v1")))
    assert m.token is not None
    args = [
        PYMESH,
        "tap",
        "--admin",
        m.admin_url,
        "--token",
        m.token,
        "--route",
        "api",
        "--count",
        "2",
    ]
    proc = Proc(args)
    try:
        poll(lambda: m.stats()["tap"]["subscribers"] == 1, what="the CLI subscribed")
        with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
            assert c.get("/elsewhere").status_code == 200  # filtered out
            assert c.get("/api/one").status_code == 200
            assert c.get("/api/two?status=404").status_code == 404
        assert proc.wait() == 0, proc.describe()
    finally:
        proc.ensure_stopped()
    lines = proc.stdout_lines
    assert lines[0].split()[:5] == ["TIME", "LISTENER", "ROUTE", "CLUSTER", "STATUS"], lines
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 2, lines
    assert rows[0][1:6] == ["in", "api", "up", "200", "-"] and rows[0][-1] == "/api/one", rows
    assert rows[1][4] == "404" and rows[1][-1] == "/api/two?status=404", rows
    poll(lambda: m.stats()["tap"]["subscribers"] == 0, what="the CLI left")


def test_pymesh_tap_stops_after_its_duration(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    m = mesh(_config(echo("v1")))
    assert m.token is not None
    args = [
        PYMESH,
        "tap",
        "--admin",
        m.admin_url,
        "--token",
        m.token,
        "-o",
        "json",
        "--duration",
        "1.5",
    ]
    proc = Proc(args)
    try:
        poll(lambda: m.stats()["tap"]["subscribers"] == 1, what="the CLI subscribed")
        with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
            assert c.get("/api/json").status_code == 200
        assert proc.wait() == 0, proc.describe()
    finally:
        proc.ensure_stopped()
    events = [json.loads(line) for line in proc.stdout_lines if line.startswith("{")]
    assert [e["path"] for e in events] == ["/api/json"], proc.describe()
