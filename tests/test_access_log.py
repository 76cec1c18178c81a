"""Access logs end to end: JSON lines and text templates written by a real proxy to a file or
its stdout, sampling, bad settings refused with their field path, and a sink nobody reads
never slowing traffic."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from meshtest import HTTP_TIMEOUT, Echo, Mesh, cluster, dead_address, listener, metric, poll

from pymesh.config import load_config
from pymesh.errors import ConfigError


def _mesh_config(echo: Echo, access_log: dict[str, Any]) -> dict[str, Any]:
    """Listener ``in``: ``/api`` to the echo (retrying 503 twice), ``/dead`` to a dead
    upstream; anything else matches no route."""
    routes = [
        {
            "name": "api",
            "match": {"path_prefix": "/api"},
            "to": [{"cluster": "up"}],
            "retry": {"attempts": 2, "on": ["503"], "backoff": "1ms"},
        },
        {"name": "dead", "match": {"path_prefix": "/dead"}, "to": [{"cluster": "gone"}]},
    ]
    lst = listener("in", routes)
    lst["access_log"] = access_log
    return {
        "listeners": [lst],
        "clusters": [cluster("up", echo.address), cluster("gone", dead_address())],
    }


def _lines(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` JSON lines of ``path``, once it has them (the writer flushes within
    200 ms of a line being queued)."""

    def ready() -> list[str] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return lines if len(lines) >= n else None

    lines: list[str] = poll(ready, 10, what=f"{n} access-log lines in {path}")
    return [json.loads(line) for line in lines]


