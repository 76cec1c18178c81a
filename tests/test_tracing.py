"""Distributed tracing end to end: a real proxy, a real echo upstream that reports the trace
headers it got, and an OTLP/HTTP receiver on loopback that decodes what the proxy exports
with ``opentelemetry-proto``."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from meshtest import Echo, Mesh, cluster, dead_address, listener, metric, poll, route
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from pymesh.config import load_config
from pymesh.errors import ConfigError
from pymesh.snapshot import to_snapshot

SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ECHOED = ",".join(
    (
        "traceparent",
        "tracestate",
        "x-request-id",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    )
)
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class Collector:
    """An OTLP/HTTP traces receiver on a loopback port chosen by the OS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Span] = []
        self.service_names: list[str] = []
        self.content_types: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    collector.content_types.append(self.headers.get("content-type", ""))
                    for rs in req.resource_spans:
                        for kv in rs.resource.attributes:
                            if kv.key == "service.name":
                                collector.service_names.append(kv.value.string_value)
                        for ss in rs.scope_spans:
                            collector.spans.extend(ss.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str, count: int = 2) -> list[Span]:
        """The spans of ``trace_id`` (hex), once ``count`` of them arrived."""

        def found() -> list[Span]:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id.hex() == trace_id]
            return spans if len(spans) >= count else []

        spans: list[Span] = poll(found, 15.0, what=f"{count} spans of trace {trace_id}")
        return spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def by_kind(spans: list[Span]) -> tuple[Span, Span]:
    (server,) = [s for s in spans if s.kind == SERVER]
    (client,) = [s for s in spans if s.kind == CLIENT]
    return server, client


def traced_mesh(
    mesh: Callable[..., Mesh],
    up: Echo,
    endpoint: str,
    route_extra: dict[str, Any] | None = None,
    **tracing: Any,
) -> Mesh:
    r = {**route("up", name="api"), **(route_extra or {})}
    return mesh(
        {
            "listeners": [listener("web", [r]), listener("plain", [route("up")])],
            "clusters": [cluster("up", up.address)],
            "tracing": {
                "otlp_endpoint": endpoint,
                "sample_percent": 100,
                "flush_interval": "20ms",
                "listeners": ["web"],
                **tracing,
            },
        }
    )


def send(
    m: Mesh, headers: dict[str, str] | None = None, query: str = "", lst: str = "web"
) -> httpx.Response:
    url = f"{m.listener(lst)}/?echo_headers={ECHOED}{query}"
    return httpx.get(url, headers=headers or {}, timeout=10)


def upstream_traceparent(resp: httpx.Response) -> tuple[str, str, str]:
    m = TRACEPARENT_RE.match(resp.headers["echo-header-traceparent"])
    assert m, resp.headers["echo-header-traceparent"]
    return m.group(1), m.group(2), m.group(3)


