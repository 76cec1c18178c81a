"""Prometheus metrics end to end: real traffic through a running mesh, ``/metrics`` parsed by
``prometheus_client``'s own parser with the counts checked against what was sent, and a real
Prometheus server (Debian's ``/usr/bin/prometheus``) scraping the admin API with the bearer
token, queried in PromQL over its HTTP API for the request rate."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from certs import CA
from meshtest import Echo, Mesh, Proc, cluster, listener, poll, route
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS = "/usr/bin/prometheus"

# Label names a series may carry: config names, closed sets, and a histogram's `le`.
ALLOWED_LABELS = {
    "listener",
    "route",
    "cluster",
    "endpoint",
    "status_class",
    "code",
    "grpc_code",
    "kind",
    "limit",
    "result",
    "le",
    "reason",  # the admin API's own pymesh_admin_auth_failures_total
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``text`` as parsed by prometheus_client: (name, labels) -> value."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The one sample ``name`` with exactly ``labels`` (0 when absent)."""
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def one_route_mesh(mesh: Callable[..., Mesh], endpoint: str) -> tuple[Mesh, str]:
    m = mesh(
        {
            "listeners": [listener("in", [route("c", name="api")])],
            "clusters": [cluster("c", endpoint)],
        }
    )
    return m, m.listener("in")


# === /metrics after real traffic ===


def test_golden_metrics_count_what_was_sent(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    e = echo("v1")
    m, url = one_route_mesh(mesh, e.address)
    target = {"listener": "in", "route": "api", "cluster": "c"}
    route_labels = {"listener": "in", "route": "api"}

    received = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(6):
            r = client.get("/", params={"size": "100"})
            assert r.status_code == 200
            received += len(r.content)
        for _ in range(2):
            r = client.get("/", params={"status": "404"})
            assert r.status_code == 404
            received += len(r.content)
        for i in range(3):
            body = bytes([65 + i]) * 1000
            r = client.post("/", content=body)
            assert r.status_code == 200 and r.content == body
            received += len(r.content)
        # Paths and client addresses that must never become labels.
        r = client.get("/secret-path-q7x", headers={"x-forwarded-for": "203.0.113.9"})
        assert r.status_code == 200
        received += len(r.content)
    assert received > 3000 + 600

    # The counts land as each response body ends, which may be just after the client read
    # it: poll, bounded, for the last of them.
    def settled() -> str | None:
        text = m.metrics()
        done = value(text, "pymesh_request_duration_seconds_count", **route_labels) == 12
        closed = value(text, "pymesh_downstream_connections_closed_total", listener="in") >= 1
        return text if done and closed else None

    text = poll(settled, 10, what="12 requests ended and the client's connection closed")

    # The whole exposition parses with Prometheus' own client library.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {
        "pymesh_requests": "counter",
        "pymesh_responses": "counter",
        "pymesh_grpc_responses": "counter",
        "pymesh_request_duration_seconds": "histogram",
        "pymesh_upstream_first_byte_seconds": "histogram",
        "pymesh_request_bytes": "counter",
        "pymesh_response_bytes": "counter",
        "pymesh_requests_active": "gauge",
        "pymesh_downstream_connections_closed": "counter",
        "pymesh_upstream_connections_closed": "counter",
        "pymesh_downstream_tls_handshakes": "counter",
        "pymesh_upstream_tls_handshakes": "counter",
        "pymesh_access_log_dropped": "counter",
        "pymesh_tracing_spans_dropped": "counter",
    }
    for name, kind in kinds.items():
        assert name in families, f"{name} missing:\n{text}"
        assert families[name].type == kind, (name, families[name].type)

    # The dashboard's series keep their names and labels.
    assert value(text, "pymesh_requests_total", **target, status_class="2xx") == 10
    assert value(text, "pymesh_requests_total", **target, status_class="4xx") == 2
    # By exact code.
    assert value(text, "pymesh_responses_total", **target, code="200") == 10
    assert value(text, "pymesh_responses_total", **target, code="404") == 2
    # Durations to the end of the response, and to the upstream's first byte.
    assert value(text, "pymesh_request_duration_seconds_count", **route_labels) == 12
    bucket = value(text, "pymesh_request_duration_seconds_bucket", **route_labels, le="+Inf")
    assert bucket == 12
    assert value(text, "pymesh_request_duration_seconds_sum", **route_labels) > 0
    assert value(text, "pymesh_upstream_first_byte_seconds_count", **target) == 12
    # Bytes both ways, as the bodies streamed.
    assert value(text, "pymesh_request_bytes_total", **route_labels) == 3000
    assert value(text, "pymesh_response_bytes_total", **route_labels) == received
    # Nothing in flight now; one client connection opened and closed; upstream pooled.
    assert value(text, "pymesh_requests_active", listener="in") == 0
    opened = value(text, "pymesh_downstream_connections_total", listener="in")
    assert opened == value(text, "pymesh_downstream_connections_closed_total", listener="in") == 1
    assert value(text, "pymesh_upstream_connections_total", cluster="c") >= 1
    assert value(text, "pymesh_upstream_connect_failures_total", cluster="c") == 0
    assert value(text, "pymesh_downstream_tls_handshakes_total", listener="in") == 0

    # Bounded cardinality: no path or client address anywhere, only known label names.
    assert "secret-path-q7x" not in text and "203.0.113.9" not in text
    assert "127.0.0.1:" not in text.replace(f'endpoint="{e.address}"', "")
    for (name, labels), _ in samples(text).items():
        if name.startswith("pymesh_"):
            assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)


