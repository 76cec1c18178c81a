"""Distributed tracing as users configure it: the ``tracing`` section of a mesh config, its
checks across the config, and its snapshot form.

With a ``tracing`` section, every ``http`` listener (or those in ``tracing.listeners``)
accepts and propagates W3C ``traceparent``/``tracestate`` and B3 headers, starts a trace
when none came (``sample_percent`` of them sampled), sets ``x-request-id`` when absent, and
exports each sampled request as a SERVER and a CLIENT span over OTLP/HTTP (protobuf) to
``otlp_endpoint``. Without it, none of that happens.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pymesh.durations import Duration, to_millis

if TYPE_CHECKING:
    from pymesh.config import MeshConfig

__all__ = ["DEFAULT_OTLP_ENDPOINT", "Tracing", "tracing_problems", "tracing_snapshot"]

DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
"""Where an OpenTelemetry Collector takes OTLP/HTTP traces by default."""

_LISTENER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _check_endpoint(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r}: a URL has no spaces or control characters")
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{value!r}: the scheme must be http or https")
    if not url.hostname:
        raise ValueError(f"{value!r} has no host")
    if port == 0:
        raise ValueError(f"{value!r}: port 0 is not a collector's port")
    if url.fragment:
        raise ValueError(f"{value!r}: a collector URL has no #fragment")
    return value


def _check_listener_name(value: str) -> str:
    if not _LISTENER_NAME.match(value):
        raise ValueError(f"{value!r} is not a listener name")
    return value


class Tracing(BaseModel):
    """Distributed tracing: trace context propagation and spans exported over OTLP/HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: Annotated[str, AfterValidator(_check_endpoint)] = Field(
        default=DEFAULT_OTLP_ENDPOINT,
        description="The collector's OTLP/HTTP traces URL (`http://` or `https://`, system "
        "roots); spans are POSTed there as `application/x-protobuf`. Default: "
        f"`{DEFAULT_OTLP_ENDPOINT}`.",
    )
    sample_percent: float = Field(
        default=1.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Percentage of new traces sampled (exported), 0-100. A caller's sampling "
        "decision (the `traceparent` flag, `X-B3-Sampled`, the `b3` header) is honoured.",
    )
    service_name: str = Field(
        default="pymesh",
        min_length=1,
        max_length=256,
        description="The `service.name` resource attribute of the spans.",
    )
    max_queue_spans: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Spans waiting for export, at most; when the collector is slow or down, "
        "more are dropped and counted in `pymesh_tracing_spans_dropped_total`.",
    )
    batch_size: int = Field(
        default=512,
        ge=1,
        le=1_000_000,
        description="Spans per export request, at most (no more than `max_queue_spans`).",
    )
    flush_interval: Duration = Field(
        default="1s",
        validate_default=True,
        description="A batch is sent at the latest this long after its first span.",
    )
    export_timeout: Duration = Field(
        default="2s",
        validate_default=True,
        description="One export request may take this long; then its spans are dropped and "
        "counted.",
    )
    request_id: bool = Field(
        default=True,
        description="Set `x-request-id` (a random UUID) on requests that come without one; "
        "one that came is kept.",
    )
    listeners: list[Annotated[str, AfterValidator(_check_listener_name)]] | None = Field(
        default=None,
        description="The `http` listeners that trace, by name. Default: all of them.",
    )


def tracing_problems(cfg: MeshConfig) -> list[tuple[str, str]]:
    """What is wrong with ``cfg.tracing`` given the rest of the config: ``(loc, msg)``."""
    t = cfg.tracing
    if t is None:
        return []
    problems: list[tuple[str, str]] = []
    if t.batch_size > t.max_queue_spans:
        problems.append(
            (
                "tracing.batch_size",
                f"{t.batch_size} is more than max_queue_spans ({t.max_queue_spans})",
            )
        )
    protocols = {lst.name: lst.protocol for lst in cfg.listeners}
    for k, name in enumerate(t.listeners or []):
        if name not in protocols:
            problems.append((f"tracing.listeners.{k}", f"unknown listener {name!r}"))
        elif protocols[name] != "http":
            problems.append(
                (f"tracing.listeners.{k}", f"listener {name!r} is {protocols[name]}, not http")
            )
    return problems


def tracing_snapshot(t: Tracing | None) -> dict[str, Any] | None:
    """The ``tracing`` field of the snapshot (None: tracing off)."""
    if t is None:
        return None
    return {
        "otlp_endpoint": t.otlp_endpoint,
        "sample_percent": t.sample_percent,
        "service_name": t.service_name,
        "max_queue_spans": t.max_queue_spans,
        "batch_size": t.batch_size,
        "flush_interval_ms": to_millis(t.flush_interval),
        "export_timeout_ms": to_millis(t.export_timeout),
        "request_id": t.request_id,
        "listeners": None if t.listeners is None else list(t.listeners),
    }
