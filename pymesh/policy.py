"""The policy engine: traffic policies as users write them, their layering, and the resolved
form the core enforces.

Policies attach at four levels. Route policies (``timeout``, ``per_try_timeout``,
``idle_timeout``, ``retry``, ``rate_limit``, ``fault``, ``mirror``) come from, least specific
first: the built-in defaults, the mesh's ``defaults.route``, the listener's
``defaults.route``, and the route itself. Cluster policies (``circuit_breaker``,
``outlier_detection``) come from the built-in defaults, the mesh's ``defaults.cluster`` and
the cluster itself.

The one precedence rule: **the more specific level wins, field by field**. A route that sets
``retry: {attempts: 5}`` keeps the ``retry.on`` its listener or the mesh set. Writing
``false`` for a policy (``retry: false``, ``timeout: false``) turns it off at that level, and
everything less specific about it is forgotten; a more specific level may turn it on again.
``null`` is the same as leaving the field out (so a dumped config reads back the same). A
policy group (``retry``, ``rate_limit``, ...) is on once any level gives it (even as ``{}``);
its fields that no level sets take the built-in defaults below.

:func:`resolve_route` and :func:`resolve_cluster` answer every setting with its effective
value, the level it came from, and the config path that set it; :func:`policy_problems`
refuses contradictions (a per-try timeout longer than the request's, retries that could only
replay a non-idempotent route, a mirror to an unknown cluster...) with the path of the field
to fix; and :func:`route_snapshot` / :func:`cluster_snapshot` write the resolved policies into
the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pymesh.durations import Duration, format_duration, to_millis

if TYPE_CHECKING:
    from pymesh.config import Cluster, Listener, MeshConfig, Route

__all__ = [
    "BUILTIN",
    "CircuitBreaker",
    "ClusterDefaults",
    "ClusterPolicyFields",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "ListenerDefaults",
    "MeshDefaults",
    "Mirror",
    "OutlierDetection",
    "RateLimit",
    "RateLimitKey",
    "Retry",
    "RoutePolicyFields",
    "Setting",
    "SuccessRate",
    "cluster_snapshot",
    "find_route",
    "policy_problems",
    "resolve_cluster",
    "resolve_route",
    "route_snapshot",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# === what users write ===

_GRPC_CODES = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_CONDITIONS = ("connect-failure", "reset", "refused-stream", "5xx", "gateway-error")


def _check_condition(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a retry condition")
    if value in _CONDITIONS or value in _GRPC_CODES:
        return value
    if value.isdigit() and 100 <= int(value) <= 599:
        return value
    raise ValueError(
        f"unknown retry condition {value!r}: use {', '.join(_CONDITIONS)}, a status such as "
        f"'503', or a gRPC status ({', '.join(_GRPC_CODES)})"
    )


RetryCondition = Annotated[str, BeforeValidator(_check_condition)]


class Retry(_Model):
    """When and how often a failed try is tried again. Only idempotent requests (GET, HEAD,
    OPTIONS, PUT, DELETE, TRACE; or every request of a route with ``idempotent: true``) are
    retried once the upstream may have seen them; a request that provably never reached it
    (connect failure, HTTP/2 REFUSED_STREAM) may be retried whatever its method."""

    attempts: int | None = Field(
        default=None, ge=0, le=10, description="Retries after the first try (0: none). Default 2."
    )
    on: list[RetryCondition] | None = Field(
        default=None,
        description="What is retried: `connect-failure`, `reset`, `refused-stream`, `5xx`, "
        "`gateway-error` (502, 503, 504), a status (`'503'`), or a `grpc-status` by name "
        "(`cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable`). "
        "Default `[connect-failure, refused-stream, reset, '503']`.",
    )
    idempotent: bool | None = Field(
        default=None,
        description="Mark every request of the route as safe to replay, whatever its method "
        "(the explicit opt-in for retrying POST/PATCH routes). Default false.",
    )
    budget_percent: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Retries may add at most this percentage to the cluster's request rate "
        "(over 10 s). Default 20.",
    )
    min_retries_per_second: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Retries allowed per second whatever the rate. Default 10.",
    )
    backoff: Duration | None = Field(
        default=None,
        description="Wait before the first retry; it doubles per retry, with jitter (each wait "
        "is between half and all of its step). Default 25ms.",
    )
    max_backoff: Duration | None = Field(
        default=None, description="Longest wait between retries. Default 10 x `backoff`."
    )
    buffer_limit: int | None = Field(
        default=None,
        ge=0,
        le=16 * 1024 * 1024,
        description="Request bodies up to this many bytes are kept for replay (a body of "
        "unknown length streams to the first try while a copy is kept); larger bodies are not "
        "retried. Default 65536.",
    )


def _header_name(value: str) -> str:
    from pymesh.config import _check_header_name  # noqa: PLC0415 - config imports this module

    return _check_header_name(value)


class RateLimitKey(_Model):
    """What a rate limit counts separately: one of ``header`` and ``client_ip``."""

    header: Annotated[str, AfterValidator(_header_name)] | None = Field(
        default=None, description="One bucket per value of this request header."
    )
    client_ip: bool = Field(default=False, description="One bucket per client IP address.")

    @model_validator(mode="after")
    def _one(self) -> RateLimitKey:
        if (self.header is not None) == self.client_ip:
            raise ValueError("set exactly one of 'header' and 'client_ip: true'")
        return self


class RateLimit(_Model):
    """A local token bucket: requests beyond it get 429 with `Retry-After`."""

    requests_per_second: float | None = Field(
        default=None, gt=0, le=1e9, description="Tokens added per second. Required."
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Bucket size: requests that may come at once. Default: "
        "`requests_per_second` rounded up.",
    )
    key: RateLimitKey | None = Field(
        default=None, description="Count per header value or client IP. Default: one bucket."
    )
    max_keys: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="Buckets kept for keys; beyond it keys share buckets (only ever stricter). "
        "Default 10000.",
    )


class FaultDelay(_Model):
    duration: Duration | None = Field(default=None, description="The delay. Required.")
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Share of requests delayed. Default 100."
    )


class FaultAbort(_Model):
    status: int | None = Field(
        default=None, ge=200, le=599, description="The status answered. Required."
    )
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Share of requests aborted. Default 100."
    )


class Fault(_Model):
    """Chaos testing: delay and/or abort a share of the route's requests."""

    delay: FaultDelay | Literal[False] | None = Field(
        default=None, description="A fixed delay before forwarding; `false`: none."
    )
    abort: FaultAbort | Literal[False] | None = Field(
        default=None, description="Answer at once with a status; `false`: none."
    )


