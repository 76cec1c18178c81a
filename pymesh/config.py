"""The user-facing configuration: pydantic models, loading, and the checks across fields.

These models are the single source of truth for what a config file may say: every field has
a description and a default (or is required), unknown fields are refused, and the JSON Schema
and the admin API's OpenAPI document are generated from them. ``load_config`` and
``load_config_file`` answer a valid :class:`MeshConfig` or raise
:class:`~pymesh.errors.ConfigError` naming every bad field by its dotted path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
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

from pymesh._core import access_log_template_error, regex_error
from pymesh.addresses import (
    Endpoint,
    ListenAddress,
    check_endpoint,
    listen_key,
    split_host_port,
)
from pymesh.documents import DocumentError, parse_document
from pymesh.durations import Duration
from pymesh.errors import ConfigError, ErrorItem
from pymesh.policy import (
    ClusterPolicyFields,
    ListenerDefaults,
    MeshDefaults,
    RoutePolicyFields,
    policy_problems,
    union_branches_removed,
)
from pymesh.tracing import Tracing, tracing_problems

__all__ = [
    "DEFAULT_ACCESS_LOG_TEMPLATE",
    "FILE_LOC",
    "ROOT_LOC",
    "AccessLog",
    "AdminConfig",
    "AdminTls",
    "Certificate",
    "Cluster",
    "ClusterTls",
    "DirectResponse",
    "HashOn",
    "HeaderActions",
    "HeaderMatch",
    "HealthCheck",
    "Limits",
    "Listener",
    "ListenerTls",
    "MeshConfig",
    "PoolConfig",
    "QueryMatch",
    "Redirect",
    "Rewrite",
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


_Protocol = Literal["http", "tcp", "tls-passthrough"]
_ClusterProtocol = Literal["http1", "http2", "auto"]
_Alpn = Literal["h2", "http/1.1"]
_Lb = Literal["round_robin", "random", "least_request", "ewma", "ring_hash", "maglev"]

HASHING_LBS = frozenset({"ring_hash", "maglev"})
"""The balancers that place requests by a key, and so need ``hash_on``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# === admin ===


class AdminTls(_Model):
    """TLS for the admin API (required to listen on a non-loopback address)."""

    cert: str = Field(min_length=1, description="PEM file: the certificate chain, leaf first.")
    key: str = Field(min_length=1, description="PEM file: the private key.")


class AdminConfig(_Model):
    """Where the admin API (health, config, stats, metrics) listens."""

    listen: ListenAddress = Field(
        default="127.0.0.1:9901",
        description="IP address and port of the admin API; port 0 lets the OS choose. "
        "Read at start only; the `--admin` flag wins over it. A non-loopback address needs "
        "`tls`.",
    )
    tls: AdminTls | None = Field(
        default=None,
        description="Serve the admin API over HTTPS with this certificate. Read at start only.",
    )

    @model_validator(mode="after")
    def _remote_needs_tls(self) -> AdminConfig:
        host = split_host_port(self.listen)[0]
        if self.tls is None and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(
                f"listen: {self.listen} is not a loopback address; the admin API serves "
                "tokens and config, so a non-loopback address needs admin.tls"
            )
        return self


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


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    problem = regex_error(value)
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}")
    return value


_Regex = Annotated[
    str | None,
    AfterValidator(_check_regex),
    Field(
        description="A regular expression in the Rust `regex` crate's syntax (no look-around "
        "or back-references), matched against the whole value: it is anchored at both ends "
        "as if written `^(?:...)$`.",
    ),
]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    }
)


def _check_header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
    return value.lower()


def _check_editable_header(value: str) -> str:
    name = _check_header_name(value)
    if name in _RESERVED_HEADERS:
        raise ValueError(
            f"{value!r} is managed by the proxy and cannot be edited"
            + (" (use rewrite.host)" if name == "host" else "")
        )
    return name


def _check_header_value(value: str | None) -> str | None:
    if value is not None and not all(c == "\t" or " " <= c <= "~" for c in value):
        raise ValueError(
            f"{value!r} is not a header value (visible ASCII, spaces and tabs; no line breaks)"
        )
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]
"""A header name (an HTTP token), compared and sent in lowercase."""
_EditableHeader = Annotated[str, AfterValidator(_check_editable_header)]
_HeaderValue = Annotated[str, AfterValidator(_check_header_value)]


