"""HTTP/2 upstreams end to end: the client's host reaches the upstream as ``:authority`` over
one shared connection per endpoint that is reopened after the upstream restarts; and HTTP
health checks over h2c and over TLS with HTTP/2."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from certs import CA
from meshtest import (
    HTTP_TIMEOUT,
    Echo,
    Mesh,
    Proc,
    cluster,
    dead_address,
    listener,
    metric,
    poll,
    route,
)


def connections(m: Mesh, name: str) -> float:
    value = metric(m.metrics(), "pymesh_upstream_connections_total", cluster=name)
    return value or 0.0


def test_http2_upstreams_see_the_client_host_as_authority_on_one_reopened_connection(
    fixed_echo: Callable[[str, str], Proc], mesh: Callable[..., Mesh]
) -> None:
    address = dead_address()
    up = fixed_echo(address, "h2")
    rewritten = {**route("c", prefix="/rw"), "rewrite": {"host": "rewritten.test:8443"}}
    m = mesh(
        {
            "listeners": [listener("in", [rewritten, route("c")])],
            "clusters": [cluster("c", address, protocol="http2")],
        }
    )
    url = m.listener("in")
    # An HTTP/1.1 client: its Host header becomes :authority upstream, and no Host goes along.
    r = httpx.get(url + "/", headers={"host": "api.example.com"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["echo-http-version"] == "HTTP/2"
    assert r.headers["echo-authority"] == "api.example.com"
    assert "echo-host" not in r.headers
    # An HTTP/2 client: its :authority goes through as it came.
    with httpx.Client(http1=False, http2=True, timeout=HTTP_TIMEOUT) as h2:
        r = h2.get(url + "/", headers={"host": "h2.example.com:9000"})
        assert r.http_version == "HTTP/2"
        assert r.headers["echo-authority"] == "h2.example.com:9000"
        # The route's host rewrite is what the upstream sees.
        assert h2.get(url + "/rw").headers["echo-authority"] == "rewritten.test:8443"

        # Twenty concurrent slow requests share the one connection.
        start = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            replies = list(
                pool.map(
                    lambda i: h2.get(url + "/?delay=400ms", headers={"host": f"c{i}.test"}),
                    range(20),
                )
            )
        took = time.monotonic() - start
    assert [r.status_code for r in replies] == [200] * 20
    assert [r.headers["echo-authority"] for r in replies] == [f"c{i}.test" for i in range(20)]
    assert took < 20 * 0.4 / 2, took  # multiplexed, not one after another
    assert connections(m, "c") == 1

    # The upstream restarts on the same port: the closed connection is replaced.
    assert up.stop() == 0
    fixed_echo(address, "h2-again")

    def served_again() -> httpx.Response | None:
        r = httpx.get(url + "/", headers={"host": "back.test"}, timeout=HTTP_TIMEOUT)
        return r if r.status_code == 200 else None

    r = poll(served_again, timeout=10, what="served by the restarted upstream")
    assert r.headers["server-id"] == "h2-again"
    assert r.headers["echo-authority"] == "back.test"
    assert connections(m, "c") == 2
    # And it multiplexes again.
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: httpx.get(url + "/?delay=200ms").status_code, range(10)))
    assert codes == [200] * 10
    assert connections(m, "c") == 2


def endpoint_healthy(m: Mesh, name: str, address: str) -> bool | None:
    for e in m.stats()["clusters"][name]["endpoint_status"]:
        if e["address"] == address:
            healthy: bool = e["healthy"]
            return healthy
    return None


CHECK = {"interval": "100ms", "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}


def test_http_checks_over_h2c_want_an_expected_status(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("h2")
    m = mesh(
        {
            "listeners": [listener("in", [route("good", prefix="/good"), route("bad")])],
            "clusters": [
                cluster(
                    "good",
                    up.address,
                    protocol="http2",
                    panic_threshold_percent=0,
                    health_check={**CHECK, "path": "/healthz"},
                ),
                cluster(
                    "bad",
                    up.address,
                    protocol="http2",
                    panic_threshold_percent=0,
                    health_check={**CHECK, "path": "/?status=503"},
                ),
            ],
        }
    )
    url = m.listener("in")
    poll(lambda: endpoint_healthy(m, "good", up.address), what="h2c checks pass")
    r = httpx.get(url + "/good", timeout=HTTP_TIMEOUT)
    assert (r.status_code, r.headers["echo-http-version"]) == (200, "HTTP/2")

    def failed_checks() -> float:
        v = metric(m.metrics(), "pymesh_health_checks_total", cluster="bad", result="failure")
        return v or 0.0

    poll(lambda: failed_checks() >= 3, what="h2c checks of a 503 fail")
    assert endpoint_healthy(m, "bad", up.address) is False
    r = httpx.get(url + "/", timeout=HTTP_TIMEOUT)
    assert (r.status_code, r.text) == (503, "no healthy upstream\n")


def test_an_unhealthy_h2_endpoint_over_tls_leaves_the_rotation_and_comes_back(
    tmp_path: Path,
    fixed_echo: Callable[[str, str], Proc],
    mesh: Callable[..., Mesh],
) -> None:
    ca = CA(tmp_path / "pki")
    # The TLS endpoint: a proxy terminating TLS (h2 by ALPN) in front of an echo that the
    # test stops and restarts; while the echo is down, its /healthz answers 503.
    echo_address = dead_address()
    behind = fixed_echo(echo_address, "behind")
    served = ca.issue("back.test")
    back = mesh(
        {
            "listeners": [
                {
                    "name": "back",
                    "listen": "127.0.0.1:0",
                    "routes": [route("e")],
                    "tls": {"certificates": [{"cert": str(served.cert), "key": str(served.key)}]},
                }
            ],
            "clusters": [cluster("e", echo_address)],
        }
    )
    back_address = back.listeners()["back"]
    tls: dict[str, Any] = {"sni": "back.test", "ca": str(ca.path)}
    front = mesh(
        {
            "listeners": [listener("front", [route("b")])],
            "clusters": [
                cluster(
                    "b",
                    back_address,
                    protocol="http2",
                    tls=tls,
                    panic_threshold_percent=0,
                    health_check={**CHECK, "path": "/healthz"},
                )
            ],
        }
    )
    url = front.listener("front")
    poll(lambda: endpoint_healthy(front, "b", back_address), what="TLS h2 checks pass")
    r = httpx.get(url + "/", headers={"host": "svc.test"}, timeout=HTTP_TIMEOUT)
    assert (r.status_code, r.headers["server-id"]) == (200, "behind")
    # Through the TLS hop over HTTP/2 the client's host arrived as :authority (and the back
    # proxy passed it on as Host).
    assert r.headers["echo-host"] == "svc.test"

    assert behind.stop() == 0
    poll(lambda: endpoint_healthy(front, "b", back_address) is False, what="out of rotation")
    r = httpx.get(url + "/", timeout=HTTP_TIMEOUT)
    assert (r.status_code, r.text) == (503, "no healthy upstream\n")

    fixed_echo(echo_address, "behind-again")
    poll(lambda: endpoint_healthy(front, "b", back_address), what="back in rotation")
    r = httpx.get(url + "/", timeout=HTTP_TIMEOUT)
    assert (r.status_code, r.headers["server-id"]) == (200, "behind-again")
    successes = metric(front.metrics(), "pymesh_health_checks_total", cluster="b", result="success")
    assert successes is not None and successes >= 2
