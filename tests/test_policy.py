"""Traffic policies enforced by the core, end to end over loopback: retries (and what is never
replayed), the retry budget, timeouts, the circuit breaker, outlier ejection, rate limits,
fault injection and mirroring.

Upstreams are ``pymesh echo`` (``?status=``, ``?delay=``) and, where an upstream must fail in
a way echo cannot (always 503, reset the connection, answer slowly as a shadow), the small
counting server below.
"""

from __future__ import annotations

import collections
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest
from meshtest import HTTP_TIMEOUT, Echo, Mesh, cluster, dead_address, listener, metric, poll

# === a counting upstream ===


class _Server(socketserver.ThreadingTCPServer):
    # socketserver's default backlog of 5 drops connects when a mirror opens ten at once (each
    # shadow request holds its connection for its delay); those lost SYNs made tests flaky.
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False


class Counting:
    """An HTTP/1.1 upstream on a loopback port that counts requests by method and answers
    each with ``status`` (after ``delay`` seconds), or resets the connection (``reset``)."""

    def __init__(self, status: int = 503, *, reset: bool = False, delay: float = 0.0) -> None:
        self.status = status
        self.reset = reset
        self.delay = delay
        self.counts: collections.Counter[str] = collections.Counter()
        self.hosts: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while outer._serve_one(self):
                    pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.address = "{}:{}".format(*self.server.server_address[:2])
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _serve_one(self, h: socketserver.StreamRequestHandler) -> bool:
        line = h.rfile.readline()
        if not line.strip():
            return False
        method = line.split(b" ")[0].decode()
        length = 0
        host = ""
        chunked = False
        while (header := h.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "host":
                host = value.strip()
            if name.strip().lower() == "transfer-encoding":
                chunked = "chunked" in value.lower()
        if length:
            h.rfile.read(length)
        while chunked and (size := int(h.rfile.readline().split(b";")[0], 16)):
            h.rfile.read(size + 2)
        if chunked:
            while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        with self._lock:
            self.counts[method] += 1
            self.hosts.append(host)
        if self.reset:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return False
        if self.delay:
            time.sleep(self.delay)
        body = f"status {self.status}\n".encode()
        head = f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(body)}\r\n\r\n"
        h.wfile.write(head.encode() + body)
        h.wfile.flush()
        return True

    def count(self, method: str = "GET") -> int:
        with self._lock:
            return self.counts[method]

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting() -> Iterator[Callable[..., Counting]]:
    started: list[Counting] = []

    def start(status: int = 503, *, reset: bool = False, delay: float = 0.0) -> Counting:
        c = Counting(status, reset=reset, delay=delay)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def one_route(upstream: str, *extra_clusters: dict[str, Any], **route: Any) -> dict[str, Any]:
    """A mesh with one listener ``in`` whose route ``r`` forwards to cluster ``up``."""
    r = {"name": "r", "to": [{"cluster": "up"}], **route}
    return {
        "listeners": [listener("in", [r])],
        "clusters": [cluster("up", *upstream.split(",")), *extra_clusters],
    }


def client(m: Mesh) -> httpx.Client:
    return httpx.Client(base_url=m.listener("in"), timeout=HTTP_TIMEOUT)


# === retries ===


