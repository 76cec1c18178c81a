"""``pymesh bench`` and ``pymesh.bench.run``: the bundled load generator, against real
``pymesh echo`` upstreams and a proxy on loopback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from certs import CA
from meshtest import PYMESH, Echo, Mesh, cluster, dead_address, listener, route

from pymesh import bench


def test_json_output_counts_every_request_and_status(echo: Callable[..., Echo]) -> None:
    up = echo("b")
    out = subprocess.run(
        [PYMESH, "bench", f"http://{up.address}/?status=503", "-c", "4", "-n", "300", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["requests"] == 300
    assert result["status"] == {"503": 300}
    assert result["errors"]["total"] == 0
    lat = result["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["p9999"] <= lat["max"]
    assert set(result) >= {
        "requests",
        "errors",
        "duration_s",
        "rps",
        "bytes",
        "status",
        "latency_us",
    }


def test_python_api_posts_bodies_through_the_proxy(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("b")
    m = mesh(
        {
            "listeners": [listener("in", [route("c", name="all")])],
            "clusters": [cluster("c", up.address)],
        }
    )
    r = bench.run(
        m.listener("in") + "/",
        connections=2,
        requests=200,
        method="POST",
        body=b"x" * 1000,
        headers={"x-bench": "1"},
    )
    assert r.requests == 200
    assert r.status == {"200": 200}
    # Each response echoes the 1000-byte body back, plus a head.
    assert r.bytes > 200 * 1000


def test_open_loop_holds_its_rate_and_counts_from_the_due_time(echo: Callable[..., Echo]) -> None:
    up = echo("slow")
    r = bench.run(f"http://{up.address}/?delay=20ms", connections=4, duration="1s", rate=100.0)
    assert 70 <= r.requests <= 105, r
    assert r.latency_us.p50 >= 20_000


def test_connect_errors_are_counted_and_exit_code_says_nothing_answered() -> None:
    out = subprocess.run(
        [PYMESH, "bench", f"http://{dead_address()}/", "-c", "1", "-d", "300ms", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["requests"] == 0
    assert result["errors"]["connect"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://127.0.0.1:1/"], "http://"),
        (["http://127.0.0.1:1/", "-H", "nocolon"], "Name: value"),
        (["http://127.0.0.1:1/", "--timeout", "soon"], "timeout"),
        (["http://127.0.0.1:1/", "-m", "4"], "streams"),
        (["https://127.0.0.1:1/", "--cert", "c.pem"], "cert"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    out = subprocess.run(
        [PYMESH, "bench", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_http2_streams_and_tls_against_a_tls_listener(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ca = CA(tmp_path / "pki")
    served = ca.issue("localhost")
    up = echo("b")
    m = mesh(
        {
            "listeners": [
                {
                    "name": "tls",
                    "listen": "127.0.0.1:0",
                    "routes": [route("c")],
                    "tls": {"cert": str(served.cert), "key": str(served.key)},
                },
                listener("plain", [route("c")]),
            ],
            "clusters": [cluster("c", up.address)],
        }
    )
    port = m.listener("tls").rsplit(":", 1)[1]
    for http2 in (False, True):
        r = bench.run(
            f"https://localhost:{port}/?size=500",
            connections=2,
            requests=200,
            http2=http2,
            streams=4 if http2 else 1,
            cacert=str(ca.path),
        )
        assert (r.requests, r.errors.total, r.status) == (200, 0, {"200": 200}), r
    # h2c by prior knowledge, many streams on one connection, through the CLI.
    out = subprocess.run(
        [
            PYMESH,
            "bench",
            m.listener("plain") + "/",
            "--http2",
            "-c",
            "1",
            "-m",
            "16",
            "-n",
            "320",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["status"] == {"200": 320}
    # An untrusted certificate is a connect error, not a silent success.
    r = bench.run(f"https://localhost:{port}/", connections=1, duration="300ms")
    assert r.requests == 0 and r.errors.connect > 0