class Mirror(_Model):
    """Also send a share of the route's requests to a shadow cluster, fire and forget (only
    requests whose body is buffered: empty, or of known length up to the retry
    `buffer_limit`)."""

    cluster: str | None = Field(default=None, description="The shadow cluster. Required.")
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Share of requests mirrored. Default 100."
    )


class CircuitBreaker(_Model):
    """Limits on what one cluster may have at once; beyond them: 503 at once, with
    `x-pymesh-overflow: circuit-breaker`."""

    max_connections: int | None = Field(
        default=None, ge=1, le=10**9, description="Upstream connections. Default 1024."
    )
    max_pending: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="Requests waiting for their response head. Default 1024.",
    )
    max_requests: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="Requests in flight (until the response body ends). Default 1024.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=10**9,
        description="Retries in flight; a retry beyond it is not made. Default 3.",
    )


class SuccessRate(_Model):
    minimum_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Eject an endpoint whose success percentage over a window is below this. "
        "Default 50.",
    )
    request_volume: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="Judge only endpoints with this many requests in the window. Default 20.",
    )
    interval: Duration | None = Field(default=None, description="The window. Default 10s.")


class OutlierDetection(_Model):
    """Passive health checking from real traffic: failing endpoints are ejected (skipped by
    the balancer) for a while."""

    consecutive_5xx: int | None = Field(
        default=None, ge=0, le=10**6, description="5xx in a row that eject (0: off). Default 5."
    )
    consecutive_gateway_errors: int | None = Field(
        default=None,
        ge=0,
        le=10**6,
        description="Gateway errors (502-504, connect failures, resets, timeouts) in a row "
        "that eject (0: off). Default 0.",
    )
    success_rate: SuccessRate | Literal[False] | None = Field(
        default=None, description="Success-rate ejection over a window. Default: off."
    )
    base_ejection: Duration | None = Field(
        default=None,
        description="An endpoint's n-th ejection lasts n x this. Default 30s.",
    )
    max_ejection: Duration | None = Field(
        default=None, description="The longest ejection. Default 300s."
    )
    max_ejection_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="At most this share of the endpoints is ejected at once (one always may "
        "be). Default 10.",
    )


