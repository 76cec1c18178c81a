"""The user-facing configuration: pydantic models, loading, and the checks across fields.

These models are the single source of truth for what a config file may say: every field has
a description and a default (or is required), unknown fields are refused, and the JSON Schema
and the admin API's OpenAPI document are generated from them. ``load_config`` and
``load_config_file`` answer a valid :class:`MeshConfig` or raise
:class:`~pymesh.errors.ConfigError` naming every bad field by its dotted path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from pymesh.addresses import Endpoint, ListenAddress, check_endpoint, listen_key
from pymesh.documents import DocumentError, parse_document
from pymesh.durations import Duration
from pymesh.errors import ConfigError, ErrorItem

__all__ = [
    "FILE_LOC",
    "ROOT_LOC",
    "AdminConfig",
    "Cluster",
    "HashOn",
    "HealthCheck",
    "Listener",
    "MeshConfig",
    "PoolConfig",
    "Route",
    "RouteMatch",
    "WeightedCluster",
    "WeightedEndpoint",
    "check_config",
    "load_config",
    "load_config_file",
    "route_name",
]

ROOT_LOC = "(root)"
"""The ``loc`` of a problem with the document as a whole (say, a list where a mapping belongs)."""

FILE_LOC = "(file)"
"""The ``loc`` of a problem reading or parsing a config file."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r}: a name uses only letters, digits, '_', '.' and '-'")
    return value


Name = Annotated[str, AfterValidator(_check_name), Field(min_length=1, max_length=128)]
"""A name: 1-128 of ``[A-Za-z0-9_.-]``."""


def _only(kind: str, supported: str, later: frozenset[str]) -> BeforeValidator:
    """Refuse values other than ``supported`` with a message that tells planned from unknown."""

    def check(value: object) -> object:
        if value == supported or not isinstance(value, str):
            return value
        if value in later:
            raise ValueError(f"{kind} {value!r} is not supported yet (only {supported!r})")
        raise ValueError(f"unknown {kind} {value!r} (only {supported!r})")

    return BeforeValidator(check)


_Protocol = Annotated[
    Literal["http"],
    _only("protocol", "http", frozenset({"tcp", "tls-passthrough"})),
]
_Lb = Literal["round_robin", "random", "least_request", "ewma", "ring_hash", "maglev"]

HASHING_LBS = frozenset({"ring_hash", "maglev"})
"""The balancers that place requests by a key, and so need ``hash_on``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# === admin ===


class AdminConfig(_Model):
    """Where the admin API (health, config, stats, metrics) listens."""

    listen: ListenAddress = Field(
        default="127.0.0.1:9901",
        description="IP address and port of the admin API; port 0 lets the OS choose. "
        "Read at start only; the `--admin` flag wins over it.",
    )


# === listeners and routes ===


def _check_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/"):
        raise ValueError(f"{value!r}: a path must start with '/'")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r}: a path has no spaces or control characters")
    if "?" in value or "#" in value:
        raise ValueError(f"{value!r}: match the path only, without '?query' or '#fragment'")
    return value


_Path = Annotated[str | None, AfterValidator(_check_path)]


class RouteMatch(_Model):
    """Which requests a route takes: exactly one of ``path`` and ``path_prefix``."""

    path: _Path = Field(
        default=None,
        description="Match requests whose path is exactly this (no query string); starts with /.",
    )
    path_prefix: _Path = Field(
        default=None,
        description="Match requests whose path starts with this string; starts with /. "
        "`/` matches every request.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RouteMatch:
        if (self.path is None) == (self.path_prefix is None):
            raise ValueError("set exactly one of 'path' and 'path_prefix'")
        return self


class WeightedCluster(_Model):
    """One destination of a route and its share of the route's requests."""

    cluster: Name = Field(description="Name of a cluster in `clusters`. Required.")
    weight: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="Relative share of requests (0-1000000); a route's weights must not all "
        "be 0. A cluster gets weight / (sum of the route's weights) of the requests.",
    )