def _check_method(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not an HTTP method")
    if value != value.upper():
        raise ValueError(f"{value!r}: methods are case-sensitive; write {value.upper()!r}")
    return value


_Method = Annotated[str, AfterValidator(_check_method)]

_LABEL = re.compile(r"^[a-z0-9_-]+$")


def _host_problem(name: str) -> str | None:
    """Why ``name`` (lowercase, no wildcard) is not a host name or IP address, or None."""
    if name.startswith("[") and name.endswith("]"):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return "not an IPv6 address"
        return None
    if re.fullmatch(r".*:[0-9]*", name):
        return "give the host without a port (the port is not matched)"
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return "not a host name or IP address"
    return None


def _check_host_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    lower = value.lower()
    name = lower.removeprefix("*.")
    problem = _host_problem(name)
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}; write 'example.com' or '*.example.com'")
    return lower


_HostPattern = Annotated[str | None, AfterValidator(_check_host_pattern)]


def _check_authority(value: str | None) -> str | None:
    if value is None:
        return None
    host, port = value, None
    if m := re.fullmatch(r"(.*):([0-9]{1,5})", value):
        host, port = m.group(1), int(m.group(2))
    problem = _host_problem(host.lower())
    if problem is not None or (port is not None and not 1 <= port <= 65535):
        raise ValueError(f"{value!r} is not a host or host:port")
    return value


_Authority = Annotated[str | None, AfterValidator(_check_authority)]


def _check_query_name(value: str) -> str:
    if not value or any(c in value for c in "&=#") or not value.isprintable() or " " in value:
        raise ValueError(f"{value!r} is not a query parameter name (no '&', '=', '#' or spaces)")
    return value


def _check_query_value(value: str | None) -> str | None:
    if value is not None and (any(c in value for c in "&#") or not value.isprintable()):
        raise ValueError(f"{value!r} can never be a raw query value (no '&' or '#')")
    return value


class _ValueMatch(_Model):
    @model_validator(mode="after")
    def _exactly_one(self) -> _ValueMatch:
        values = (
            getattr(self, "exact", None),
            getattr(self, "regex", None),
            getattr(self, "present", None),
        )
        if sum(v is not None for v in values) != 1:
            raise ValueError("set exactly one of 'exact', 'regex' and 'present'")
        return self

    def key(self) -> tuple[str, str, object]:
        """What the condition tests, for comparing conditions."""
        name = getattr(self, "name", "")
        for kind in ("exact", "regex", "present"):
            value = getattr(self, kind, None)
            if value is not None:
                return (name, kind, value)
        return (name, "", None)  # pragma: no cover - _exactly_one forbids it


class HeaderMatch(_ValueMatch):
    """A condition on one request header."""

    name: HeaderName = Field(description="The header's name (case-insensitive). Required.")
    exact: Annotated[str | None, AfterValidator(_check_header_value)] = Field(
        default=None, description="Holds if any of the header's values equals this."
    )
    regex: _Regex = Field(default=None)
    present: bool | None = Field(
        default=None,
        description="true: holds if the header is there (any value); false: if it is not.",
    )


class QueryMatch(_ValueMatch):
    """A condition on one query parameter, compared raw (not percent-decoded); the
    parameter's first occurrence decides."""

    name: Annotated[str, AfterValidator(_check_query_name)] = Field(
        description="The parameter's name (case-sensitive). Required."
    )
    exact: Annotated[str | None, AfterValidator(_check_query_value)] = Field(
        default=None, description="Holds if the parameter's value equals this."
    )
    regex: _Regex = Field(default=None)
    present: bool | None = Field(
        default=None,
        description="true: holds if the parameter is there (`?flag` counts); false: if it is not.",
    )


def _mapping_to_exact(value: object) -> object:
    """``{name: value}`` is shorthand for ``[{name: name, exact: value}]``."""
    if isinstance(value, dict):
        return [
            {"name": k, "exact": str(v) if isinstance(v, int) and not isinstance(v, bool) else v}
            for k, v in value.items()
        ]
    return value


