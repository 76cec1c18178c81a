"""The configuration models, their checks, loading and the snapshot (pure Python, no Core)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pymesh.config import FILE_LOC, ROOT_LOC, MeshConfig, load_config, load_config_file
from pymesh.durations import format_duration, parse_duration, to_millis
from pymesh.errors import ConfigError
from pymesh.snapshot import to_snapshot_json


def minimal(**overrides: Any) -> dict[str, Any]:
    """A valid config: one listener routing everything to one cluster."""
    cfg: dict[str, Any] = {
        "listeners": [
            {"name": "ingress", "listen": "127.0.0.1:0", "routes": [{"to": [{"cluster": "a"}]}]}
        ],
        "clusters": [{"name": "a", "endpoints": ["127.0.0.1:9001"]}],
    }
    cfg.update(overrides)
    return cfg


def errors_of(data: object) -> dict[str, str]:
    """loc -> msg of every problem ``load_config`` finds in ``data``."""
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return {e["loc"]: e["msg"] for e in info.value.errors}


# === durations ===


@pytest.mark.parametrize(
    ("text", "millis", "shown"),
    [
        ("250ms", 250, "250ms"),
        ("2s", 2000, "2s"),
        ("1.5s", 1500, "1500ms"),
        ("1m", 60_000, "1m"),
        ("90s", 90_000, "90s"),
        ("120s", 120_000, "2m"),
        ("1h", 3_600_000, "1h"),
        ("0.5m", 30_000, "30s"),
    ],
)
def test_duration_parse_and_format(text: str, millis: int, shown: str) -> None:
    value = parse_duration(text)
    assert to_millis(value) == millis
    assert format_duration(value) == shown
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text", ["", "5", "s", "-1s", "1 d", "1d", "1.s", "0s", "0ms", "0.5ms"])
def test_duration_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_upper_bound() -> None:
    assert parse_duration("168h") == timedelta(days=7)
    with pytest.raises(ValueError, match="at most"):
        parse_duration("169h")


def test_duration_fields_validate_and_serialise_as_strings() -> None:
    cfg = load_config({"drain_timeout": "1.5s"})
    assert cfg.drain_timeout == timedelta(milliseconds=1500)
    assert cfg.model_dump(mode="json")["drain_timeout"] == "1500ms"
    assert errors_of({"drain_timeout": 5}).keys() == {"drain_timeout"}
    assert errors_of({"drain_timeout": "0s"})["drain_timeout"].startswith("duration must be")


# === defaults ===

NO_ROUTE_POLICY = dict.fromkeys(
    ["timeout", "per_try_timeout", "idle_timeout", "retry", "rate_limit", "fault", "mirror"]
)
NO_CLUSTER_POLICY = {"circuit_breaker": None, "outlier_detection": None}
# The snapshot's policy of a route that gives none: the built-in 15 s timeout, nothing else.
BUILTIN_ROUTE_SNAPSHOT = {
    "timeout_ms": 15000,
    "per_try_timeout_ms": None,
    "idle_timeout_ms": None,
    "retry": None,
    "rate_limit": None,
    "fault": None,
    "mirror": None,
}


def test_defaults() -> None:
    assert MeshConfig().model_dump(mode="json") == {
        "admin": {"listen": "127.0.0.1:9901", "tls": None},
        "workers": None,
        "drain_timeout": "5s",
        "listeners": [],
        "clusters": [],
        # Policy defaults (pymesh/policy.py): none given, so the built-in ones apply.
        "defaults": {"route": NO_ROUTE_POLICY, "cluster": NO_CLUSTER_POLICY},
        "tracing": None,
    }
    cfg = load_config(minimal())
    listener = cfg.model_dump(mode="json")["listeners"][0]
    assert listener["protocol"] == "http"
    assert listener["routes"][0] == {
        **NO_ROUTE_POLICY,
        "name": None,
        "match": {
            "host": None,
            "path": None,
            "path_prefix": "/",
            "path_regex": None,
            "methods": [],
            "headers": [],
            "query": [],
            "sni": None,
        },
        "to": [{"cluster": "a", "weight": 1}],
        "direct_response": None,
        "redirect": None,
        "rewrite": None,
        "request_headers": {"set": {}, "add": {}, "remove": []},
        "response_headers": {"set": {}, "add": {}, "remove": []},
    }
    assert cfg.model_dump(mode="json")["clusters"][0] == {
        "name": "a",
        "endpoints": ["127.0.0.1:9001"],
        "lb": "round_robin",
        "hash_on": None,
        "connect_timeout": "1s",
        "pool": {"max_idle_per_endpoint": 1024, "idle_timeout": "90s"},
        "health_check": None,
        "panic_threshold_percent": 50,
        "protocol": "http1",
        "tls": None,
        **NO_CLUSTER_POLICY,
    }


def test_dump_round_trips() -> None:
    cfg = load_config(minimal(drain_timeout="250ms", workers=2))
    again = load_config(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg


# === field checks ===


def test_unknown_fields_are_refused_with_their_path() -> None:
    data = minimal(extra=1)
    data["clusters"][0]["pool"] = {"idle": "1s"}
    assert errors_of(data) == {
        "extra": "Extra inputs are not permitted",
        "clusters.0.pool.idle": "Extra inputs are not permitted",
    }


def test_not_a_mapping() -> None:
    assert errors_of([1, 2]).keys() == {ROOT_LOC}


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "[::]:65535", "10.1.2.3:1"]
)
def test_listen_addresses_accepted(listen: str) -> None:
    data = minimal()
    data["listeners"][0]["listen"] = listen
    assert load_config(data).listeners[0].listen == listen


@pytest.mark.parametrize(
    "listen",
    ["localhost:8080", "127.0.0.1", "127.0.0.1:65536", "::1:8080", "[127.0.0.1]:80", ":80",
     "127.0.0.1:-1", "[::1]8080", "127.0.0.1:80a"],
)  # fmt: skip
def test_listen_addresses_refused(listen: str) -> None:
    data = minimal()
    data["listeners"][0]["listen"] = listen
    assert errors_of(data).keys() == {"listeners.0.listen"}


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("127.0.0.1:9001", True),
        ("[::1]:9001", True),
        ("api.internal:80", True),
        ("localhost:65535", True),
        ("127.0.0.1:0", False),
        ("127.0.0.1", False),
        ("bad_host:80", False),
        ("-x:80", False),
        ("[nope]:80", False),
        ("1.2.3.999:80", False),
    ],
)
def test_endpoints(endpoint: str, ok: bool) -> None:
    data = minimal()
    data["clusters"][0]["endpoints"] = ["127.0.0.1:1", endpoint]
    if ok:
        assert load_config(data).clusters[0].endpoints[1] == endpoint
    else:
        assert errors_of(data).keys() == {"clusters.0.endpoints.1"}


def test_names() -> None:
    data = minimal()
    data["listeners"][0]["name"] = "in gress"
    data["clusters"][0]["name"] = ""
    assert errors_of(data).keys() == {"listeners.0.name", "clusters.0.name"}


def test_unknown_lb_and_protocols() -> None:
    data = minimal()
    data["clusters"][0]["lb"] = "fastest"
    assert "'round_robin'" in errors_of(data)["clusters.0.lb"]
    data = minimal()
    data["listeners"][0]["protocol"] = "gopher"
    assert "listeners.0.protocol" in errors_of(data)
    data = minimal()
    data["clusters"][0]["protocol"] = "spdy"
    assert "clusters.0.protocol" in errors_of(data)


@pytest.mark.parametrize(
    ("match", "loc"),
    [
        ({"path": "/a", "path_regex": "/"}, "listeners.0.routes.0.match"),
        ({"path": "/a", "path_prefix": "/"}, "listeners.0.routes.0.match"),
        ({"path": "a"}, "listeners.0.routes.0.match.path"),
        ({"path_prefix": "api"}, "listeners.0.routes.0.match.path_prefix"),
        ({"path": "/a b"}, "listeners.0.routes.0.match.path"),
    ],
)
def test_match_needs_exactly_one_absolute_path(match: dict[str, str], loc: str) -> None:
    data = minimal()
    data["listeners"][0]["routes"][0]["match"] = match
    assert errors_of(data).keys() == {loc}


def test_route_needs_a_destination_and_weights_in_range() -> None:
    data = minimal()
    data["listeners"][0]["routes"] = [{"to": []}, {"to": [{"cluster": "a", "weight": -1}]}]
    assert errors_of(data).keys() == {
        "listeners.0.routes.0.to",
        "listeners.0.routes.1.to.0.weight",
    }


def test_cluster_needs_an_endpoint() -> None:
    data = minimal()
    data["clusters"][0]["endpoints"] = []
    assert errors_of(data).keys() == {"clusters.0.endpoints"}


# === checks across fields ===


def test_duplicate_listener_and_cluster_names() -> None:
    data = minimal()
    data["listeners"].append({"name": "ingress", "listen": "127.0.0.1:0"})
    data["clusters"].append({"name": "a", "endpoints": ["127.0.0.1:9002"]})
    errors = errors_of(data)
    assert errors.keys() == {"listeners.1.name", "clusters.1.name"}
    assert "duplicate" in errors["listeners.1.name"]


def test_duplicate_route_names_count_the_default_names() -> None:
    data = minimal()
    to = [{"cluster": "a"}]
    data["listeners"][0]["routes"] = [
        {"match": {"path": "/a"}, "to": to},
        {"name": "route-0", "match": {"path": "/b"}, "to": to},
    ]
    assert errors_of(data).keys() == {"listeners.0.routes.1.name"}


def test_unknown_cluster_reference() -> None:
    data = minimal()
    data["listeners"][0]["routes"][0]["to"] = [{"cluster": "a"}, {"cluster": "b", "weight": 2}]
    assert errors_of(data) == {"listeners.0.routes.0.to.1.cluster": "unknown cluster 'b'"}


def test_duplicate_listen_address_except_port_0() -> None:
    data = minimal()
    data["listeners"] = [
        {"name": "a", "listen": "127.0.0.1:0"},
        {"name": "b", "listen": "127.0.0.1:0"},
        {"name": "c", "listen": "[::1]:8080"},
        {"name": "d", "listen": "[0:0::1]:8080"},
    ]
    assert errors_of(data).keys() == {"listeners.3.listen"}


def test_weights_summing_to_zero() -> None:
    data = minimal()
    data["listeners"][0]["routes"][0]["to"] = [{"cluster": "a", "weight": 0}]
    assert errors_of(data).keys() == {"listeners.0.routes.0.to"}
    data["listeners"][0]["routes"][0]["to"].append({"cluster": "a", "weight": 1})
    assert load_config(data).listeners[0].routes[0].to[1].weight == 1


def test_every_problem_is_reported_at_once() -> None:
    data = minimal()
    data["listeners"].append({"name": "ingress", "listen": "127.0.0.1:0"})
    data["listeners"][0]["routes"][0]["to"] = [{"cluster": "nope", "weight": 0}]
    assert errors_of(data).keys() == {
        "listeners.1.name",
        "listeners.0.routes.0.to.0.cluster",
        "listeners.0.routes.0.to",
    }


def test_config_error_text() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"workers": 0, "x": 1})
    assert isinstance(info.value, ValueError)
    assert str(info.value).splitlines() == [
        "invalid config (2 errors):",
        "  workers: Input should be greater than or equal to 1",
        "  x: Extra inputs are not permitted",
    ]


# === files ===

YAML_CONFIG = """\
drain_timeout: 2s
listeners:
  - name: ingress
    listen: 127.0.0.1:0
    routes:
      - name: api
        match: {path_prefix: /api}
        to: [{cluster: v2, weight: 10}, {cluster: v1, weight: 90}]