class Route(_Model):
    """Send matching requests to one or more clusters, split by weight."""

    name: Name | None = Field(
        default=None,
        description="Unique within the listener; used in metrics. Default: `route-<index>`.",
    )
    match: RouteMatch = Field(
        default_factory=lambda: RouteMatch(path_prefix="/"),
        description="Which requests this route takes. Default: every request (`{path_prefix: /}`).",
    )
    to: list[WeightedCluster] = Field(
        min_length=1,
        description="Destination clusters with weights. Required, at least one.",
    )


class Listener(_Model):
    """An address the proxy accepts connections on, and its routes."""

    name: Name = Field(description="Unique name of the listener. Required.")
    listen: ListenAddress = Field(
        description="IP address and port to accept connections on (`127.0.0.1:8080`, "
        "`[::1]:8080`); port 0 lets the OS choose. Required."
    )
    protocol: _Protocol = Field(
        default="http",
        description="Protocol spoken by clients: only `http` (HTTP/1.1) in this version.",
    )
    routes: list[Route] = Field(
        default_factory=list,
        description="Routes in order; the first that matches takes the request. A request no "
        "route matches gets 404. Default: none.",
    )


# === clusters ===


class PoolConfig(_Model):
    """The pool of idle upstream connections kept per endpoint for reuse."""

    max_idle_per_endpoint: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="Most idle connections kept open per endpoint (0 = no reuse).",
    )
    idle_timeout: Duration = Field(
        default="90s",
        validate_default=True,
        description="How long an idle pooled connection is kept before it is closed.",
    )


# --- load balancing and health (balancing branch) ---

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP token (RFC 9110): what header and cookie names are made of."""


def _check_token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits and !#$%&'*+.^_`|~-)")
    return value


_Token = Annotated[str | None, AfterValidator(_check_token)]


class WeightedEndpoint(_Model):
    """An upstream endpoint with a weight (the string form `host:port` has weight 1)."""

    address: Endpoint = Field(description="Upstream `host:port` (port 1-65535). Required.")
    weight: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Relative share of the cluster's requests (1-1000), for every balancer.",
    )


def _endpoint_entry(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A bare string is checked as an endpoint, anything else as a WeightedEndpoint, so that
    an error names the list item (and its field) rather than each arm of the union."""
    if isinstance(value, str):
        return check_endpoint(value)
    if isinstance(value, WeightedEndpoint):
        return value
    return WeightedEndpoint.model_validate(value)


EndpointEntry = Annotated[Endpoint | WeightedEndpoint, WrapValidator(_endpoint_entry)]
"""`host:port`, or `{address: host:port, weight: N}`."""


class HashOn(_Model):
    """Where `ring_hash` and `maglev` take a request's key from: exactly one of the three."""

    header: _Token = Field(default=None, description="Hash the value of this request header.")
    cookie: _Token = Field(default=None, description="Hash the value of this cookie.")
    source_ip: bool = Field(default=False, description="Hash the client's IP address.")

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOn:
        if (self.header is not None) + (self.cookie is not None) + self.source_ip != 1:
            raise ValueError("set exactly one of 'header', 'cookie' and 'source_ip: true'")
        return self


def _check_check_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/"):
        raise ValueError(f"{value!r}: a path must start with '/'")
    if any(c.isspace() or not c.isprintable() for c in value) or "#" in value:
        raise ValueError(f"{value!r}: a request path has no spaces, control characters or '#'")
    return value


