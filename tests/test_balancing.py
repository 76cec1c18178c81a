"""The six balancers and endpoint weights, end to end through ``pymesh run``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshtest import (
    HTTP_TIMEOUT,
    PYMESH,
    Echo,
    Mesh,
    Proc,
    cluster,
    dead_address,
    listener,
    route,
)


def balanced_mesh(mesh: Callable[..., Mesh], endpoints: list[Any], **extra: Any) -> Mesh:
    return mesh(
        {
            "listeners": [listener("ingress", [route("backend")])],
            "clusters": [cluster("backend", *endpoints, **extra)],
        }
    )


def server_ids(url: str, requests: Iterable[dict[str, str]]) -> list[str]:
    """The server-id of the answer to each request (one keep-alive client; headers each)."""
    out: list[str] = []
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        for headers in requests:
            r = c.get("/", headers=headers)
            assert r.status_code == 200, r.text
            out.append(r.headers["server-id"])
    return out


def three(echo: Callable[..., Echo]) -> list[Echo]:
    return [echo("e0"), echo("e1"), echo("e2")]


# Not ewma: it rightly keeps away from whichever endpoint answered slowest first (a new
# connection's handshake is enough), so it need not reach all three; see the ewma test below.
@pytest.mark.parametrize("lb", ["random", "least_request", "round_robin"])
def test_balancers_spread_over_every_endpoint(
    lb: str, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ups = three(echo)
    m = balanced_mesh(mesh, [u.address for u in ups], lb=lb)
    seen = Counter(server_ids(m.listener("ingress"), [{}] * 300))
    assert set(seen) == {"e0", "e1", "e2"}, seen
    # 100 expected each; a binomial(300, 1/3) is within 100 +- 40 but for 1 in 10^5.
    assert all(60 <= n <= 140 for n in seen.values()), seen


@pytest.mark.parametrize("lb", ["random", "round_robin", "least_request"])
def test_weights_3_to_1(lb: str, echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    heavy, light = echo("heavy"), echo("light")
    endpoints = [{"address": heavy.address, "weight": 3}, light.address]
    m = balanced_mesh(mesh, endpoints, lb=lb)
    seen = Counter(server_ids(m.listener("ingress"), [{}] * 400))
    # 300:100 expected; random is within +-45 but for 1 in 10^5; round robin is exact.
    assert 255 <= seen["heavy"] <= 345, seen
    assert seen["heavy"] + seen["light"] == 400
    if lb == "round_robin":
        assert seen == Counter(heavy=300, light=100)
    status = m.stats()["clusters"]["backend"]["endpoint_status"]
    assert status == [
        {"address": heavy.address, "weight": 3, "healthy": True, "ejected": False},
        {"address": light.address, "weight": 1, "healthy": True, "ejected": False},
    ]


@pytest.mark.parametrize("lb", ["ring_hash", "maglev"])
@pytest.mark.parametrize("key", ["header", "cookie"])
def test_hashing_sticks_by_header_and_cookie(
    lb: str, key: str, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ups = three(echo)
    hash_on = {"header": "x-user"} if key == "header" else {"cookie": "session"}
    m = balanced_mesh(mesh, [u.address for u in ups], lb=lb, hash_on=hash_on)

    def headers(user: int) -> dict[str, str]:
        if key == "header":
            return {"x-user": f"user-{user}"}
        return {"cookie": f"theme=dark; session=s-{user}"}

    # 40 users, 5 requests each, interleaved: every user always lands on the same endpoint.
    users = list(range(40))
    ids = server_ids(m.listener("ingress"), [headers(u) for _ in range(5) for u in users])
    by_user = {u: {ids[i * len(users) + u] for i in range(5)} for u in users}
    assert all(len(s) == 1 for s in by_user.values()), by_user
    # And the users spread over all three (40 keys missing one of 3 equal shares: ~1e-7).
    assert {s.pop() for s in by_user.values()} == {"e0", "e1", "e2"}
    # Requests without the key are balanced at random.
    assert len(set(server_ids(m.listener("ingress"), [{}] * 60))) == 3


@pytest.mark.parametrize("lb", ["ring_hash", "maglev"])
def test_hashing_on_source_ip_pins_a_client(
    lb: str, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ups = three(echo)
    m = balanced_mesh(mesh, [u.address for u in ups], lb=lb, hash_on={"source_ip": True})
    url = m.listener("ingress")
    # Every request from 127.0.0.1, over new connections too, goes to one endpoint.
    ids = server_ids(url, [{}] * 20) + server_ids(url, [{"x-user": "other"}] * 20)
    assert len(set(ids)) == 1, Counter(ids)


def test_hashing_without_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "clusters: [{name: c, endpoints: [127.0.0.1:9001], lb: maglev}]\n"
        "listeners: [{name: in, listen: 127.0.0.1:0, routes: [{to: [{cluster: c}]}]}]\n"
    )
    proc = Proc([PYMESH, "validate", str(path)])
    assert proc.wait() == 2
    assert "clusters.0.hash_on" in proc.stderr


class _SlowHandler(BaseHTTPRequestHandler):
    """Answers every GET after a fixed delay (the upstream's latency), as `server-id: slow`."""

    protocol_version = "HTTP/1.1"
    delay_s = 0.05

    def do_GET(self) -> None:
        time.sleep(self.delay_s)  # the latency under test, not a synchronisation
        self.send_response(200)
        self.send_header("server-id", "slow")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    """A real loopback HTTP/1.1 upstream that takes 50 ms per answer; yields its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_ewma_prefers_the_faster_endpoint(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], slow_upstream: str
) -> None:
    fast = echo("fast")
    m = balanced_mesh(mesh, [fast.address, slow_upstream], lb="ewma")
    seen = Counter(server_ids(m.listener("ingress"), [{}] * 200))
    # One answer from the slow one lifts its estimate to 50 ms, over 50x the fast one's:
    # from then on it loses every draw (its estimate needs ~40 s to decay that far).
    # Round robin would send it 100.
    assert seen["fast"] + seen["slow"] == 200
    assert seen["slow"] <= 5, seen


def test_ewma_keeps_away_from_an_endpoint_that_fails(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    # A refused connect is the fastest answer there is; it must count as a slow one.
    live = echo("live")
    m = balanced_mesh(mesh, [live.address, dead_address()], lb="ewma")
    seen: Counter[int] = Counter()
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(100):
            seen[c.get("/").status_code] += 1
    # The dead endpoint is tried about once (before its first failure), then avoided.
    assert seen[200] >= 97, seen
    assert seen[200] + seen[503] == 100, seen


def test_least_request_prefers_the_less_loaded_endpoint(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], slow_upstream: str
) -> None:
    fast = echo("fast")
    m = balanced_mesh(mesh, [fast.address, slow_upstream], lb="least_request")
    url = m.listener("ingress")

    def client(_: int) -> list[str]:
        return server_ids(url, [{}] * 25)

    # Eight clients at once: requests pile up on the slow endpoint (50 ms each), so p2c sends
    # most of them to the fast one (about 1 in 10 in trials); round robin would send it half.
    with ThreadPoolExecutor(8) as pool:
        seen = Counter(i for ids in pool.map(client, range(8)) for i in ids)
    assert seen["fast"] + seen["slow"] == 200
    assert seen["slow"] < 60, seen


def test_tcp_listeners_balance_per_connection(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ups = three(echo)
    addresses = [u.address for u in ups]
    m = mesh(
        {
            "listeners": [
                {
                    "name": "sticky",
                    "listen": "127.0.0.1:0",
                    "protocol": "tcp",
                    "to": [{"cluster": "h"}],
                },
                {
                    "name": "spread",
                    "listen": "127.0.0.1:0",
                    "protocol": "tcp",
                    "to": [{"cluster": "r"}],
                },
            ],
            "clusters": [
                cluster("h", *addresses, lb="maglev", hash_on={"source_ip": True}),
                cluster("r", *addresses, lb="round_robin"),
            ],
        }
    )

    def per_connection(url: str, n: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            # A new client, so a new TCP connection, each time.
            with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
                r = c.get("/")
                assert r.status_code == 200, r.text
                seen[r.headers["server-id"]] += 1
        return seen

    assert len(per_connection(m.listener("sticky"), 15)) == 1
    assert per_connection(m.listener("spread"), 15) == Counter(e0=5, e1=5, e2=5)