clusters:
  - name: v1
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
  - name: v2
    endpoints: ["[::1]:9003"]
    connect_timeout: 250ms
    pool: {max_idle_per_endpoint: 8, idle_timeout: 1m}
"""


def test_yaml_and_json_files_load_the_same(tmp_path: Path) -> None:
    yaml_file = tmp_path / "mesh.yaml"
    yaml_file.write_text(YAML_CONFIG)
    from_yaml = load_config_file(yaml_file)
    json_file = tmp_path / "mesh.json"
    json_file.write_text(json.dumps(from_yaml.model_dump(mode="json"), indent=2))
    assert load_config_file(json_file) == from_yaml
    assert from_yaml.clusters[1].connect_timeout == timedelta(milliseconds=250)
    assert from_yaml.listeners[0].routes[0].to[1].weight == 90


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("listeners: [", "invalid YAML"),
        ("workers: 1\nworkers: 2\n", "duplicate key 'workers'"),
        ('{"workers": 1, "workers": 2}', "duplicate key 'workers'"),
        ('{"workers": }', "invalid JSON"),
    ],
)
def test_file_problems(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    [error] = info.value.errors
    assert error["loc"] == FILE_LOC
    assert needle in error["msg"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "absent.yaml")
    assert info.value.errors[0]["loc"] == FILE_LOC


def test_file_field_errors_have_paths(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(YAML_CONFIG.replace("cluster: v1,", "cluster: v9,"))
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert [e["loc"] for e in info.value.errors] == ["listeners.0.routes.0.to.1.cluster"]


# === snapshot ===


def test_snapshot_json(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        YAML_CONFIG.replace("      - name: api\n        match", "      - match")
        + "    lb: round_robin\n"
    )
    cfg = load_config_file(path)
    assert json.loads(to_snapshot_json(cfg, 7)) == {
        "version": 7,
        "listeners": [
            {
                "name": "ingress",
                "listen": "127.0.0.1:0",
                "routes": [
                    {
                        "name": "route-0",
                        "match": {
                            "host": None,
                            "path": None,
                            "path_prefix": "/api",
                            "path_regex": None,
                            "methods": [],
                            "headers": [],
                            "query": [],
                        },
                        "to": [{"cluster": "v2", "weight": 10}, {"cluster": "v1", "weight": 90}],
                        "direct_response": None,
                        "redirect": None,
                        "rewrite": {"path_prefix": None, "host": None},
                        "request_headers": {"set": [], "add": [], "remove": []},
                        "response_headers": {"set": [], "add": [], "remove": []},
                        "policy": BUILTIN_ROUTE_SNAPSHOT,
                    }
                ],
                "protocol": "http",
                "tls": None,
                "to": [],
                "sni_routes": [],
                "idle_timeout_ms": 3600000,
                "limits": {
                    "max_request_headers": 100,
                    "max_request_header_bytes": 61440,
                    "header_read_timeout_ms": 30000,
                    "idle_timeout_ms": 3600000,
                    "max_concurrent_streams": 100,
                    "max_request_body_bytes": None,
                },
                "access_log": None,
            }
        ],
        "clusters": [
            {
                "name": "v1",
                "endpoints": [
                    {"address": "127.0.0.1:9001", "weight": 1},
                    {"address": "127.0.0.1:9002", "weight": 1},
                ],
                "lb": "round_robin",
                "hash_on": None,
                "connect_timeout_ms": 1000,
                "max_idle_per_endpoint": 1024,
                "idle_timeout_ms": 90000,
                "health_check": None,
                "panic_threshold_percent": 50,
                "protocol": "http1",
                "tls": None,
                "policy": None,
            },
            {
                "name": "v2",
                "endpoints": [{"address": "[::1]:9003", "weight": 1}],
                "lb": "round_robin",
                "hash_on": None,
                "connect_timeout_ms": 250,
                "max_idle_per_endpoint": 8,
                "idle_timeout_ms": 60000,
                "health_check": None,
                "panic_threshold_percent": 50,
                "protocol": "http1",
                "tls": None,
                "policy": None,
            },
        ],
        "tracing": None,
    }


def test_snapshot_keeps_explicit_route_names_and_exact_paths() -> None:
    data = minimal()
    data["listeners"][0]["routes"] = [
        {"name": "exact", "match": {"path": "/healthz"}, "to": [{"cluster": "a"}]},
        {"to": [{"cluster": "a"}]},
    ]
    routes = json.loads(to_snapshot_json(load_config(data), 1))["listeners"][0]["routes"]
    paths = ("path", "path_prefix", "path_regex")
    assert [(r["name"], [r["match"][p] for p in paths]) for r in routes] == [
        ("exact", ["/healthz", None, None]),
        ("route-1", [None, "/", None]),
    ]