class HealthCheck(_Model):
    """Active health checking of each endpoint: an HTTP `GET path`, or a TCP connect."""

    tcp: bool = Field(
        default=False,
        description="Check by opening a TCP connection instead of an HTTP request.",
    )
    path: Annotated[str | None, AfterValidator(_check_check_path)] = Field(
        default=None,
        description="HTTP checks: the path (and query) to GET. Default `/healthz`; not with `tcp`.",
    )
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200],
        min_length=1,
        description="HTTP checks: the statuses that count as healthy.",
    )
    interval: Duration = Field(
        default="5s", validate_default=True, description="Time between checks of an endpoint."
    )
    timeout: Duration = Field(
        default="1s",
        validate_default=True,
        description="A check not answered (or connected) in this time fails.",
    )
    healthy_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Passes in a row that bring an unhealthy endpoint back.",
    )
    unhealthy_threshold: int = Field(
        default=3, ge=1, le=100, description="Failures in a row that take an endpoint out."
    )

    @model_validator(mode="after")
    def _path_or_tcp(self) -> HealthCheck:
        if self.tcp and self.path is not None:
            raise ValueError("a TCP check has no 'path'; drop 'path' or 'tcp: true'")
        return self

    @property
    def http_path(self) -> str | None:
        """The path an HTTP check requests; None for a TCP check."""
        return None if self.tcp else (self.path or "/healthz")


class Cluster(_Model):
    """A named group of upstream endpoints that routes send requests to."""

    name: Name = Field(description="Unique name of the cluster. Required.")
    endpoints: list[EndpointEntry] = Field(
        min_length=1,
        description="Upstream `host:port` addresses (port 1-65535), or "
        "`{address: host:port, weight: N}`. Required, at least one; no duplicates.",
    )
    lb: _Lb = Field(
        default="round_robin",
        description="How an endpoint is chosen: `round_robin`, `random`, `least_request` "
        "(power of two choices), `ewma` (peak-EWMA latency), `ring_hash` or `maglev` "
        "(consistent hashing on `hash_on`).",
    )
    hash_on: HashOn | None = Field(
        default=None,
        description="The request key of `ring_hash` and `maglev` (required for them, refused "
        "for the others). Requests without the key are balanced at random.",
    )
    connect_timeout: Duration = Field(
        default="1s",
        validate_default=True,
        description="How long to wait for a TCP connection to an endpoint.",
    )
    pool: PoolConfig = Field(
        default_factory=PoolConfig,
        description="Reuse of upstream connections.",
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description="Active health checks; null = none (every endpoint is always healthy).",
    )
    panic_threshold_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="When fewer than this percentage of endpoints are healthy, balance over "
        "all of them (Envoy's panic mode); 0 turns it off.",
    )

    def weighted_endpoints(self) -> list[WeightedEndpoint]:
        """Every endpoint with its weight."""
        return [WeightedEndpoint(address=e) if isinstance(e, str) else e for e in self.endpoints]


# === the whole config ===


class MeshConfig(_Model):
    """A whole pymesh proxy configuration (a YAML or JSON document)."""

    admin: AdminConfig = Field(
        default_factory=AdminConfig,
        description="The admin API. Default: `{listen: 127.0.0.1:9901}`.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Threads of the data plane; null = one per CPU. Read at start only; the "
        "`--workers` flag wins over it.",
    )
    drain_timeout: Duration = Field(
        default="5s",
        validate_default=True,
        description="On SIGTERM/SIGINT, how long open connections may take to finish.",
    )
    listeners: list[Listener] = Field(
        default_factory=list,
        description="Addresses to accept connections on. Default: none.",
    )
    clusters: list[Cluster] = Field(
        default_factory=list,
        description="Upstream clusters that routes refer to by name. Default: none.",
    )


def route_name(route: Route, index: int) -> str:
    """The route's name, or its default ``route-<index>``."""
    return route.name if route.name is not None else f"route-{index}"


# === loading ===


def load_config(data: object) -> MeshConfig:
    """Validate plain data (as parsed from JSON or YAML) into a MeshConfig.

    Raises ConfigError listing every problem, each with a dotted ``loc``.
    """
    if isinstance(data, MeshConfig):
        cfg = data
    else:
        try:
            cfg = MeshConfig.model_validate(data)
        except ValidationError as e:
            raise _from_pydantic(e) from None
    check_config(cfg)
    return cfg


