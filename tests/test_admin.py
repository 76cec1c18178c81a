"""The admin API of ``pymesh run``: health, stats and Prometheus metrics after real traffic."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
from meshtest import (
    HTTP_TIMEOUT,
    Echo,
    Mesh,
    cluster,
    dead_address,
    listener,
    metric,
    parse_metrics,
    poll,
    route,
)


def config(live: Echo, dead: str) -> dict[str, Any]:
    return {
        "listeners": [
            listener(
                "ingress",
                [route("dead", name="to-dead", prefix="/dead"), route("live", name="to-live")],
            )
        ],
        "clusters": [cluster("live", live.address), cluster("dead", dead)],
    }


def test_live_and_ready(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    m = mesh(config(echo("e"), dead_address()))
    r = m.get("/live")
    assert r.status_code == 200
    assert r.json() == {"live": True}
    r = m.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert isinstance(body["version"], int)
    assert body["version"] >= 1
    assert set(body["listeners"]) == {"ingress"}


def test_unknown_admin_path_is_404(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    m = mesh(config(echo("e"), dead_address()))
    assert m.get("/no-such-thing").status_code == 404


def test_stats_after_traffic(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("e")
    m = mesh(config(e, dead_address()))
    n_live, n_dead = 37, 4
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(n_live):
            assert c.get("/").status_code == 200
        for _ in range(n_dead):
            assert c.get("/dead").status_code == 503

    def settled() -> dict[str, Any] | None:
        s = m.stats()
        return s if s["requests_total"] == n_live + n_dead else None

    stats = poll(settled, 5.0, what="/stats requests_total to count every request")
    assert stats["version"] == m.ready()["version"]
    ingress = stats["listeners"]["ingress"]
    assert ingress["address"] == m.listener("ingress").removeprefix("http://")
    assert ingress["requests_total"] == n_live + n_dead
    assert isinstance(ingress["active_connections"], int)
    live = stats["clusters"]["live"]
    assert live["endpoints"] == [e.address]
    assert live["requests_total"] == n_live
    assert live["connect_failures_total"] == 0
    assert isinstance(live["active_connections"], int)
    dead = stats["clusters"]["dead"]
    assert dead["connect_failures_total"] == n_dead
    assert dead["active_connections"] == 0
    assert isinstance(stats["active_downstream_connections"], int)
    assert isinstance(stats["active_upstream_connections"], int)


def test_metrics_after_traffic(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("e")
    dead = dead_address()
    m = mesh(config(e, dead))
    r = m.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in r.headers["content-type"]
    samples = parse_metrics(r.text)
    assert samples, "no samples"
    assert all(name.startswith("pymesh_") for name, _, _ in samples)
    version = m.ready()["version"]
    assert metric(r.text, "pymesh_config_version") == version

    n_ok, n_418, n_dead = 53, 5, 3
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(n_ok):
            assert c.get("/").status_code == 200
        for _ in range(n_418):
            assert c.get("/?status=418").status_code == 418
        for _ in range(n_dead):
            assert c.get("/dead").status_code == 503

    labels = {"listener": "ingress", "route": "to-live", "cluster": "live"}

    def counted() -> str | None:
        text = m.metrics()
        ok = metric(text, "pymesh_requests_total", status_class="2xx", **labels)
        return text if ok == n_ok else None

    text = poll(counted, 5.0, what=f"pymesh_requests_total 2xx == {n_ok}")
    assert metric(text, "pymesh_requests_total", status_class="4xx", **labels) == n_418
    dead_labels = {"listener": "ingress", "route": "to-dead", "cluster": "dead"}
    assert metric(text, "pymesh_requests_total", status_class="5xx", **dead_labels) == n_dead

    # request duration histogram per listener and route
    hl = {"listener": "ingress", "route": "to-live"}
    assert metric(text, "pymesh_request_duration_seconds_count", **hl) == n_ok + n_418
    assert metric(text, "pymesh_request_duration_seconds_bucket", le="+Inf", **hl) == n_ok + n_418
    total = metric(text, "pymesh_request_duration_seconds_sum", **hl)
    assert total is not None
    assert total > 0
    buckets = sorted(
        (float(lb["le"]), v)
        for n, lb, v in parse_metrics(text)
        if n == "pymesh_request_duration_seconds_bucket"
        and lb.get("listener") == "ingress"
        and lb.get("route") == "to-live"
    )
    assert len(buckets) >= 5
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "histogram buckets must be cumulative"

    # connect failures of the dead cluster, none for the live one
    assert metric(text, "pymesh_upstream_connect_failures_total", cluster="dead") == n_dead
    assert metric(text, "pymesh_upstream_connect_failures_total", cluster="live") == 0

    # gauges exist for every listener and cluster
    assert metric(text, "pymesh_downstream_connections_active", listener="ingress") is not None
    assert metric(text, "pymesh_upstream_connections_active", cluster="live") is not None
    assert metric(text, "pymesh_upstream_connections_active", cluster="dead") == 0


def test_connection_gauges_follow_connections(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    e = echo("e")
    m = mesh(config(e, dead_address()))
    url = m.listener("ingress")

    def downstream() -> float | None:
        return metric(m.metrics(), "pymesh_downstream_connections_active", listener="ingress")

    def upstream() -> float | None:
        return metric(m.metrics(), "pymesh_upstream_connections_active", cluster="live")

    assert downstream() == 0
    clients = [httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) for _ in range(3)]
    try:
        for c in clients:
            assert c.get("/").status_code == 200
        poll(lambda: downstream() == 3, 5.0, what="3 active downstream connections")
        # three requests held upstream at once need three upstream connections (HTTP/1.1)
        statuses: list[int] = []

        def slow(c: httpx.Client) -> None:
            statuses.append(c.get("/?delay=1500ms").status_code)

        threads = [threading.Thread(target=slow, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        try:
            poll(lambda: (upstream() or 0) >= 3, 5.0, what="3 active upstream connections")
            assert m.stats()["clusters"]["live"]["active_connections"] >= 3
        finally:
            for t in threads:
                t.join(HTTP_TIMEOUT)
        assert statuses == [200, 200, 200]
    finally:
        for c in clients:
            c.close()
    poll(lambda: downstream() == 0, 5.0, what="0 active downstream connections after close")


def test_config_version_metric_follows_put(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    e = echo("e")
    cfg = config(e, dead_address())
    m = mesh(cfg)
    v1 = metric(m.metrics(), "pymesh_config_version")
    assert v1 == m.ready()["version"]
    r = m.put_config(cfg)
    assert r.status_code == 200, r.text
    v2 = metric(m.metrics(), "pymesh_config_version")
    assert v2 == r.json()["version"]
    assert v1 is not None
    assert v2 is not None
    assert v2 > v1
    assert m.stats()["version"] == v2