def test_an_incoming_trace_is_continued_with_server_and_client_spans(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    up = echo("up")
    m = traced_mesh(mesh, up, collector.url, service_name="edge")
    r = send(m, {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200, r.text
    trace_id, parent_id, flags = upstream_traceparent(r)
    assert (trace_id, flags) == (TRACE_ID, "01")
    assert parent_id != PARENT_ID, "the upstream's parent is the proxy's span"
    assert r.headers["echo-header-tracestate"] == "congo=t61rcWkgMzE"

    server, client = by_kind(collector.trace(TRACE_ID))
    assert server.parent_span_id.hex() == PARENT_ID
    assert client.parent_span_id == server.span_id
    assert client.span_id.hex() == parent_id, "the upstream got the client span as its parent"
    assert server.trace_state == "congo=t61rcWkgMzE"
    assert server.start_time_unix_nano <= client.start_time_unix_nano <= client.end_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano

    s = attrs(server)
    assert s["pymesh.listener"] == "web"
    assert s["pymesh.route"] == "api"
    assert s["pymesh.cluster"] == "up"
    assert s["http.request.method"] == "GET"
    assert s["url.path"] == "/"
    assert s["http.response.status_code"] == 200
    assert s["network.protocol.version"] == "1.1"
    assert s["pymesh.attempts"] == 1
    assert s["pymesh.flags"] == "-"
    assert s["server.address"] == "127.0.0.1"
    c = attrs(client)
    host, port = up.address.rsplit(":", 1)
    assert (c["server.address"], c["server.port"]) == (host, int(port))
    assert c["pymesh.cluster"] == "up"
    assert server.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert collector.service_names[-1] == "edge"
    assert set(collector.content_types) == {"application/x-protobuf"}


def test_a_new_trace_starts_when_none_came_and_a_request_id_is_set(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    m = traced_mesh(mesh, echo("up"), collector.url)
    r = send(m)
    trace_id, parent_id, flags = upstream_traceparent(r)
    assert flags == "01"
    request_id = r.headers["echo-header-x-request-id"]
    assert UUID4_RE.match(request_id), request_id
    server, client = by_kind(collector.trace(trace_id))
    assert server.parent_span_id == b"", "a root span"
    assert client.span_id.hex() == parent_id
    assert attrs(server)["pymesh.request_id"] == request_id

    kept = send(m, {"x-request-id": "caller-chose-this"})
    assert kept.headers["echo-header-x-request-id"] == "caller-chose-this"
    assert send(m).headers["echo-header-x-request-id"] != request_id

    # A listener left out of tracing.listeners does not touch trace headers.
    plain = send(m, lst="plain")
    assert "echo-header-traceparent" not in plain.headers
    assert "echo-header-x-request-id" not in plain.headers


def test_a_malformed_traceparent_is_replaced_not_propagated(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    m = traced_mesh(mesh, echo("up"), collector.url)
    for bad in [
        TRACEPARENT.upper(),
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        "garbage",
    ]:
        r = send(m, {"traceparent": bad, "tracestate": "congo=t61rcWkgMzE"})
        assert r.status_code == 200
        got = r.headers["echo-header-traceparent"]
        assert got != bad
        trace_id, _, _ = upstream_traceparent(r)
        assert trace_id != TRACE_ID
        assert "echo-header-tracestate" not in r.headers
        server, _ = by_kind(collector.trace(trace_id))
        assert server.parent_span_id == b""


def test_b3_in_b3_out(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    m = traced_mesh(mesh, echo("up"), collector.url, sample_percent=0)
    single = send(m, {"b3": f"{TRACE_ID}-{PARENT_ID}-1"})
    trace, span, sampled, parent = single.headers["echo-header-b3"].split("-")
    assert (trace, sampled) == (TRACE_ID, "1")
    server, client = by_kind(collector.trace(TRACE_ID))
    assert span == client.span_id.hex()
    assert parent == server.span_id.hex()
    assert server.parent_span_id.hex() == PARENT_ID
    assert upstream_traceparent(single) == (TRACE_ID, span, "01")

    other = "80f198ee56343ba864fe8b2a57d3eff7"
    multi = send(
        m,
        {"x-b3-traceid": other, "x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-sampled": "1"},
    )
    h = multi.headers
    server, client = by_kind(collector.trace(other))
    assert h["echo-header-x-b3-traceid"] == other
    assert h["echo-header-x-b3-spanid"] == client.span_id.hex()
    assert h["echo-header-x-b3-parentspanid"] == server.span_id.hex()
    assert h["echo-header-x-b3-sampled"] == "1"
    assert "echo-header-b3" not in h
    assert server.parent_span_id.hex() == "e457b5a2e4d86bd1"


def test_sampling_at_zero_exports_only_what_callers_sampled(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    m = traced_mesh(mesh, echo("up"), collector.url, sample_percent=0)
    unsampled = [upstream_traceparent(send(m)) for _ in range(5)]
    assert all(flags == "00" for _, _, flags in unsampled)
    not_sampled = f"00-{'ab' * 16}-{PARENT_ID}-00"
    assert upstream_traceparent(send(m, {"traceparent": not_sampled}))[2] == "00"
    send(m, {"traceparent": TRACEPARENT})
    collector.trace(TRACE_ID)
    # Spans leave in order: once the sampled one is in, nothing else came before it.
    with collector.lock:
        assert {s.trace_id.hex() for s in collector.spans} == {TRACE_ID}


def test_a_retried_request_records_its_attempts_and_fails_the_spans(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], collector: Collector
) -> None:
    retry = {"retry": {"attempts": 2, "on": ["503"], "backoff": "1ms"}}
    m = traced_mesh(mesh, echo("up"), collector.url, route_extra=retry)
    r = send(m, {"traceparent": TRACEPARENT}, query="&status=503")
    assert r.status_code == 503
    server, client = by_kind(collector.trace(TRACE_ID))
    s, c = attrs(server), attrs(client)
    assert s["pymesh.attempts"] == 3
    assert c["http.request.resend_count"] == 2
    assert s["http.response.status_code"] == 503
    assert "URX" in s["pymesh.flags"]
    assert server.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert client.status.code == Status.StatusCode.STATUS_CODE_ERROR


def test_a_dead_collector_never_slows_traffic_and_drops_are_counted(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    m = traced_mesh(
        mesh,
        echo("up"),
        f"http://{dead_address()}/v1/traces",
        max_queue_spans=4,
        batch_size=2,
        export_timeout="200ms",
    )
    with httpx.Client(timeout=10) as client:
        base = m.listener("web")
        for _ in range(60):
            assert client.get(f"{base}/").status_code == 200

    def dropped() -> float:
        return metric(m.metrics(), "pymesh_tracing_spans_dropped_total") or 0.0

    poll(lambda: dropped() > 0, 10.0, what="dropped spans counted")
    poll(
        lambda: (metric(m.metrics(), "pymesh_tracing_export_failures_total") or 0) > 0,
        10.0,
        what="failed exports counted",
    )
    assert metric(m.metrics(), "pymesh_tracing_spans_exported_total") == 0


# === bad config ===


def _locs(config: dict[str, Any]) -> set[str]:
    with pytest.raises(ConfigError) as e:
        load_config(config)
    return {item["loc"] for item in e.value.errors}


def _config(**tracing: Any) -> dict[str, Any]:
    return {
        "listeners": [
            listener("web", [route("up")]),
            {"name": "db", "listen": "127.0.0.1:0", "protocol": "tcp", "to": [{"cluster": "up"}]},
        ],
        "clusters": [cluster("up", "127.0.0.1:9")],
        "tracing": tracing,
    }


@pytest.mark.parametrize(
    ("tracing", "loc"),
    [
        ({"otlp_endpoint": "ftp://127.0.0.1:4318/v1/traces"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http:///v1/traces"}, "tracing.otlp_endpoint"),
        ({"otlp_endpoint": "http://127.0.0.1:99999/v1/traces"}, "tracing.otlp_endpoint"),
        ({"sample_percent": 100.5}, "tracing.sample_percent"),
        ({"sample_percent": -1}, "tracing.sample_percent"),
        ({"max_queue_spans": 0}, "tracing.max_queue_spans"),
        ({"max_queue_spans": 10, "batch_size": 11}, "tracing.batch_size"),
        ({"flush_interval": "0ms"}, "tracing.flush_interval"),
        ({"listeners": ["nope"]}, "tracing.listeners.0"),
        ({"listeners": ["web", "db"]}, "tracing.listeners.1"),
        ({"collector": "http://127.0.0.1:4318"}, "tracing.collector"),
    ],
)
def test_bad_tracing_config_is_refused_with_its_path(tracing: dict[str, Any], loc: str) -> None:
    assert loc in _locs(_config(**tracing))


def test_tracing_defaults_fill_the_snapshot() -> None:
    assert to_snapshot(load_config(_config()), 1)["tracing"] == {
        "otlp_endpoint": "http://127.0.0.1:4318/v1/traces",
        "sample_percent": 1.0,
        "service_name": "pymesh",
        "max_queue_spans": 2048,
        "batch_size": 512,
        "flush_interval_ms": 1000,
        "export_timeout_ms": 2000,
        "request_id": True,
        "listeners": None,
    }
    off = {k: v for k, v in _config().items() if k != "tracing"}
    assert to_snapshot(load_config(off), 1)["tracing"] is None