def load_config_file(path: str | Path) -> MeshConfig:
    """Read a YAML or JSON config file (told apart by content) and validate it."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError.single(FILE_LOC, f"cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError.single(FILE_LOC, f"not UTF-8 text (byte {e.start})") from None
    try:
        data = parse_document(text)
    except DocumentError as e:
        raise ConfigError.single(FILE_LOC, str(e)) from None
    if data is None:
        raise ConfigError.single(FILE_LOC, "the file is empty")
    return load_config(data)


def check_config(cfg: MeshConfig) -> None:
    """The checks that span fields: unique names, known cluster references, distinct listen
    addresses (port 0 excepted), route weights that do not all equal 0."""
    errors: list[ErrorItem] = []

    def err(loc: str, msg: str) -> None:
        errors.append(ErrorItem(loc=loc, msg=msg))

    clusters: dict[str, int] = {}
    for i, cluster in enumerate(cfg.clusters):
        if cluster.name in clusters:
            err(
                f"clusters.{i}.name",
                f"duplicate cluster name {cluster.name!r} (also clusters.{clusters[cluster.name]})",
            )
        else:
            clusters[cluster.name] = i
        _check_cluster(cluster, f"clusters.{i}", err)

    listener_names: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    for i, listener in enumerate(cfg.listeners):
        at = f"listeners.{i}"
        if listener.name in listener_names:
            first = listener_names[listener.name]
            err(f"{at}.name", f"duplicate listener name {listener.name!r} (also listeners.{first})")
        else:
            listener_names[listener.name] = i
        key = listen_key(listener.listen)
        if key[1] != 0:
            if key in addresses:
                err(
                    f"{at}.listen",
                    f"address {listener.listen} is also used by listeners.{addresses[key]}",
                )
            else:
                addresses[key] = i
        route_names: dict[str, int] = {}
        for j, route in enumerate(listener.routes):
            name = route_name(route, j)
            if name in route_names:
                err(
                    f"{at}.routes.{j}.name",
                    f"duplicate route name {name!r} (also {at}.routes.{route_names[name]})",
                )
            else:
                route_names[name] = j
            for k, dest in enumerate(route.to):
                if dest.cluster not in clusters:
                    err(f"{at}.routes.{j}.to.{k}.cluster", f"unknown cluster {dest.cluster!r}")
            if sum(dest.weight for dest in route.to) == 0:
                err(f"{at}.routes.{j}.to", "the weights sum to 0; at least one must be above 0")
    if errors:
        raise ConfigError(errors)


def _check_cluster(cluster: Cluster, at: str, err: Callable[[str, str], None]) -> None:
    """A cluster's checks across fields: its balancer and its key, duplicate endpoints."""
    if cluster.lb in HASHING_LBS and cluster.hash_on is None:
        err(
            f"{at}.hash_on",
            f"{cluster.lb} needs hash_on: {{header: NAME}}, {{cookie: NAME}} "
            "or {source_ip: true}",
        )
    if cluster.lb not in HASHING_LBS and cluster.hash_on is not None:
        err(f"{at}.hash_on", f"hash_on is only for ring_hash and maglev, not {cluster.lb}")
    seen: dict[str, int] = {}
    for j, e in enumerate(cluster.weighted_endpoints()):
        if e.address in seen:
            err(
                f"{at}.endpoints.{j}",
                f"duplicate endpoint {e.address} (also endpoints.{seen[e.address]})",
            )
        else:
            seen[e.address] = j


def _from_pydantic(exc: ValidationError) -> ConfigError:
    items: list[ErrorItem] = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in e["loc"]) or ROOT_LOC
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        items.append(ErrorItem(loc=loc, msg=msg))
    return ConfigError(items)