class RoutePolicyFields(_Model):
    """The route policies; on a route, in a listener's or the mesh's ``defaults.route``."""

    timeout: Duration | Literal[False] | None = Field(
        default=None,
        description="Whole request, all tries and backoffs, until the response head; expiry "
        "answers 504 (`x-pymesh-timeout: request`). Default 15s; `false`: none.",
    )
    per_try_timeout: Duration | Literal[False] | None = Field(
        default=None,
        description="One try, until its response head; expiry retries or answers 504 "
        "(`x-pymesh-timeout: per_try`). Default: none.",
    )
    idle_timeout: Duration | Literal[False] | None = Field(
        default=None,
        description="Upstream idle: the longest gap in the upstream's response body; expiry "
        "aborts the response. Default: none.",
    )
    retry: Retry | Literal[False] | None = Field(
        default=None, description="Retries; `false`: off. Default: off."
    )
    rate_limit: RateLimit | Literal[False] | None = Field(
        default=None, description="Local rate limit; `false`: off. Default: off."
    )
    fault: Fault | Literal[False] | None = Field(
        default=None, description="Fault injection; `false`: off. Default: off."
    )
    mirror: Mirror | Literal[False] | None = Field(
        default=None, description="Mirroring; `false`: off. Default: off."
    )


class ClusterPolicyFields(_Model):
    """The cluster policies; on a cluster, or in the mesh's ``defaults.cluster``."""

    circuit_breaker: CircuitBreaker | Literal[False] | None = Field(
        default=None, description="Circuit breaking; `false`: off. Default: off."
    )
    outlier_detection: OutlierDetection | Literal[False] | None = Field(
        default=None, description="Outlier ejection; `false`: off. Default: off."
    )


class RouteDefaults(RoutePolicyFields):
    """Route policies for every route below this level."""


class ClusterDefaults(ClusterPolicyFields):
    """Cluster policies for every cluster."""


class ListenerDefaults(_Model):
    """A listener's defaults for its routes."""

    route: RouteDefaults = Field(
        default_factory=RouteDefaults, description="Route policies for the listener's routes."
    )


class MeshDefaults(_Model):
    """Mesh-wide policy defaults; listeners, routes and clusters override them."""

    route: RouteDefaults = Field(
        default_factory=RouteDefaults, description="Route policies for every route."
    )
    cluster: ClusterDefaults = Field(
        default_factory=ClusterDefaults, description="Cluster policies for every cluster."
    )


_POLICY_MODELS = frozenset(
    m.__name__
    for m in (
        Retry,
        RateLimit,
        RateLimitKey,
        Fault,
        FaultDelay,
        FaultAbort,
        Mirror,
        CircuitBreaker,
        OutlierDetection,
        SuccessRate,
    )
)

ROUTE_FIELDS = tuple(RoutePolicyFields.model_fields)
CLUSTER_FIELDS = tuple(ClusterPolicyFields.model_fields)