class RouteMatch(_Model):
    """Which requests a route takes; every condition given must hold. At most one of
    ``path``, ``path_prefix`` and ``path_regex``; none is ``path_prefix: /``."""

    host: _HostPattern = Field(
        default=None,
        description="`example.com` (exact) or `*.example.com` (any longer name ending in "
        "`.example.com`); compared case-insensitively with the request's host without its "
        "port. Default: any host.",
    )
    path: _Path = Field(
        default=None,
        description="Match requests whose path is exactly this (no query string); starts with /.",
    )
    path_prefix: _Path = Field(
        default=None,
        description="Match requests whose path starts with this string; starts with /. "
        "`/` matches every request.",
    )
    path_regex: _Regex = Field(default=None)
    methods: list[_Method] = Field(
        default_factory=list,
        description="Request methods (case-sensitive, e.g. `GET`); any one will do. "
        "Default: any method.",
    )
    headers: Annotated[list[HeaderMatch], BeforeValidator(_mapping_to_exact)] = Field(
        default_factory=list,
        description="Header conditions: `{name: value}` for exact values, or a list of "
        "`{name, exact | regex | present}`. Default: none.",
    )
    query: Annotated[list[QueryMatch], BeforeValidator(_mapping_to_exact)] = Field(
        default_factory=list,
        description="Query parameter conditions, in the same two forms as `headers`. "
        "Default: none.",
    )

    sni: str | None = Field(
        default=None,
        description="`tls-passthrough` listeners only: the TLS server name (exact, "
        "`*.suffix`, or `*` for any, including none).",
    )

    @model_validator(mode="after")
    def _checks(self) -> RouteMatch:
        if self.sni is not None:
            others = (self.path, self.path_prefix, self.path_regex, self.host)
            if any(o is not None for o in others) or self.methods or self.headers or self.query:
                raise ValueError("'sni' matches alone: a TLS passthrough route sees no HTTP")
            _check_sni(self.sni)
        if sum(p is not None for p in (self.path, self.path_prefix, self.path_regex)) > 1:
            raise ValueError("set at most one of 'path', 'path_prefix' and 'path_regex'")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("a method is listed twice in 'methods'")
        return self

    def path_condition(self) -> tuple[str, str]:
        """``(kind, value)`` of the path condition, ``("path_prefix", "/")`` by default."""
        if self.path is not None:
            return ("path", self.path)
        if self.path_regex is not None:
            return ("path_regex", self.path_regex)
        return ("path_prefix", self.path_prefix if self.path_prefix is not None else "/")

    def is_catch_all(self) -> bool:
        """Whether this match takes every request."""
        return (
            self.path_condition() == ("path_prefix", "/")
            and self.sni is None
            and self.host is None
            and not self.methods
            and not self.headers
            and not self.query
        )


_SNI_LABEL = re.compile(r"^[A-Za-z0-9-]+$")


def _check_sni(value: str) -> None:
    if value == "*":
        return
    name = value.removeprefix("*.")
    if not name or not all(_SNI_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"sni {value!r} is not a server name, a *.suffix wildcard, or '*'")


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


class Rewrite(_Model):
    """Changes to a forwarded request before it goes upstream."""

    path_prefix: _Path = Field(
        default=None,
        description="Replaces the part of the path the route matched: its `path_prefix` "
        "(or its whole `path`); the query is kept. Not with `path_regex`.",
    )
    host: _Authority = Field(
        default=None, description="Sets the `Host` (authority) sent upstream: `host[:port]`."
    )


class HeaderActions(_Model):
    """Header edits, applied in this order: `remove`, `set`, `add`."""

    set: dict[_EditableHeader, _HeaderValue] = Field(
        default_factory=dict, description="Replace every value of each header with this one."
    )
    add: dict[_EditableHeader, _HeaderValue] = Field(
        default_factory=dict, description="Append a value, keeping the header's others."
    )
    remove: list[_EditableHeader] = Field(
        default_factory=list, description="Remove every value of each header."
    )

    def is_empty(self) -> bool:
        """Whether there is nothing to do."""
        return not (self.set or self.add or self.remove)


MAX_DIRECT_BODY = 64 * 1024
"""The largest `direct_response.body`, in bytes (UTF-8)."""


def _check_body(value: str) -> str:
    if len(value.encode()) > MAX_DIRECT_BODY:
        raise ValueError(f"the body is longer than {MAX_DIRECT_BODY} bytes")
    return value