def test_gets_succeed_when_one_endpoint_always_answers_503(
    echo: Callable[..., Echo], counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    good, bad = echo("good"), counting(503)
    m = mesh(one_route(f"{good.address},{bad.address}", retry={"attempts": 2, "on": ["503"]}))
    with client(m) as c:
        statuses = [c.get("/").status_code for _ in range(60)]
    assert statuses == [200] * 60
    assert bad.count("GET") >= 20, "round robin sent tries to the failing endpoint"
    retries = metric(m.metrics(), "pymesh_retries_total", cluster="up")
    assert retries == bad.count("GET")


def test_a_post_that_reached_the_upstream_is_never_replayed(
    echo: Callable[..., Echo], counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    failing, resetting = counting(503), counting(reset=True)
    retry = {"attempts": 3, "on": ["503", "reset"], "backoff": "1ms"}
    for upstream, want in ((failing, 503), (resetting, 502)):
        m = mesh(one_route(upstream.address, retry=retry))
        with client(m) as c:
            for k in range(5):
                r = c.post("/", content=b"x" * 100)
                assert r.status_code == want, r.text
                assert upstream.count("POST") == k + 1, "seen exactly once"
            # The same route retries an idempotent method: 1 try + 3 retries.
            assert c.put("/", content=b"y").status_code == want
            assert upstream.count("PUT") == 4


def test_a_chunked_body_that_arrived_whole_is_replayed(
    echo: Callable[..., Echo], counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    good, bad = echo("good"), counting(503)
    m = mesh(one_route(f"{good.address},{bad.address}", retry={"on": ["503"], "backoff": "1ms"}))

    def chunks(k: int) -> Iterator[bytes]:
        yield f"part one of {k}, ".encode()
        yield b"part two"

    with client(m) as c:
        answers = [c.put("/", content=chunks(k)) for k in range(6)]
    assert [(r.status_code, r.text) for r in answers] == [
        (200, f"part one of {k}, part two") for k in range(6)
    ]
    assert bad.count("PUT") >= 3, "tries reached the failing endpoint and were replayed"


def test_a_post_that_never_reached_the_upstream_is_retried(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    good = echo("good")
    retry = {"attempts": 1, "on": ["connect-failure"], "backoff": "1ms"}
    m = mesh(one_route(f"{dead_address()},{good.address}", retry=retry))
    with client(m) as c:
        answers = [c.post("/", content=f"p{k}".encode()) for k in range(6)]
    assert [(r.status_code, r.text) for r in answers] == [(200, f"p{k}") for k in range(6)]
    # Round robin: each retry takes the next turn, so every first try lands on the dead one.
    assert metric(m.metrics(), "pymesh_retries_total", cluster="up") == 6


def test_retries_stop_at_the_budget_under_a_flood_of_failures(
    counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    bad = counting(503)
    retry = {
        "attempts": 3,
        "on": ["503"],
        "backoff": "1ms",
        "budget_percent": 10,
        "min_retries_per_second": 1,
    }
    m = mesh(one_route(bad.address, retry=retry))
    n = 200
    with client(m) as c:
        assert all(c.get("/").status_code == 503 for _ in range(n))
    retried = bad.count("GET") - n
    # Without the budget: 3 x 200 retries. With it: 10% of the requests + 1/s over 10 s.
    assert 10 <= retried <= n * 10 // 100 + 10 + 2, retried
    text = m.metrics()
    assert (metric(text, "pymesh_retry_budget_exhausted_total", cluster="up") or 0) > 100
    assert metric(text, "pymesh_retries_total", cluster="up") == retried


# === timeouts ===


def test_a_route_timeout_answers_504_in_time_and_names_the_timeout(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    m = mesh(one_route(up.address, timeout="200ms"))
    with client(m) as c:
        assert c.get("/?delay=10ms").status_code == 200
        start = time.monotonic()
        r = c.get("/?delay=2s")
        elapsed = time.monotonic() - start
    assert r.status_code == 504
    assert elapsed < 0.4, elapsed
    assert "request timeout" in r.text
    assert r.headers["x-pymesh-timeout"] == "request"
    assert metric(m.metrics(), "pymesh_timeouts_total", cluster="up", kind="request") == 1


def test_a_per_try_timeout_retries_then_answers_504(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    route = {
        "timeout": "2s",
        "per_try_timeout": "100ms",
        "retry": {"attempts": 2, "on": ["gateway-error"], "backoff": "1ms"},
    }
    m = mesh(one_route(up.address, **route))
    with client(m) as c:
        start = time.monotonic()
        r = c.get("/?delay=1s")
        elapsed = time.monotonic() - start
    assert r.status_code == 504 and r.headers["x-pymesh-timeout"] == "per_try", r.text
    assert "per-try timeout" in r.text
    assert 0.3 <= elapsed < 0.9, elapsed
    text = m.metrics()
    assert metric(text, "pymesh_timeouts_total", cluster="up", kind="per_try") == 3
    assert metric(text, "pymesh_retries_total", cluster="up") == 2


def test_a_connect_timeout_answers_504_and_names_it(mesh: Callable[..., Mesh]) -> None:
    # An endpoint that never completes a handshake: a listening socket with backlog 0
    # whose accept queue is already full, so the kernel drops further SYNs.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    fillers = []
    try:
        for _ in range(2):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.settimeout(0.5)
            try:
                f.connect(silent.getsockname())
            except OSError:
                f.close()
                break
            fillers.append(f)
        cfg = one_route(address)
        cfg["clusters"][0]["connect_timeout"] = "200ms"
        m = mesh(cfg)
        with client(m) as c:
            start = time.monotonic()
            r = c.get("/")
            elapsed = time.monotonic() - start
        assert r.status_code == 504, r.text
        assert r.headers["x-pymesh-timeout"] == "connect"
        assert "connect timeout" in r.text
        assert 0.15 <= elapsed < 1.0, elapsed
        assert metric(m.metrics(), "pymesh_timeouts_total", cluster="up", kind="connect") == 1
    finally:
        for f in fillers:
            f.close()
        silent.close()


def test_a_grpc_unavailable_answer_is_retried_by_its_grpc_status(
    mesh: Callable[..., Mesh],
) -> None:
    calls = collections.Counter[str]()
    lock = threading.Lock()

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            calls[request.decode()] += 1
            n = calls[request.decode()]
        if n == 1:  # the first call of each request fails as a trailers-only answer
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok:" + request

    handlers = grpc.method_handlers_generic_handler(
        "test.Flaky", {"Call": grpc.unary_unary_rpc_method_handler(flaky)}
    )
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        retry = {"attempts": 2, "on": ["unavailable"], "idempotent": True, "backoff": "1ms"}
        cfg = one_route(f"127.0.0.1:{port}", retry=retry)
        cfg["clusters"][0]["protocol"] = "http2"
        m = mesh(cfg)
        target = m.listener("in").removeprefix("http://")
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_unary("/test.Flaky/Call")
            assert call(b"a", timeout=10) == b"ok:a"
            assert call(b"b", timeout=10) == b"ok:b"
        assert calls == {"a": 2, "b": 2}
        assert metric(m.metrics(), "pymesh_retries_total", cluster="up") == 2
    finally:
        server.stop(None)


# === circuit breaker ===


def test_the_breaker_answers_503_at_once_beyond_its_limit_and_admits_the_rest(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    cfg = one_route(up.address)
    cfg["clusters"][0]["circuit_breaker"] = {"max_requests": 2}
    m = mesh(cfg)
    url = m.listener("in")

    def slow() -> int:
        return httpx.get(f"{url}/?delay=800ms", timeout=HTTP_TIMEOUT).status_code

    with ThreadPoolExecutor(2) as pool, client(m) as c:
        admitted = [pool.submit(slow) for _ in range(2)]
        poll(
            lambda: metric(m.metrics(), "pymesh_upstream_connections_active", cluster="up") == 2,
            what="two slow requests in flight",
        )
        start = time.monotonic()
        over = c.get("/")
        elapsed = time.monotonic() - start
        assert [f.result() for f in admitted] == [200, 200]
        # Places are given back (when the proxy has sent the responses' ends).
        poll(lambda: c.get("/").status_code == 200, what="an admitted request after the slow ones")
    assert over.status_code == 503
    assert over.headers["x-pymesh-overflow"] == "circuit-breaker"
    assert elapsed < 0.2, elapsed
    text = m.metrics()
    overflows = metric(
        text, "pymesh_circuit_breaker_overflows_total", cluster="up", limit="requests"
    )
    assert overflows == 1


# === outlier detection ===


def test_a_failing_endpoint_is_ejected_and_returns_after_its_ejection_time(
    echo: Callable[..., Echo], counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    good, bad = echo("good"), counting(503)
    cfg = one_route(f"{good.address},{bad.address}")
    cfg["clusters"][0]["outlier_detection"] = {
        "consecutive_5xx": 3,
        "base_ejection": "1s",
        "max_ejection_percent": 50,
    }
    m = mesh(cfg)
    with client(m) as c:
        for _ in range(6):
            c.get("/")
        assert bad.count() == 3
        ejected_at = time.monotonic()
        assert all(c.get("/").status_code == 200 for _ in range(20)), "the bad endpoint is out"
        assert bad.count() == 3
        assert metric(m.metrics(), "pymesh_outlier_ejections_total", cluster="up") == 1
        assert metric(m.metrics(), "pymesh_outlier_ejected_endpoints", cluster="up") == 1
        endpoints = {e["address"]: e for e in m.get("/clusters/up").json()["endpoints"]}
        assert endpoints[bad.address]["ejected"] is True
        assert endpoints[good.address]["ejected"] is False

        def back() -> bool:
            c.get("/")
            return bad.count() > 3

        poll(back, timeout=5, interval=0.05, what="the ejected endpoint to return")
    assert time.monotonic() - ejected_at >= 0.9


# === rate limits ===


def test_the_rate_limit_answers_429_with_retry_after_and_lets_the_rest_through(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    # Slow refills (one token per 5 s, per 10 s): the counts below are exact on a slow machine.
    route = {"rate_limit": {"requests_per_second": 0.2, "burst": 5}}
    cfg = one_route(up.address, **route)
    keyed = {
        "name": "keyed",
        "match": {"path_prefix": "/k"},
        "to": [{"cluster": "up"}],
        "rate_limit": {"requests_per_second": 0.1, "burst": 2, "key": {"header": "x-user"}},
    }
    cfg["listeners"][0]["routes"].insert(0, keyed)
    m = mesh(cfg)
    with client(m) as c:
        answers = [c.get("/") for _ in range(20)]
        ok = [r for r in answers if r.status_code == 200]
        limited = [r for r in answers if r.status_code == 429]
        assert len(ok) == 5 and len(limited) == 15
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
        assert all(r.headers["server-id"] == "up" for r in ok)
        by_user = collections.Counter()
        for user in ("ann", "bob") * 5:
            by_user[user] += c.get("/k", headers={"x-user": user}).status_code == 200
        assert by_user == {"ann": 2, "bob": 2}, "each key has its own bucket"
    text = m.metrics()
    assert metric(text, "pymesh_rate_limited_total", listener="in", route="r") == len(limited)
    assert metric(text, "pymesh_rate_limited_total", listener="in", route="keyed") == 6


# === faults ===


def test_a_50_percent_abort_fault_aborts_half_of_2000_requests(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    m = mesh(one_route(up.address, fault={"abort": {"status": 418, "percent": 50}}))
    with client(m) as c:
        statuses = collections.Counter(c.get("/").status_code for _ in range(2000))
    assert set(statuses) == {200, 418}
    assert 900 <= statuses[418] <= 1100, statuses
    assert (
        metric(m.metrics(), "pymesh_faults_injected_total", route="r", kind="abort")
        == (statuses[418])
    )


def test_a_delay_fault_delays_its_share(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    m = mesh(one_route(up.address, fault={"delay": {"duration": "300ms", "percent": 100}}))
    with client(m) as c:
        start = time.monotonic()
        assert c.get("/").status_code == 200
        assert time.monotonic() - start >= 0.3


# === mirroring ===


def test_mirrored_traffic_reaches_the_shadow_without_changing_or_slowing_the_real_one(
    echo: Callable[..., Echo], counting: Callable[..., Counting], mesh: Callable[..., Mesh]
) -> None:
    up, shadow = echo("up"), counting(500, delay=1.0)
    cfg = one_route(up.address, cluster("shadow", shadow.address), mirror={"cluster": "shadow"})
    m = mesh(cfg)
    n = 10
    with client(m) as c:
        start = time.monotonic()
        answers = [c.post("/", content=f"body {k}".encode()) for k in range(n)]
        elapsed = time.monotonic() - start
    assert [r.status_code for r in answers] == [200] * n
    assert [r.text for r in answers] == [f"body {k}" for k in range(n)], "the real answers"
    assert elapsed < 1.0, f"a 1 s shadow added latency: {elapsed:.2f}s for {n} requests"
    poll(lambda: shadow.count("POST") == n, timeout=15, what="every mirrored request")
    assert all(h.endswith("-shadow") for h in shadow.hosts)
    assert metric(m.metrics(), "pymesh_mirrored_requests_total", cluster="shadow") == n