# === the built-in defaults ===

BUILTIN: dict[str, Any] = {
    "timeout": timedelta(seconds=15),
    "per_try_timeout": None,
    "idle_timeout": None,
    "retry.attempts": 2,
    "retry.on": ["connect-failure", "refused-stream", "reset", "503"],
    "retry.idempotent": False,
    "retry.budget_percent": 20.0,
    "retry.min_retries_per_second": 10,
    "retry.backoff": timedelta(milliseconds=25),
    "retry.max_backoff": None,  # 10 x backoff
    "retry.buffer_limit": 64 * 1024,
    "rate_limit.requests_per_second": None,
    "rate_limit.burst": None,  # requests_per_second rounded up
    "rate_limit.key": None,
    "rate_limit.max_keys": 10_000,
    "fault.delay.duration": None,
    "fault.delay.percent": 100.0,
    "fault.abort.status": None,
    "fault.abort.percent": 100.0,
    "mirror.cluster": None,
    "mirror.percent": 100.0,
    "circuit_breaker.max_connections": 1024,
    "circuit_breaker.max_pending": 1024,
    "circuit_breaker.max_requests": 1024,
    "circuit_breaker.max_retries": 3,
    "outlier_detection.consecutive_5xx": 5,
    "outlier_detection.consecutive_gateway_errors": 0,
    "outlier_detection.success_rate.minimum_percent": 50.0,
    "outlier_detection.success_rate.request_volume": 20,
    "outlier_detection.success_rate.interval": timedelta(seconds=10),
    "outlier_detection.base_ejection": timedelta(seconds=30),
    "outlier_detection.max_ejection": timedelta(seconds=300),
    "outlier_detection.max_ejection_percent": 10,
}
"""Every leaf setting's built-in value (None: unset, or computed from another setting)."""

_GROUPS = frozenset(
    {
        "retry",
        "rate_limit",
        "fault",
        "fault.delay",
        "fault.abort",
        "mirror",
        "circuit_breaker",
        "outlier_detection",
        "outlier_detection.success_rate",
    }
)
"""Settings that are objects, merged field by field: on once any level gives them, off with
``null``. Other objects (``rate_limit.key``) are taken whole."""

_OFFABLE = frozenset({"timeout", "per_try_timeout", "idle_timeout"})
"""Leaves that ``false`` turns off."""

Level = Literal["built-in", "defaults", "listener", "route", "cluster"]


@dataclass(frozen=True)
class Setting:
    """One effective setting: its value (None: off or unset), the level that decided it, and
    the config path that set it (empty for built-in defaults)."""

    value: Any
    level: Level
    loc: str

    def shown(self) -> Any:
        """The value as JSON shows it (durations as strings)."""
        return _shown(self.value)