class DirectResponse(_Model):
    """Answer the request without an upstream."""

    status: int = Field(ge=200, le=599, description="The response status (200-599). Required.")
    body: Annotated[str, AfterValidator(_check_body)] = Field(
        default="",
        description="The response body, sent as `text/plain; charset=utf-8` (at most 64 KiB).",
    )


class Redirect(_Model):
    """Answer with a redirect to the request's URL with some parts replaced (as Envoy's)."""

    status: Literal[301, 302, 303, 307, 308] = Field(
        default=301, description="The redirect status: 301, 302, 303, 307 or 308."
    )
    scheme: Literal["http", "https"] | None = Field(
        default=None, description="Replaces the scheme. Default: the request's."
    )
    host: _Authority = Field(
        default=None,
        description="Replaces the authority (`host` or `host:port`). Default: the request's.",
    )
    path: _Path = Field(default=None, description="Replaces the whole path.")
    prefix_rewrite: _Path = Field(
        default=None,
        description="Replaces the part of the path the route matched: its `path_prefix` "
        "(or its whole `path`). Not with `path`, nor with a `path_regex` match.",
    )
    strip_query: bool = Field(
        default=False, description="Drop the query string instead of keeping it."
    )

    @model_validator(mode="after")
    def _one_path(self) -> Redirect:
        if self.path is not None and self.prefix_rewrite is not None:
            raise ValueError("set at most one of 'path' and 'prefix_rewrite'")
        return self


class Route(RoutePolicyFields):
    """Take matching requests and do exactly one of: forward them to clusters split by
    weight (`to`), answer them (`direct_response`), or redirect them (`redirect`). A route
    that forwards may carry traffic policies (pymesh/policy.py)."""

    name: Name | None = Field(
        default=None,
        description="Unique within the listener; used in metrics. Default: `route-<index>`.",
    )
    match: RouteMatch = Field(
        default_factory=lambda: RouteMatch(path_prefix="/"),
        description="Which requests this route takes. Default: every request (`{path_prefix: /}`).",
    )
    to: Annotated[list[WeightedCluster], Field(min_length=1)] | None = Field(
        default=None,
        description="Destination clusters with weights, at least one.",
    )
    direct_response: DirectResponse | None = Field(
        default=None, description="Answer without an upstream."
    )
    redirect: Redirect | None = Field(default=None, description="Answer with a redirect.")
    rewrite: Rewrite | None = Field(
        default=None, description="Only with `to`: path-prefix and host rewrites."
    )
    request_headers: HeaderActions = Field(
        default_factory=HeaderActions,
        description="Only with `to`: edits of the request's headers before it goes upstream.",
    )
    response_headers: HeaderActions = Field(
        default_factory=HeaderActions,
        description="Edits of the response's headers, whoever answered (upstream, "
        "`direct_response`, `redirect`, or the proxy's own 502/503).",
    )

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        actions = (self.to, self.direct_response, self.redirect)
        if sum(a is not None for a in actions) != 1:
            raise ValueError("set exactly one of 'to', 'direct_response' and 'redirect'")
        return self


def _default_alpn() -> list[_Alpn]:
    return ["h2", "http/1.1"]


class Certificate(_Model):
    """A certificate chain and its private key, as PEM files."""

    cert: str = Field(min_length=1, description="PEM file: the certificate chain, leaf first.")
    key: str = Field(min_length=1, description="PEM file: the private key (PKCS#8, #1 or SEC1).")


