"""The data plane through ``pymesh run``: routing, balancing, splitting, errors, bodies."""

from __future__ import annotations

import http.client
import os
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
from meshtest import HTTP_TIMEOUT, Echo, Mesh, cluster, dead_address, listener, route


def one_cluster_mesh(mesh: Callable[..., Mesh], *endpoints: str) -> Mesh:
    return mesh(
        {
            "listeners": [listener("ingress", [route("backend")])],
            "clusters": [cluster("backend", *endpoints)],
        }
    )


def server_ids(url: str, n: int, path: str = "/") -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        for _ in range(n):
            r = c.get(path)
            assert r.status_code == 200, r.text
            seen[r.headers["server-id"]] += 1
    return seen


def test_proxies_to_two_upstreams(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    a, b = echo("up-a"), echo("up-b")
    m = one_cluster_mesh(mesh, a.address, b.address)
    seen = server_ids(m.listener("ingress"), 20)
    assert set(seen) == {"up-a", "up-b"}


def test_round_robin_spreads_evenly(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    # Round robin is deterministic per cluster: one client sending sequentially over one
    # keep-alive connection should see the two endpoints alternate, i.e. exactly 500 each.
    # The bound is 450..550 so that a balancer whose counter is per worker thread (a task
    # can move between tokio workers) still passes, while a random or sticky choice
    # (which would put one endpoint far outside this band, or at 0/1000) does not.
    a, b = echo("rr-a"), echo("rr-b")
    m = one_cluster_mesh(mesh, a.address, b.address)
    seen = server_ids(m.listener("ingress"), 1000)
    assert sum(seen.values()) == 1000
    assert 450 <= seen["rr-a"] <= 550, seen
    assert 450 <= seen["rr-b"] <= 550, seen


def test_weighted_split_90_10(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    v1, v2 = echo("v1"), echo("v2")
    m = mesh(
        {
            "listeners": [listener("ingress", [route({"c-v1": 90, "c-v2": 10})])],
            "clusters": [cluster("c-v1", v1.address), cluster("c-v2", v2.address)],
        }
    )
    n = 2000
    seen = server_ids(m.listener("ingress"), n)
    share = seen["v1"] / n
    # 90 % +- 3 points; if the split is random (binomial) that band is ~4.5 standard deviations.
    assert 0.87 <= share <= 0.93, seen
    assert seen["v1"] + seen["v2"] == n


def test_exact_and_prefix_matches(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    ex, pre, api = echo("exact"), echo("prefix"), echo("api")
    m = mesh(
        {
            "listeners": [
                listener(
                    "ingress",
                    [
                        route("c-exact", name="exact", path="/svc"),
                        route("c-prefix", name="prefix", prefix="/svc"),
                        route("c-api", name="api", prefix="/api/"),
                    ],
                )
            ],
            "clusters": [
                cluster("c-exact", ex.address),
                cluster("c-prefix", pre.address),
                cluster("c-api", api.address),
            ],
        }
    )
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        expected = {
            "/svc": "exact",
            "/svc?x=1": "exact",  # the query string is not part of the path
            "/svc/": "prefix",
            "/svc/deeper/path": "prefix",
            "/api/v1/users": "api",
        }
        for path, want in expected.items():
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text)
            assert r.headers["server-id"] == want, path
        for path in ("/", "/other", "/ap"):
            r = c.get(path)
            assert r.status_code == 404, path
            assert "no route" in r.text


def test_first_match_wins(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    first, second = echo("first"), echo("second")
    m = mesh(
        {
            "listeners": [
                listener(
                    "ingress",
                    # Both match /exact; a later route that an earlier one covers
                    # entirely would be refused as unreachable.
                    [route("c1", prefix="/ex"), route("c2", prefix="/")],
                )
            ],
            "clusters": [cluster("c1", first.address), cluster("c2", second.address)],
        }
    )
    assert server_ids(m.listener("ingress"), 5, "/exact") == Counter({"first": 5})


def test_no_route_is_404(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("only")
    m = mesh(
        {
            "listeners": [listener("ingress", [route("c", path="/only")])],
            "clusters": [cluster("c", e.address)],
        }
    )
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        r = c.get("/nothing/here")
        assert r.status_code == 404
        assert "no route" in r.text
        assert "server-id" not in r.headers
        # the connection stays usable
        r = c.get("/only")
        assert r.status_code == 200
        assert r.headers["server-id"] == "only"


def test_unreachable_upstream_is_503(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    live = echo("alive")
    m = mesh(
        {
            "listeners": [
                listener("ingress", [route("dead", prefix="/dead"), route("live")]),
            ],
            "clusters": [cluster("dead", dead_address()), cluster("live", live.address)],
        }
    )
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(3):
            r = c.get("/dead")
            assert r.status_code == 503, r.text
        # a dead cluster does not hurt the others
        r = c.get("/")
        assert r.status_code == 200
        assert r.headers["server-id"] == "alive"


def test_keep_alive_many_requests_one_connection(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    e = echo("ka")
    m = one_cluster_mesh(mesh, e.address)
    u = urlsplit(m.listener("ingress"))
    assert u.hostname is not None
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=HTTP_TIMEOUT)
    try:
        conn.connect()
        sock = conn.sock
        local = sock.getsockname()
        for i in range(300):
            conn.request("GET", f"/?i={i}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200
            assert body
            assert not r.will_close, f"proxy closed the connection after request {i}"
            # http.client reconnects silently if the server closed: check it did not
            assert conn.sock is sock
            assert sock.getsockname() == local
        stats = m.stats()
        assert stats["listeners"]["ingress"]["active_connections"] == 1, stats
    finally:
        conn.close()


def test_post_body_round_trips(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("post")
    m = one_cluster_mesh(mesh, e.address)
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for size in (0, 1, 1000, 300_000):
            body = os.urandom(size)
            r = c.post("/submit", content=body)
            assert r.status_code == 200
            assert r.content == body, size
            assert r.headers["server-id"] == "post"

        def chunks() -> object:
            for _ in range(8):
                yield b"x" * 10_000

        r = c.post("/chunked", content=chunks())  # Transfer-Encoding: chunked
        assert r.status_code == 200
        assert r.content == b"x" * 80_000


def test_large_response_intact(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("big")
    m = one_cluster_mesh(mesh, e.address)
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        direct = httpx.get(e.url + "/", params={"size": 100_000}, timeout=HTTP_TIMEOUT).content
        for _ in range(3):
            r = c.get("/", params={"size": 100_000})
            assert r.status_code == 200
            assert len(r.content) == 100_000
            assert r.content == direct


def test_status_passes_through(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    e = echo("st")
    m = one_cluster_mesh(mesh, e.address)
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for s in (418, 404, 500, 503, 201):
            r = c.get("/", params={"status": s})
            assert r.status_code == s
            assert r.headers["server-id"] == "st"