def test_json_lines_to_a_file_describe_each_request(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    up = echo("v1")
    log = tmp_path / "access.log"
    m = mesh(_mesh_config(up, {"format": "json", "path": str(log)}))
    with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
        r = c.post(
            "/api/items?x=1",
            content=b"hello",
            headers={"x-request-id": "rid-1", "user-agent": "t/1"},
        )
        assert r.status_code == 200
        assert c.get("/nowhere").status_code == 404
        assert c.get("/dead").status_code == 503
        assert c.get("/api/fail?status=503").status_code == 503
    by_path = {e["path"]: e for e in _lines(log, 4)}
    ok = by_path["/api/items?x=1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ok["time"]), ok["time"]
    assert ok["request_id"] == "rid-1"
    assert (ok["method"], ok["status"], ok["flags"], ok["protocol"]) == (
        "POST",
        200,
        "-",
        "HTTP/1.1",
    )
    assert ok["authority"] == m.listener("in").removeprefix("http://")
    assert (ok["request_bytes"], ok["response_bytes"]) == (5, 5), "echo sends the body back"
    assert (ok["route"], ok["cluster"], ok["listener"]) == ("api", "up", "in")
    assert ok["upstream"] == up.address and ok["attempts"] == 1
    assert ok["user_agent"] == "t/1"
    assert ok["duration_ms"] >= ok["upstream_first_byte_ms"] > 0
    assert ok["downstream_peer"].startswith("127.0.0.1:")
    assert "trace_id" in ok and "grpc_status" in ok

    unrouted = by_path["/nowhere"]
    assert (unrouted["status"], unrouted["flags"], unrouted["attempts"]) == (404, "NR", 0)
    assert unrouted["route"] is None and unrouted["upstream"] is None
    dead = by_path["/dead"]
    assert dead["status"] == 503 and set(dead["flags"].split(",")) & {"UF", "UH"}, dead
    retried = by_path["/api/fail?status=503"]
    assert (retried["status"], retried["attempts"]) == (503, 3), retried
    assert "URX" in retried["flags"].split(","), retried
    assert metric(m.metrics(), "pymesh_access_log_dropped_total") == 0


def test_a_text_template_and_sampling(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    up = echo("v1")
    text_log, none_log = tmp_path / "text.log", tmp_path / "none.log"
    cfg = _mesh_config(
        up,
        {"format": "text", "template": "{method} {path} {status} [{flags}]", "path": str(text_log)},
    )
    second = listener("quiet", [{"name": "all", "to": [{"cluster": "up"}]}])
    second["access_log"] = {"path": str(none_log), "sample_percent": 0}
    cfg["listeners"].append(second)
    m = mesh(cfg)
    with httpx.Client(timeout=HTTP_TIMEOUT) as c:
        assert c.get(m.listener("in") + "/api/a").status_code == 200
        assert c.get(m.listener("in") + "/zzz").status_code == 404
        for _ in range(50):
            assert c.get(m.listener("quiet") + "/").status_code == 200
    lines = (
        poll(
            lambda: text_log.exists() and len(text_log.read_text().splitlines()) >= 2 and text_log,
            10,
            what="two text lines",
        )
        .read_text()
        .splitlines()
    )
    assert sorted(lines) == ["GET /api/a 200 [-]", "GET /zzz 404 [NR]"]
    # The sampled-out listener's file was opened at apply, and never written.
    assert none_log.exists() and none_log.read_text() == ""


def test_stdout_is_the_default_sink(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    up = echo("v1")
    m = mesh(_mesh_config(up, {"format": "json"}))
    with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/api/stdout-check", headers={"x-request-id": "on-stdout"}).status_code == 200

    def logged() -> dict[str, Any] | None:
        for line in list(m.proc.stdout_lines):
            if line.startswith("{") and "on-stdout" in line:
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    entry = poll(logged, 10, what="the JSON line on stdout")
    assert (entry["path"], entry["status"], entry["route"]) == ("/api/stdout-check", 200, "api")


def test_bad_settings_are_refused_with_their_field_path(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    base = {"listeners": [{"name": "in", "listen": "127.0.0.1:0"}]}
    for access_log, loc, words in [
        ({"format": "text", "template": "{status} {nope}"}, "access_log.template", "{nope}"),
        ({"sample_percent": 101}, "access_log.sample_percent", "100"),
        ({"sample_percent": -1}, "access_log.sample_percent", "0"),
        ({"format": "json", "template": "{status}"}, "access_log.template", "text"),
        ({"format": "csv"}, "access_log.format", "json"),
        ({"pathh": "x"}, "access_log.pathh", "xtra"),
    ]:
        data = json.loads(json.dumps(base))
        data["listeners"][0]["access_log"] = access_log
        try:
            load_config(data)
        except ConfigError as e:
            items = [(i["loc"], i["msg"]) for i in e.errors]
            assert any(i[0] == f"listeners.0.{loc}" and words in i[1] for i in items), items
        else:
            raise AssertionError(f"{access_log} was accepted")

    # A file the core cannot open is refused at apply; the old config keeps serving.
    up = echo("v1")
    log = tmp_path / "ok.log"
    m = mesh(_mesh_config(up, {"path": str(log)}))
    before = m.config()
    bad = json.loads(json.dumps(before))
    bad["listeners"][0]["access_log"]["path"] = str(tmp_path / "no-such-dir" / "a.log")
    r = m.put_config(bad)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert errors[0]["loc"] == "listeners.0.access_log.path", errors
    assert "no-such-dir" in errors[0]["msg"], errors
    assert m.config() == before
    with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/api/still").status_code == 200
    assert any(e["path"] == "/api/still" for e in _lines(log, 1))


def test_a_sink_nobody_reads_never_slows_traffic(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    up = echo("v1")
    fifo = tmp_path / "blocked.fifo"
    os.mkfifo(fifo)
    # A reader that never reads: the pipe's buffer fills and the writer thread blocks.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        m = mesh(_mesh_config(up, {"format": "json", "path": str(fifo)}))
        pad = "p" * 2000  # long lines fill the pipe (64 KiB) and the queue sooner
        started = time.monotonic()
        with httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT) as c:
            for k in range(12_000):
                assert c.get(f"/api/{k}?{pad}").status_code == 200
                if k % 500 == 499 and (metric(m.metrics(), "pymesh_access_log_dropped_total") or 0):
                    break
        elapsed = time.monotonic() - started
        dropped = metric(m.metrics(), "pymesh_access_log_dropped_total") or 0
        assert dropped > 0, "the queue filled and records were dropped, not waited for"
        # The requests went on at full speed: nothing waited for the sink.
        assert elapsed < 60, elapsed
        with httpx.Client(base_url=m.listener("in"), timeout=2) as c:
            t0 = time.monotonic()
            assert c.get("/api/after").status_code == 200
            assert time.monotonic() - t0 < 1
    finally:
        os.close(reader)


def test_the_snapshot_resolves_defaults_and_stdout() -> None:
    from pymesh.config import DEFAULT_ACCESS_LOG_TEMPLATE  # noqa: PLC0415
    from pymesh.snapshot import to_snapshot  # noqa: PLC0415

    cfg = load_config(
        {
            "listeners": [
                {"name": "a", "listen": "127.0.0.1:0", "access_log": {"format": "text"}},
                {"name": "b", "listen": "127.0.0.1:0", "access_log": {"path": "-"}},
                {"name": "c", "listen": "127.0.0.1:0"},
            ]
        }
    )
    logs = [lst["access_log"] for lst in to_snapshot(cfg, 1)["listeners"]]
    assert logs == [
        {
            "format": "text",
            "template": DEFAULT_ACCESS_LOG_TEMPLATE,
            "path": None,
            "sample_percent": 100,
        },
        {"format": "json", "template": None, "path": None, "sample_percent": 100},
        None,
    ]