class ListenerTls(_Model):
    """TLS termination: give ``cert`` and ``key``, or ``certificates`` to serve several names
    (the first whose names cover the client's SNI is used; the first is the default)."""

    cert: str | None = Field(default=None, description="PEM certificate chain (one cert).")
    key: str | None = Field(default=None, description="PEM private key (with `cert`).")
    certificates: list[Certificate] = Field(
        default_factory=list, description="Several certificates, chosen by SNI."
    )
    alpn: list[_Alpn] = Field(
        default_factory=_default_alpn,
        min_length=1,
        description="ALPN protocols offered, most preferred first. Default `[h2, http/1.1]`.",
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description='Oldest TLS version accepted: `"1.2"` or `"1.3"`.'
    )
    client_ca: str | None = Field(
        default=None,
        description="PEM file of CAs that client certificates must chain to; a presented "
        "certificate that does not is refused. Default: client certificates are not asked for.",
    )
    require_client_certificate: bool = Field(
        default=False,
        description="With `client_ca`: refuse clients that present no certificate.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ListenerTls:
        single = self.cert is not None or self.key is not None
        if single and self.certificates:
            raise ValueError("give either 'cert' and 'key' or 'certificates', not both")
        if single and (self.cert is None or self.key is None):
            raise ValueError("'cert' and 'key' go together")
        if not single and not self.certificates:
            raise ValueError("give 'cert' and 'key', or 'certificates'")
        if self.require_client_certificate and self.client_ca is None:
            raise ValueError("'require_client_certificate' needs 'client_ca'")
        return self

    def all_certificates(self) -> list[Certificate]:
        if self.cert is not None and self.key is not None:
            return [Certificate(cert=self.cert, key=self.key)]
        return list(self.certificates)


class Limits(_Model):
    """What one downstream client may send an `http` listener. The defaults follow Envoy's
    edge best practices; every refusal is counted in
    `pymesh_downstream_protocol_errors_total{listener,kind}`."""

    max_request_headers: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Header fields in one request; more gets 431.",
    )
    max_request_header_bytes: int = Field(
        default=60 * 1024,
        ge=8192,
        le=16 * 1024 * 1024,
        description="Bytes of the request head (request line and headers; HTTP/2: the "
        "decoded header list); more gets 431. At least 8192. Default 61440 (60 KiB).",
    )
    header_read_timeout: Duration = Field(
        default="30s",
        validate_default=True,
        description="An HTTP/1 client must send a whole request head within this, counted from "
        "when the connection starts waiting for it (so it also bounds an idle HTTP/1 "
        "keep-alive connection); a slower one is disconnected.",
    )
    idle_timeout: Duration = Field(
        default="1h",
        validate_default=True,
        description="A connection with no request in flight and no bytes either way for this "
        "long is closed (HTTP/2: GOAWAY first).",
    )
    max_concurrent_streams: int = Field(
        default=100,
        ge=1,
        le=2**31 - 1,
        description="HTTP/2 streams one connection may have open; more are refused "
        "(RST_STREAM REFUSED_STREAM) while the others proceed.",
    )
    max_request_body_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Request body bytes; more gets 413 (at once when Content-Length says so, "
        "else when the streamed body passes it). Default: unlimited.",
    )


DEFAULT_ACCESS_LOG_TEMPLATE = (
    '{downstream_peer} [{time}] "{method} {authority}{path} {protocol}" {status} {flags} '
    '{request_bytes} {response_bytes} {duration_ms} "{user_agent}" {upstream} {attempts} '
    "{request_id}"
)
"""The `text` access-log line when no template is given: the combined log's shape, with the
proxy's own fields (flags, upstream, attempts) and the request id."""


