"""Process lifecycle of ``pymesh run`` / ``pymesh validate``: start, readiness, bad input, drain."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from meshtest import HTTP_TIMEOUT, PYMESH, Echo, Mesh, cluster, listener, poll, route

RUN_TIMEOUT = 60  # seconds for a command that should exit on its own


def good_config(endpoint: str) -> dict[str, Any]:
    return {
        "drain_timeout": "10s",
        "listeners": [listener("ingress", [route("backend")])],
        "clusters": [cluster("backend", endpoint)],
    }


def bad_config() -> dict[str, Any]:
    return {
        "listeners": [listener("ingress", [route("missing-cluster")])],
        "clusters": [cluster("backend", "127.0.0.1:9")],
    }


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYMESH, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_ready_after_start(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("e")
    m = mesh(good_config(e.address), extra_args=["--workers", "1"])
    assert m.get("/live").json() == {"live": True}
    ready = m.ready()
    assert ready["ready"] is True
    assert ready["version"] >= 1
    assert ready["listeners"] == m.listeners()
    assert m.listener("ingress") == f"http://{ready['listeners']['ingress']}"
    assert not m.listener("ingress").endswith(":0")


def test_sigterm_lets_in_flight_request_finish(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    e = echo("slow")
    m = mesh(good_config(e.address))
    url = m.listener("ingress")
    host, port_text = url.removeprefix("http://").rsplit(":", 1)
    port = int(port_text)
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        t0 = time.monotonic()
        try:
            r = httpx.get(url + "/?delay=3s", timeout=HTTP_TIMEOUT)
            outcome["status"] = r.status_code
            outcome["server"] = r.headers.get("server-id")
        except BaseException as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=slow_request)
    t.start()
    try:
        # in flight = the proxy holds an upstream connection for it (the pool was empty)
        poll(
            lambda: m.stats()["clusters"]["backend"]["active_connections"] >= 1,
            10.0,
            what="the request to be in flight upstream",
        )
        m.proc.signal(signal.SIGTERM)

        # draining: new connections are refused while the slow request finishes
        def refused() -> bool:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return False
            except OSError:
                return True

        poll(refused, 1.5, interval=0.02, what="the listener to stop accepting")
        # ... and the admin API says it is not ready (observed while the request is in flight)
        r = m.get("/ready")
        assert r.status_code == 503, r.text
        assert r.json()["ready"] is False
        assert "status" not in outcome, "the slow request ended before the drain was observed"
    finally:
        t.join(HTTP_TIMEOUT + 5)
    assert "error" not in outcome, outcome
    assert outcome["status"] == 200
    assert outcome["server"] == "slow"
    assert outcome["elapsed"] >= 2.9
    assert m.proc.wait() == 0, m.proc.describe()
    assert "Traceback" not in m.proc.stderr


def test_sigint_exits_0(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("e")
    m = mesh(good_config(e.address))
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/").status_code == 200
    m.proc.signal(signal.SIGINT)
    assert m.proc.wait() == 0, m.proc.describe()
    assert "Traceback" not in m.proc.stderr


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad_config()))
    p = run(
        ["run", "--config", str(path), "--admin", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        tmp_path,
    )
    assert p.returncode == 2, p
    assert "listeners.0.routes.0.to.0.cluster" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert "admin listening" not in p.stdout


def test_run_with_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.yaml"
    p = run(
        ["run", "--config", str(missing), "--admin", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        tmp_path,
    )
    assert p.returncode == 2, p
    assert "does-not-exist.yaml" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_run_with_unparseable_yaml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listeners: [\n  - name: {oops\n")
    p = run(
        ["run", "--config", str(path), "--admin", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        tmp_path,
    )
    assert p.returncode == 2, p
    assert p.stderr.strip()
    assert "Traceback" not in p.stderr + p.stdout


def test_run_with_listener_port_taken_exits_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cfg = good_config("127.0.0.1:9")
        cfg["listeners"][0]["listen"] = f"127.0.0.1:{taken.getsockname()[1]}"
        path = tmp_path / "taken.yaml"
        path.write_text(yaml.safe_dump(cfg))
        p = run(
            ["run", "--config", str(path), "--admin", "127.0.0.1:0", "--data-dir", str(tmp_path)],
            tmp_path,
        )
    assert p.returncode == 2, p
    assert "listeners.0.listen" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_validate_good(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(good_config("127.0.0.1:9")))
    p = run(["validate", str(path)], tmp_path)
    assert p.returncode == 0, p
    assert "ok" in p.stdout
    # JSON is YAML too
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good_config("127.0.0.1:9")))
    assert run(["validate", str(path)], tmp_path).returncode == 0


def test_validate_bad(tmp_path: Path) -> None:
    cfg = bad_config()
    cfg["clusters"][0]["connect_timeout"] = "soon"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = run(["validate", str(path)], tmp_path)
    assert p.returncode == 2, p
    lines = [line.strip() for line in p.stderr.splitlines()]
    assert any(line.startswith("clusters.0.connect_timeout: ") for line in lines), p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    p = run(["validate", str(tmp_path / "nope.yaml")], tmp_path)
    assert p.returncode == 2, p
    assert "Traceback" not in p.stderr + p.stdout


def test_validate_reports_semantic_errors_by_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad_config()))
    p = run(["validate", str(path)], tmp_path)
    assert p.returncode == 2, p
    assert any(
        line.strip().startswith("listeners.0.routes.0.to.0.cluster: ")
        for line in p.stderr.splitlines()
    ), p.stderr


def test_demo(mesh: Callable[..., Mesh]) -> None:
    m = mesh(None, extra_args=["--listen", "127.0.0.1:0"], expect_listeners=["ingress"])
    url = m.listener("ingress")
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        for _ in range(200):
            r = c.get("/")
            assert r.status_code == 200
            seen[r.headers["server-id"]] += 1
    assert set(seen) == {"hello-v1", "hello-v2"}, seen
    assert seen["hello-v1"] > seen["hello-v2"], seen  # a 90/10 split

    curl_lines = poll(
        lambda: [line for line in m.proc.stdout_lines if re.search(r"\bcurl\b", line)],
        10.0,
        what="curl lines on stdout",
    )
    assert len(curl_lines) >= 3, m.proc.stdout
    admin = m.admin_url.removeprefix("http://")
    listen = url.removeprefix("http://")
    for line in curl_lines:
        assert listen in line or admin in line, f"curl line points elsewhere: {line}"
    # the lines work as printed
    for line in curl_lines:
        for target in re.findall(r"https?://[^\s'\"]+", line):
            # the admin API needs the token the line reads from the data dir
            headers = m.auth if target.startswith(m.admin_url) else {}
            r = httpx.get(target, headers=headers, timeout=HTTP_TIMEOUT)
            assert r.status_code == 200, line
    assert any("Authorization: Bearer $(pymesh token --data-dir" in line for line in curl_lines)
