"""Active health checks, the rotation and the panic threshold, end to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
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

INTERVAL_S = 0.2
UNHEALTHY_THRESHOLD = 2
TCP_CHECK = {
    "tcp": True,
    "interval": "200ms",
    "timeout": "200ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": UNHEALTHY_THRESHOLD,
}


def one_cluster(mesh: Callable[..., Mesh], endpoints: list[str], **extra: Any) -> Mesh:
    return mesh(
        {
            "listeners": [listener("ingress", [route("backend")])],
            "clusters": [cluster("backend", *endpoints, **extra)],
        }
    )


def health(m: Mesh, name: str = "backend") -> dict[str, bool]:
    eps = m.stats()["clusters"][name]["endpoint_status"]
    return {e["address"]: e["healthy"] for e in eps}


def statuses(url: str, n: int) -> Counter[str]:
    """``server-id`` of each 200, or the status of anything else, over ``n`` requests."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        for _ in range(n):
            r = c.get("/")
            seen[r.headers["server-id"] if r.status_code == 200 else str(r.status_code)] += 1
    return seen


def test_a_stopped_upstream_leaves_the_rotation_and_comes_back(
    echo: Callable[..., Echo], fixed_echo: Callable[[str, str], Proc], mesh: Callable[..., Mesh]
) -> None:
    stable = echo("stable")
    address = dead_address()
    flaky = fixed_echo(address, "flaky")
    m = one_cluster(mesh, [stable.address, address], health_check=TCP_CHECK)
    url = m.listener("ingress")
    poll(lambda: all(health(m).values()), what="both endpoints healthy")
    assert set(statuses(url, 20)) == {"stable", "flaky"}
    metrics = m.metrics()
    assert metric(metrics, "pymesh_endpoint_healthy", cluster="backend", endpoint=address) == 1

    flaky.stop()
    stopped = time.monotonic()
    poll(lambda: not health(m)[address], timeout=10, what="the stopped endpoint unhealthy")
    took = time.monotonic() - stopped
    # Two failed checks 200ms apart: out within about interval x threshold (plus a tick).
    assert took < INTERVAL_S * (UNHEALTHY_THRESHOLD + 1) + 1.0, took
    # 1 of 2 healthy is not below the 50% panic threshold: everything goes to the healthy one.
    assert statuses(url, 40) == Counter(stable=40)
    metrics = m.metrics()
    assert metric(metrics, "pymesh_endpoint_healthy", cluster="backend", endpoint=address) == 0
    assert (
        metric(metrics, "pymesh_endpoint_healthy", cluster="backend", endpoint=stable.address) == 1
    )
    failures = metric(metrics, "pymesh_health_checks_total", cluster="backend", result="failure")
    assert failures is not None and failures >= UNHEALTHY_THRESHOLD

    fixed_echo(address, "flaky-again")
    poll(lambda: health(m)[address], timeout=10, what="the restarted endpoint healthy")
    assert set(statuses(url, 20)) == {"stable", "flaky-again"}
    successes = metric(
        m.metrics(), "pymesh_health_checks_total", cluster="backend", result="success"
    )
    assert successes is not None and successes > 0


def test_http_checks_want_an_expected_status(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    check = {"interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 1}
    m = mesh(
        {
            "listeners": [
                listener(
                    "ingress",
                    [
                        route("good", prefix="/good"),
                        route("bad", prefix="/bad"),
                        route("strict", prefix="/strict"),
                    ],
                )
            ],
            "clusters": [
                cluster("good", up.address, health_check={**check, "path": "/healthz"}),
                cluster("bad", up.address, health_check={**check, "path": "/?status=503"}),
                cluster(
                    "strict",
                    up.address,
                    health_check={**check, "path": "/?status=503"},
                    panic_threshold_percent=0,
                ),
            ],
        }
    )

    def checks(name: str, result: str) -> float:
        return metric(m.metrics(), "pymesh_health_checks_total", cluster=name, result=result) or 0

    poll(lambda: checks("bad", "failure") >= 3 and checks("good", "success") >= 3, what="checks")
    assert health(m, "good") == {up.address: True}
    assert health(m, "bad") == {up.address: False}
    assert checks("bad", "success") == 0
    url = m.listener("ingress")
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        assert c.get("/good").status_code == 200
        # Its only endpoint is unhealthy: 0% healthy is below the 50% panic threshold, so
        # the proxy still tries it (and it answers).
        assert c.get("/bad").status_code == 200
        # With panic mode off, an empty rotation is answered at once.
        r = c.get("/strict")
        assert (r.status_code, r.text) == (503, "no healthy upstream\n")


def test_expected_statuses_decide_what_passes(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    check = {"path": "/?status=503", "expected_statuses": [200, 503], "interval": "100ms"}
    m = one_cluster(mesh, [up.address], health_check=check, panic_threshold_percent=0)
    poll(lambda: health(m)[up.address], what="503 accepted as healthy")
    assert statuses(m.listener("ingress"), 5) == Counter(up=5)


def test_panic_threshold_balances_over_all_when_too_few_are_healthy(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    live = echo("live")
    dead1, dead2 = dead_address(), dead_address()
    endpoints = [live.address, dead1, dead2]
    m = mesh(
        {
            "listeners": [
                listener("ingress", [route("panics", prefix="/p"), route("holds", prefix="/h")])
            ],
            "clusters": [
                # 1 of 3 healthy = 33%: below 50% -> panic mode, all three get traffic.
                cluster("panics", *endpoints, health_check=TCP_CHECK, panic_threshold_percent=50),
                # 33% is not below 30%: only the healthy endpoint gets traffic.
                cluster("holds", *endpoints, health_check=TCP_CHECK, panic_threshold_percent=30),
            ],
        }
    )

    def settled(name: str) -> bool:
        return health(m, name) == {live.address: True, dead1: False, dead2: False}

    poll(lambda: settled("panics") and settled("holds"), what="1 of 3 healthy in both clusters")
    url = m.listener("ingress")
    seen: dict[str, Counter[str]] = {"p": Counter(), "h": Counter()}
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        for prefix, counts in seen.items():
            for _ in range(60):
                r = c.get(f"/{prefix}")
                counts[r.headers.get("server-id", str(r.status_code))] += 1
    # Panic: round robin over all three, so exactly a third reach the live endpoint and the
    # rest fail to connect (503) — the dead ones are tried, not skipped.
    assert seen["p"] == Counter({"live": 20, "503": 40}), seen
    assert seen["h"] == Counter(live=60), seen