def _check_template(value: str | None) -> str | None:
    if value is None:
        return None
    problem = access_log_template_error(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class AccessLog(_Model):
    """One line per HTTP request, written off the request path through a bounded queue
    (full: the line is dropped and counted in `pymesh_access_log_dropped_total`)."""

    format: Literal["json", "text"] = Field(
        default="json",
        description="`json`: one JSON object per line, with every field; `text`: the `template`.",
    )
    template: Annotated[str | None, AfterValidator(_check_template)] = Field(
        default=None,
        description="`text` only: the line, with `{field}` placeholders (`{{` and `}}` for "
        "braces); unknown values print as `-`. Default: a combined-log-like line "
        f"(`{DEFAULT_ACCESS_LOG_TEMPLATE}`).",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="The file lines are appended to (created if absent; a FIFO needs a reader "
        "when the config is applied); omitted or `-`: the process's standard output.",
    )
    sample_percent: float = Field(
        default=100,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Share of requests logged, 0-100, drawn per request. Default 100.",
    )

    def effective_template(self) -> str | None:
        """The template the core gets: None for json, the default for text without one."""
        if self.format == "json":
            return None
        return self.template if self.template is not None else DEFAULT_ACCESS_LOG_TEMPLATE


class Listener(_Model):
    """An address the proxy accepts connections on, and its routes."""

    name: Name = Field(description="Unique name of the listener. Required.")
    listen: ListenAddress = Field(
        description="IP address and port to accept connections on (`127.0.0.1:8080`, "
        "`[::1]:8080`); port 0 lets the OS choose. Required."
    )
    protocol: _Protocol = Field(
        default="http",
        description="`http`: HTTP/1.1 and HTTP/2 on one port (h2c by prior knowledge, h2 by "
        "ALPN with `tls`); `tcp`: raw bytes to the clusters in `to`; `tls-passthrough`: TLS "
        "routed by the ClientHello's server name (`routes` with `match.sni`), not terminated.",
    )
    routes: list[Route] = Field(
        default_factory=list,
        description="Routes in order; the first that matches takes the request (a connection, "
        "for `tls-passthrough`). An HTTP request no route matches gets 404. Default: none.",
    )
    tls: ListenerTls | None = Field(
        default=None, description="`http` listeners: terminate TLS. Default: plaintext."
    )
    to: list[WeightedCluster] = Field(
        default_factory=list,
        description="`tcp` listeners (required there): destination clusters with weights.",
    )
    idle_timeout: Duration = Field(
        default="1h",
        validate_default=True,
        description="`tcp` and `tls-passthrough` listeners: a connection with no bytes either "
        "way for this long is closed.",
    )
    defaults: ListenerDefaults | None = Field(
        default=None,
        description="`http` listeners: policy defaults for the listener's routes "
        "(`{route: {timeout, retry, ...}}`); they override the mesh's `defaults.route`.",
    )
    limits: Limits = Field(
        default_factory=Limits,
        description="`http` listeners: limits on what a client may send (header count and "
        "size, header-read and idle timeouts, HTTP/2 streams, body size).",
    )
    access_log: AccessLog | None = Field(
        default=None,
        description="`http` listeners: log every request (or a sampled share) as JSON or text "
        "to a file or stdout. Default: off.",
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


class ClusterTls(_Model):
    """TLS from the proxy to a cluster's endpoints."""

    sni: str | None = Field(
        default=None,
        description="Server name sent and verified. Default: the endpoint's host.",
    )
    ca: str | None = Field(
        default=None, description="PEM file of trusted CAs. Default: the system's roots."
    )
    alpn: list[_Alpn] | None = Field(
        default=None,
        min_length=1,
        description="ALPN protocols offered. Default: from `protocol` (`http1`: http/1.1, "
        "`http2`: h2, `auto`: both).",
    )
    client_certificate: Certificate | None = Field(
        default=None, description="Certificate and key presented for mutual TLS."
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


class Cluster(ClusterPolicyFields):
    """A named group of upstream endpoints that routes send requests to. It may carry a
    circuit breaker and outlier detection (pymesh/policy.py)."""

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

    protocol: _ClusterProtocol = Field(
        default="http1",
        description="`http1`; `http2` (h2c by prior knowledge over plaintext, h2 over TLS); "
        "`auto`: what TLS ALPN picks (HTTP/1.1 over plaintext). With `tls.alpn` and no "
        "`protocol`, the protocol follows the ALPN list.",
    )
    tls: ClusterTls | None = Field(
        default=None, description="Originate TLS to the endpoints. Default: plaintext."
    )

    @model_validator(mode="after")
    def _alpn_fits_protocol(self) -> Cluster:
        if self.tls is None or self.tls.alpn is None:
            return self
        implied = _protocol_for_alpn(self.tls.alpn)
        if "protocol" in self.model_fields_set and self.protocol != implied:
            raise ValueError(
                f"tls.alpn {self.tls.alpn} means protocol {implied!r}, not {self.protocol!r}"
            )
        return self

    def effective_protocol(self) -> str:
        """The protocol, or the one ``tls.alpn`` implies when no protocol was given."""
        explicit = "protocol" in self.model_fields_set
        if self.tls is not None and self.tls.alpn is not None and not explicit:
            return _protocol_for_alpn(self.tls.alpn)
        return self.protocol

    def weighted_endpoints(self) -> list[WeightedEndpoint]:
        """Every endpoint with its weight."""
        return [WeightedEndpoint(address=e) if isinstance(e, str) else e for e in self.endpoints]


def _protocol_for_alpn(alpn: Sequence[str]) -> str:
    if set(alpn) == {"h2", "http/1.1"}:
        return "auto"
    return "http2" if alpn == ["h2"] else "http1"


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
    defaults: MeshDefaults = Field(
        default_factory=MeshDefaults,
        description="Mesh-wide policy defaults: `route` (timeout, retry, rate_limit, fault, "
        "mirror...) and `cluster` (circuit_breaker, outlier_detection); listeners, routes "
        "and clusters override them field by field.",
    )
    tracing: Tracing | None = Field(
        default=None,
        description="Distributed tracing (W3C trace context and B3 propagation, "
        "`x-request-id`, spans exported over OTLP/HTTP). Default: off.",
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
        _check_cluster_files(cluster, f"clusters.{i}", err)

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
        _check_protocol(listener, at, err)
        for k, dest in enumerate(listener.to):
            if dest.cluster not in clusters:
                err(f"{at}.to.{k}.cluster", f"unknown cluster {dest.cluster!r}")
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
            if route.to is not None:
                for k, dest in enumerate(route.to):
                    if dest.cluster not in clusters:
                        err(f"{at}.routes.{j}.to.{k}.cluster", f"unknown cluster {dest.cluster!r}")
                if sum(dest.weight for dest in route.to) == 0:
                    err(f"{at}.routes.{j}.to", "the weights sum to 0; at least one must be above 0")
            for loc, msg in _route_action_problems(route):
                err(f"{at}.routes.{j}.{loc}", msg)
        for loc, msg in _shadowed_routes(listener.routes, f"{at}.routes"):
            err(loc, msg)
    for loc, msg in policy_problems(cfg):
        err(loc, msg)
    for loc, msg in tracing_problems(cfg):
        err(loc, msg)
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


def _check_file(path: str, loc: str, err: Callable[[str, str], None]) -> None:
    """A file the core will read when the config is applied: say so now if it cannot."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        err(loc, f"cannot read {path}: {e.strerror or e}")


def _check_cluster_files(cluster: Cluster, at: str, err: Callable[[str, str], None]) -> None:
    if cluster.tls is None:
        return
    if cluster.tls.ca is not None:
        _check_file(cluster.tls.ca, f"{at}.tls.ca", err)
    if cluster.tls.client_certificate is not None:
        _check_file(cluster.tls.client_certificate.cert, f"{at}.tls.client_certificate.cert", err)
        _check_file(cluster.tls.client_certificate.key, f"{at}.tls.client_certificate.key", err)


def _check_protocol(listener: Listener, at: str, err: Callable[[str, str], None]) -> None:
    """What each listener protocol takes: routes by path (http), `to` (tcp), routes by SNI
    (tls-passthrough); TLS termination on http only."""
    proto = listener.protocol
    if listener.tls is not None:
        t = listener.tls
        if t.cert is not None and t.key is not None:
            _check_file(t.cert, f"{at}.tls.cert", err)
            _check_file(t.key, f"{at}.tls.key", err)
        for n, c in enumerate(t.certificates):
            _check_file(c.cert, f"{at}.tls.certificates.{n}.cert", err)
            _check_file(c.key, f"{at}.tls.certificates.{n}.key", err)
        if t.client_ca is not None:
            _check_file(t.client_ca, f"{at}.tls.client_ca", err)
    if proto != "tcp" and listener.to:
        err(f"{at}.to", f"only a tcp listener takes 'to' (this one is {proto})")
    if proto != "http" and "limits" in listener.model_fields_set:
        err(f"{at}.limits", f"only an http listener takes 'limits' (this one is {proto})")
    if proto != "http" and listener.access_log is not None:
        err(f"{at}.access_log", f"only an http listener takes 'access_log' (this one is {proto})")
    log = listener.access_log
    if log is not None and log.format == "json" and log.template is not None:
        err(f"{at}.access_log.template", "only a text access log takes a template")
    if proto != "http" and listener.tls is not None:
        err(f"{at}.tls", f"only an http listener terminates TLS (this one is {proto})")
    if proto == "tcp":
        if listener.routes:
            err(f"{at}.routes", "a tcp listener has no routes; give 'to'")
        if not listener.to:
            err(f"{at}.to", "a tcp listener needs at least one cluster in 'to'")
        elif sum(d.weight for d in listener.to) == 0:
            err(f"{at}.to", "the weights sum to 0; at least one must be above 0")
    for j, route in enumerate(listener.routes):
        if proto == "tls-passthrough" and route.match.sni is None:
            err(f"{at}.routes.{j}.match.sni", "a tls-passthrough route matches by 'sni'")
        if proto == "tls-passthrough" and route.to is None:
            err(f"{at}.routes.{j}.to", "a tls-passthrough route forwards: give 'to'")
        if proto == "http" and route.match.sni is not None:
            err(f"{at}.routes.{j}.match.sni", "only tls-passthrough routes match by 'sni'")


def _route_action_problems(route: Route) -> list[tuple[str, str]]:
    """Actions that do not fit the route: ``(loc under the route, msg)``."""
    problems: list[tuple[str, str]] = []
    if route.to is None:
        if route.rewrite is not None:
            problems.append(("rewrite", "applies only to forwarded requests (a route with 'to')"))
        if not route.request_headers.is_empty():
            problems.append(
                ("request_headers", "applies only to forwarded requests (a route with 'to')")
            )
    if route.match.path_regex is not None:
        no_prefix = "a path_regex match has no prefix to rewrite"
        if route.rewrite is not None and route.rewrite.path_prefix is not None:
            problems.append(("rewrite.path_prefix", no_prefix))
        if route.redirect is not None and route.redirect.prefix_rewrite is not None:
            problems.append(("redirect.prefix_rewrite", no_prefix))
    return problems


# === unreachable routes ===


def _host_covers(earlier: str, later: str) -> bool:
    """Whether every host ``later`` matches is matched by ``earlier`` (both lowercase)."""
    if earlier == later:
        return True
    if not earlier.startswith("*."):
        return False
    suffix = earlier[1:]  # ".example.com"
    return (
        later.removeprefix("*.").endswith(suffix)
        if later.startswith("*.")
        else (later.endswith(suffix) and len(later) > len(suffix))
    )


def _conditions_imply(
    earlier: list[HeaderMatch] | list[QueryMatch], later: list[HeaderMatch] | list[QueryMatch]
) -> bool:
    """Whether ``later``'s conditions imply each of ``earlier``'s."""
    later_keys = {c.key() for c in later}
    for cond in earlier:
        if cond.key() in later_keys:
            continue
        # "present" is implied by any condition on the same name other than "absent".
        implied = cond.present is True and any(
            c.name == cond.name and c.present is not False for c in later
        )
        if not implied:
            return False
    return True


def _covers(earlier: RouteMatch, later: RouteMatch) -> bool:
    """Whether every request ``later`` matches is matched by ``earlier`` (conservatively:
    False when unsure)."""
    if earlier.sni is not None or later.sni is not None:
        return earlier.sni in (later.sni, "*")
    if earlier.host is not None and (
        later.host is None or not _host_covers(earlier.host, later.host)
    ):
        return False
    if earlier.methods and not (later.methods and set(later.methods) <= set(earlier.methods)):
        return False
    if not _conditions_imply(earlier.headers, later.headers):
        return False
    if not _conditions_imply(earlier.query, later.query):
        return False
    e_kind, e_value = earlier.path_condition()
    l_kind, l_value = later.path_condition()
    if e_kind == "path_prefix":
        return e_value == "/" or (l_kind != "path_regex" and l_value.startswith(e_value))
    return (e_kind, e_value) == (l_kind, l_value)


def _shadowed_routes(routes: list[Route], at: str) -> list[tuple[str, str]]:
    """Routes an earlier route of the same listener takes every request from:
    ``(f"{at}.<index>.match", msg naming the earlier route's loc)``, ``at`` being the loc
    of the listener's routes."""
    problems: list[tuple[str, str]] = []
    for j, later in enumerate(routes):
        for i, earlier in enumerate(routes[:j]):
            if _covers(earlier.match, later.match):
                what = (
                    "matches every request"
                    if earlier.match.is_catch_all()
                    else "matches every request this one does"
                )
                problems.append(
                    (
                        f"{at}.{j}.match",
                        f"this route can never match: {at}.{i} ({route_name(earlier, i)!r}), "
                        f"earlier in the list, {what}",
                    )
                )
                break
    return problems


def _from_pydantic(exc: ValidationError) -> ConfigError:
    items: list[ErrorItem] = []
    for e in exc.errors(include_url=False, include_input=False):
        # Policy fields are "X or false": say what is wrong with X, without the branch names.
        parts = union_branches_removed(e["loc"])
        if parts is None:
            continue
        # A bad mapping key is reported at the key itself, without pydantic's "[key]" part.
        loc = ".".join(str(part) for part in parts if part != "[key]") or ROOT_LOC
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        items.append(ErrorItem(loc=loc, msg=msg))
    return ConfigError(items)