def _grpc_server() -> tuple[grpc.Server, int]:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Svc", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_grpc_statuses_are_counted_from_trailers_and_trailers_only_answers(
    mesh: Callable[..., Mesh],
) -> None:
    server, port = _grpc_server()
    try:
        m = mesh(
            {
                "listeners": [listener("in", [route("g", name="rpc")])],
                "clusters": [cluster("g", f"127.0.0.1:{port}", protocol="http2")],
            }
        )
        address = m.listener("in").removeprefix("http://")
        with grpc.insecure_channel(address) as ch:
            unary = ch.unary_unary("/test.Svc/Unary")
            for _ in range(3):
                assert unary(b"hi", timeout=10) == b"echo:hi"
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as missing:
                    unary(b"missing", timeout=10)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)

    target = {"listener": "in", "route": "rpc", "cluster": "g"}

    def counted() -> str | None:
        text = m.metrics()
        n = value(text, "pymesh_grpc_responses_total", **target, grpc_code="OK")
        return text if n == 3 else None

    text = poll(counted, 10, what="3 gRPC OK responses counted")
    assert value(text, "pymesh_grpc_responses_total", **target, grpc_code="NOT_FOUND") == 2
    # gRPC answers are HTTP 200 whatever their status.
    assert value(text, "pymesh_responses_total", **target, code="200") == 5