def _shown(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    return value


def union_branches_removed(loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """A pydantic error ``loc`` without the union branch names that ``X | false`` fields add
    (``Retry``, ``literal[False]``, ``function-before[...]``); None for the error of the
    ``false`` branch itself, which only repeats that the value is not ``false``."""
    if loc and loc[-1] == "literal[False]":
        return None
    return tuple(
        p
        for p in loc
        if not (isinstance(p, str) and (p in _POLICY_MODELS or p.startswith("function-")))
    )


# === layering ===


def _entries(
    model: BaseModel, fields: tuple[str, ...], prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """The settings a level gives (``None`` is "not given"): ``(path, value)``, where a group's
    value is ``True`` (given) or ``None`` (turned off with ``false``), and so is the value of a
    timeout turned off."""
    for name in fields:
        value = getattr(model, name)
        if value is None:
            continue
        path = f"{prefix}{name}"
        if path in _GROUPS:
            if value is False:
                yield path, None
            else:
                yield path, True
                yield from _entries(value, tuple(type(value).model_fields), f"{path}.")
        elif path in _OFFABLE and value is False:
            yield path, None
        else:
            yield path, value


def _resolve(
    levels: list[tuple[Level, str, BaseModel | None]], fields: tuple[str, ...]
) -> dict[str, Setting]:
    """Merge ``levels`` (least specific first; each ``(level, loc prefix, model)``) over the
    built-in defaults. Answers every group (``True``/``None``) and every leaf of the groups
    that are on."""
    given: dict[str, tuple[int, Setting]] = {}
    offs: dict[str, int] = {}  # group -> rank of the most specific level that turned it off
    for rank, (level, loc, model) in enumerate(levels, start=1):
        if model is None:
            continue
        for path, value in _entries(model, fields):
            given[path] = (rank, Setting(value, level, f"{loc}{path}" if loc else path))
            if path in _GROUPS and value is None:
                offs[path] = rank

    def reset_rank(path: str) -> int:
        """The rank of the most specific level that turned off ``path`` or a group above it."""
        parts = path.split(".")
        prefixes = (".".join(parts[:n]) for n in range(1, len(parts) + 1))
        return max((offs.get(p, 0) for p in prefixes), default=0)

    def group_on(group: str) -> Setting | None:
        """The setting that turned ``group`` (and every group above it) on, or None."""
        parts = group.split(".")
        decided: Setting | None = None
        for n in range(1, len(parts) + 1):
            prefix = ".".join(parts[:n])
            hit = given.get(prefix)
            if hit is None or hit[1].value is None or hit[0] <= reset_rank(prefix):
                return None
            decided = hit[1]
        return decided

    roots = {f.split(".")[0] for f in fields}
    out: dict[str, Setting] = {}
    for group in sorted(_GROUPS):
        if group.split(".")[0] not in roots:
            continue
        on = group_on(group)
        if on is not None:
            out[group] = on
        else:
            off = given.get(group)
            if off is not None and off[1].value is None:
                out[group] = off[1]
            else:
                out[group] = Setting(None, "built-in", "")
    for path, builtin in BUILTIN.items():
        if path.split(".")[0] not in roots:
            continue
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent is not None and out[parent].value is None:
            continue
        hit = given.get(path)
        if hit is not None and hit[0] > reset_rank(path):
            out[path] = hit[1]
        else:
            out[path] = Setting(builtin, "built-in", "")
    return out


def resolve_route(cfg: MeshConfig, listener_index: int, route_index: int) -> dict[str, Setting]:
    """The effective route policies of ``listeners[listener_index].routes[route_index]``."""
    listener = cfg.listeners[listener_index]
    route = listener.routes[route_index]
    at = f"listeners.{listener_index}"
    levels: list[tuple[Level, str, BaseModel | None]] = [
        ("defaults", "defaults.route.", cfg.defaults.route),
        ("listener", f"{at}.defaults.route.", listener.defaults and listener.defaults.route),
        ("route", f"{at}.routes.{route_index}.", route),
    ]
    out = _resolve(levels, ROUTE_FIELDS)
    # Built-in defaults computed from other settings.
    if out["retry"].value is not None and out["retry.max_backoff"].value is None:
        out["retry.max_backoff"] = Setting(out["retry.backoff"].value * 10, "built-in", "")
    rps = out.get("rate_limit.requests_per_second")
    if rps is not None and rps.value is not None and out["rate_limit.burst"].value is None:
        out["rate_limit.burst"] = Setting(max(1, math.ceil(rps.value)), "built-in", "")
    return out


def resolve_cluster(cfg: MeshConfig, cluster_index: int) -> dict[str, Setting]:
    """The effective cluster policies of ``clusters[cluster_index]``."""
    levels: list[tuple[Level, str, BaseModel | None]] = [
        ("defaults", "defaults.cluster.", cfg.defaults.cluster),
        ("cluster", f"clusters.{cluster_index}.", cfg.clusters[cluster_index]),
    ]
    return _resolve(levels, CLUSTER_FIELDS)


def find_route(cfg: MeshConfig, ref: str) -> tuple[int, int] | None:
    """``(listener index, route index)`` of ``LISTENER/ROUTE`` (route names default to
    ``route-<index>``), or None."""
    from pymesh.config import route_name  # noqa: PLC0415 - config imports this module

    listener_name, _, name = ref.partition("/")
    for i, listener in enumerate(cfg.listeners):
        if listener.name != listener_name:
            continue
        for j, route in enumerate(listener.routes):
            if route_name(route, j) == name:
                return i, j
    return None


# === contradictions ===

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NEVER_SENT = frozenset({"connect-failure", "refused-stream"})


def _route_problems(
    cfg: MeshConfig, i: int, j: int, clusters: set[str]
) -> Iterator[tuple[str, str]]:
    listener = cfg.listeners[i]
    route = listener.routes[j]
    at = f"listeners.{i}.routes.{j}"
    forwards = route.to is not None and listener.protocol == "http"
    if not forwards:
        for name in ROUTE_FIELDS:
            if getattr(route, name) is not None:
                why = (
                    "only http listeners' routes take traffic policies"
                    if listener.protocol != "http"
                    else "applies only to forwarded requests (a route with 'to')"
                )
                yield f"{at}.{name}", why
        return
    s = resolve_route(cfg, i, j)

    def which(loc: str) -> str:
        """Name the route when the problem is reported at a less specific level."""
        return "" if loc.startswith(f"{at}.") else f" (for route {at})"

    timeout, per_try = s["timeout"], s["per_try_timeout"]
    if timeout.value is not None and per_try.value is not None and per_try.value > timeout.value:
        loc = per_try.loc or timeout.loc
        yield (
            loc,
            f"per_try_timeout {_shown(per_try.value)} ({per_try.level}) is longer than the "
            f"request timeout {_shown(timeout.value)} ({timeout.level}{_from(timeout)}): "
            f"no try could use it{which(loc)}",
        )
    if s["retry"].value is not None:
        on = s["retry.on"]
        methods = set(route.match.methods)
        replayed = [c for c in on.value if c not in _NEVER_SENT]
        unsafe = sorted(methods - _IDEMPOTENT)
        if methods and unsafe and replayed and not s["retry.idempotent"].value:
            loc = on.loc or s["retry"].loc
            yield (
                loc,
                f"the route{which(loc)} takes {', '.join(unsafe)}, which is not idempotent: "
                "retrying on "
                f"{', '.join(replayed)} could replay it (pymesh never does). Retry only on "
                "connect-failure/refused-stream, or set retry.idempotent: true if the upstream "
                "tolerates replays",
            )
        backoff, cap = s["retry.backoff"], s["retry.max_backoff"]
        if cap.value is not None and cap.value < backoff.value:
            yield cap.loc, f"max_backoff is shorter than backoff ({_shown(backoff.value)})"
    if s["rate_limit"].value is not None and s["rate_limit.requests_per_second"].value is None:
        yield f"{s['rate_limit'].loc}.requests_per_second", _required("rate_limit")
    if s["fault.delay"].value is not None and s["fault.delay.duration"].value is None:
        yield f"{s['fault.delay'].loc}.duration", _required("fault.delay")
    if s["fault.abort"].value is not None and s["fault.abort.status"].value is None:
        yield f"{s['fault.abort'].loc}.status", _required("fault.abort")
    if s["mirror"].value is not None:
        cluster = s["mirror.cluster"]
        if cluster.value is None:
            yield f"{s['mirror'].loc}.cluster", _required("mirror")
        elif cluster.value not in clusters:
            yield cluster.loc, f"unknown cluster {cluster.value!r}"


def _from(s: Setting) -> str:
    return f" at {s.loc}" if s.loc else ""


def _required(group: str) -> str:
    return f"required: no level gives it, and {group} is on (set it, or turn {group} off)"


def _cluster_problems(cfg: MeshConfig, i: int) -> Iterator[tuple[str, str]]:
    s = resolve_cluster(cfg, i)
    if s["outlier_detection"].value is not None:
        base, cap = s["outlier_detection.base_ejection"], s["outlier_detection.max_ejection"]
        if cap.value < base.value:
            yield (
                cap.loc or base.loc,
                f"max_ejection {_shown(cap.value)} is shorter than base_ejection "
                f"{_shown(base.value)}",
            )


def policy_problems(cfg: MeshConfig) -> list[tuple[str, str]]:
    """Every contradiction among the resolved policies: ``(loc, msg)``, each reported once
    (a bad mesh default shows at its own path, not once per route)."""
    clusters = {c.name for c in cfg.clusters}
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for i, listener in enumerate(cfg.listeners):
        if listener.protocol != "http" and listener.defaults is not None:
            route_defaults = listener.defaults.route
            if any(getattr(route_defaults, f) is not None for f in ROUTE_FIELDS):
                out.append(
                    (
                        f"listeners.{i}.defaults",
                        "only http listeners take route policies",
                    )
                )
        for j in range(len(listener.routes)):
            for problem in _route_problems(cfg, i, j, clusters):
                if problem not in seen:
                    seen.add(problem)
                    out.append(problem)
    for i in range(len(cfg.clusters)):
        for problem in _cluster_problems(cfg, i):
            if problem not in seen:
                seen.add(problem)
                out.append(problem)
    return out


# === the snapshot ===


def _ms(value: timedelta | None) -> int | None:
    return None if value is None else to_millis(value)


def _retry_on(conditions: list[str]) -> dict[str, Any]:
    statuses: set[int] = set()
    grpc: set[int] = set()
    for c in conditions:
        if c == "5xx":
            statuses.update(range(500, 600))
        elif c == "gateway-error":
            statuses.update((502, 503, 504))
        elif c in _GRPC_CODES:
            grpc.add(_GRPC_CODES[c])
        elif c.isdigit():
            statuses.add(int(c))
    return {
        "connect_failure": "connect-failure" in conditions,
        "reset": "reset" in conditions,
        "refused_stream": "refused-stream" in conditions,
        "statuses": sorted(statuses),
        "grpc_statuses": sorted(grpc),
    }


def route_snapshot(cfg: MeshConfig, listener_index: int, route_index: int) -> dict[str, Any] | None:
    """The resolved ``policy`` of a route as the core takes it (None for a route that does not
    forward)."""
    listener = cfg.listeners[listener_index]
    if listener.routes[route_index].to is None or listener.protocol != "http":
        return None
    s = resolve_route(cfg, listener_index, route_index)

    def v(path: str) -> Any:
        return s[path].value

    retry = None
    if v("retry") is not None:
        backoff: timedelta = v("retry.backoff")
        retry = {
            "attempts": v("retry.attempts"),
            "on": _retry_on(v("retry.on")),
            "idempotent": v("retry.idempotent"),
            "backoff_ms": to_millis(backoff),
            "max_backoff_ms": to_millis(v("retry.max_backoff")),
            "budget_percent": float(v("retry.budget_percent")),
            "min_retries_per_second": v("retry.min_retries_per_second"),
            "buffer_limit": v("retry.buffer_limit"),
        }
    rate_limit = None
    if v("rate_limit") is not None:
        rps = float(v("rate_limit.requests_per_second"))
        key: RateLimitKey | None = v("rate_limit.key")
        rate_limit = {
            "requests_per_second": rps,
            "burst": v("rate_limit.burst"),
            "key_header": key.header if key is not None else None,
            "key_client_ip": key is not None and key.client_ip,
            "max_keys": v("rate_limit.max_keys"),
        }
    fault = None
    if v("fault") is not None:
        fault = {
            "delay": None
            if v("fault.delay") is None
            else {
                "duration_ms": to_millis(v("fault.delay.duration")),
                "percent": float(v("fault.delay.percent")),
            },
            "abort": None
            if v("fault.abort") is None
            else {"status": v("fault.abort.status"), "percent": float(v("fault.abort.percent"))},
        }
    mirror = None
    if v("mirror") is not None:
        mirror = {"cluster": v("mirror.cluster"), "percent": float(v("mirror.percent"))}
    return {
        "timeout_ms": _ms(v("timeout")),
        "per_try_timeout_ms": _ms(v("per_try_timeout")),
        "idle_timeout_ms": _ms(v("idle_timeout")),
        "retry": retry,
        "rate_limit": rate_limit,
        "fault": fault,
        "mirror": mirror,
    }


def cluster_snapshot(cfg: MeshConfig, cluster_index: int) -> dict[str, Any] | None:
    """The resolved ``policy`` of a cluster as the core takes it (None: no cluster policy)."""
    s = resolve_cluster(cfg, cluster_index)

    def v(path: str) -> Any:
        return s[path].value

    breaker = None
    if v("circuit_breaker") is not None:
        breaker = {
            f: v(f"circuit_breaker.{f}")
            for f in ("max_connections", "max_pending", "max_requests", "max_retries")
        }
    outlier = None
    if v("outlier_detection") is not None:
        success = None
        if v("outlier_detection.success_rate") is not None:
            success = {
                "minimum_percent": float(v("outlier_detection.success_rate.minimum_percent")),
                "request_volume": v("outlier_detection.success_rate.request_volume"),
                "interval_ms": to_millis(v("outlier_detection.success_rate.interval")),
            }
        outlier = {
            "consecutive_5xx": v("outlier_detection.consecutive_5xx"),
            "consecutive_gateway_errors": v("outlier_detection.consecutive_gateway_errors"),
            "success_rate": success,
            "base_ejection_ms": to_millis(v("outlier_detection.base_ejection")),
            "max_ejection_ms": to_millis(v("outlier_detection.max_ejection")),
            "max_ejection_percent": v("outlier_detection.max_ejection_percent"),
        }
    if breaker is None and outlier is None:
        return None
    return {"circuit_breaker": breaker, "outlier_detection": outlier}


# === explaining ===


def explain(settings: dict[str, Setting]) -> list[dict[str, Any]]:
    """Settings as rows for people and the API: ``{setting, value, level, loc}``, sorted, with
    an off group standing for all of its fields."""
    rows = []
    for path in sorted(settings):
        s = settings[path]
        value: Any = s.shown()
        if path in _GROUPS:
            value = "on" if s.value is not None else "off"
        rows.append({"setting": path, "value": value, "level": s.level, "loc": s.loc})
    return rows


def effective(cfg: MeshConfig, route: str | None, cluster: str | None) -> dict[str, Any] | str:
    """The effective policies of a route (``LISTENER/ROUTE``) and/or a cluster, or the reason
    they cannot be shown (an unknown name)."""
    out: dict[str, Any] = {"route": route, "cluster": cluster, "settings": []}
    if route is not None:
        found = find_route(cfg, route)
        if found is None:
            return f"no route {route!r} (give LISTENER/ROUTE)"
        listener: Listener = cfg.listeners[found[0]]
        r: Route = listener.routes[found[1]]
        if r.to is None or listener.protocol != "http":
            return f"route {route!r} does not forward HTTP requests: it has no traffic policies"
        out["settings"] += explain(resolve_route(cfg, *found))
        out["clusters"] = [d.cluster for d in r.to]
    if cluster is not None:
        names = [c.name for c in cfg.clusters]
        if cluster not in names:
            return f"no cluster {cluster!r}"
        c: Cluster = cfg.clusters[names.index(cluster)]
        out["settings"] += explain(resolve_cluster(cfg, names.index(c.name)))
    return out