def test_tls_handshakes_are_counted_on_both_sides(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ca = CA(tmp_path / "pki")
    cert = ca.issue("back.test")
    up = echo("e")
    tls_listener = {
        **listener("back", [route("e")]),
        "tls": {"certificates": [{"cert": str(cert.cert), "key": str(cert.key)}]},
    }
    back = mesh({"listeners": [tls_listener], "clusters": [cluster("e", up.address)]})
    back_addr = back.listeners()["back"]
    front = mesh(
        {
            "listeners": [
                listener("front", [route("good", prefix="/good"), route("bad", prefix="/bad")])
            ],
            "clusters": [
                cluster("good", back_addr, tls={"sni": "back.test", "ca": str(ca.path)}),
                cluster("bad", back_addr, tls={"sni": "wrong.test", "ca": str(ca.path)}),
            ],
        }
    )
    url = front.listener("front")
    assert httpx.get(url + "/good", timeout=10).status_code == 200
    # A name the certificate does not cover: the front refuses the handshake, 503.
    assert httpx.get(url + "/bad", timeout=10).status_code == 503
    # Plain HTTP to the TLS listener: the back's handshake fails.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{back_addr}/", timeout=10)

    text = front.metrics()
    assert value(text, "pymesh_upstream_tls_handshakes_total", cluster="good") == 1
    assert value(text, "pymesh_upstream_tls_handshake_failures_total", cluster="good") == 0
    assert value(text, "pymesh_upstream_tls_handshakes_total", cluster="bad") == 1
    assert value(text, "pymesh_upstream_tls_handshake_failures_total", cluster="bad") == 1
    assert value(text, "pymesh_upstream_connect_failures_total", cluster="bad") == 1

    # The back counts when its side of each handshake ends: poll, bounded.
    def counted() -> str | None:
        t = back.metrics()
        done = value(t, "pymesh_downstream_tls_handshake_failures_total", listener="back") == 2
        return t if done else None

    text = poll(counted, 10, what="the back counted 2 failed handshakes")
    assert value(text, "pymesh_downstream_tls_handshakes_total", listener="back") == 3
    assert value(text, "pymesh_tls_handshake_failures_total") == 2


# === a real Prometheus server ===


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """``/usr/bin/prometheus`` scraping one target every second, on a loopback port."""

    def __init__(self, tmp: Path, target: str, token: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "token").write_text(token)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "pymesh",
                    "metrics_path": "/metrics",
                    "authorization": {"type": "Bearer", "credentials_file": str(tmp / "token")},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = Proc(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            cwd=tmp,
        )
        self.http = httpx.Client(base_url=self.url, timeout=5)

    def ready(self) -> bool:
        assert self.proc.popen.poll() is None, "prometheus exited:\n" + self.proc.describe()
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": promql})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a query answering one series (None: no series yet)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.http.close()
        self.proc.popen.kill()
        self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str, str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str, token: str) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus{len(started)}", target, token)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


class PacedTraffic:
    """GET requests through the proxy at ``rate`` per second, on a thread, until stopped or
    ``limit`` requests were sent. Pacing waits on an event: load generation, not sync."""

    def __init__(self, url: str, rate: float, limit: int) -> None:
        self.url, self.rate, self.limit = url, rate, limit
        self.sent = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            next_at = time.monotonic()
            while self.sent < self.limit and not self.stop.is_set():
                r = client.get("/")
                self.sent += 1
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text}")
                next_at += 1 / self.rate
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        assert not self.failures, self.failures[:3]
        return self.sent


def test_a_real_prometheus_scrapes_the_mesh_and_promql_sees_the_request_rate(
    echo: Callable[..., Echo],
    mesh: Callable[..., Mesh],
    prometheus: Callable[[str, str], Prometheus],
) -> None:
    e = echo("v1")
    m, url = one_route_mesh(mesh, e.address)
    assert m.token
    prom = prometheus(m.admin_url.removeprefix("http://"), m.token)
    poll(prom.ready, 30, interval=0.1, what="prometheus /-/ready")
    poll(
        lambda: prom.scalar('up{job="pymesh"}') == 1,
        30,
        interval=0.2,
        what="prometheus scraped the admin /metrics with the token (up == 1)",
    )

    rate = 40.0
    traffic = PacedTraffic(url, rate, limit=int(rate * 60))
    try:
        query = 'sum(rate(pymesh_requests_total{listener="in",route="api",status_class="2xx"}[5s]))'
        seen: list[float | None] = []

        def near_rate() -> bool:
            v = prom.scalar(query)
            seen.append(v)
            return v is not None and abs(v - rate) <= rate * 0.25

        poll(near_rate, 30, interval=0.25, what=f"{query} within 25% of {rate}/s (saw {seen[-5:]})")
        code_rate = prom.scalar('sum(rate(pymesh_responses_total{listener="in",code="200"}[5s]))')
        assert code_rate is not None and abs(code_rate - rate) <= rate * 0.35, code_rate
    finally:
        sent = traffic.finish()

    # Once traffic stopped, the scraped totals reach exactly what was sent.
    poll(
        lambda: prom.scalar('sum(pymesh_requests_total{listener="in"})') == sent,
        15,
        interval=0.25,
        what=f"prometheus' total reaches {sent}",
    )
    assert prom.scalar('sum(pymesh_responses_total{listener="in",code="200"})') == sent
    p99 = prom.scalar(
        "histogram_quantile(0.99, sum by (le) "
        '(rate(pymesh_request_duration_seconds_bucket{listener="in"}[1m])))'
    )
    assert p99 is not None and 0 < p99 <= 1.0, p99
