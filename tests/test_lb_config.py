"""Config of load balancing and health checks: the models, their checks and the snapshot."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pymesh.config import load_config
from pymesh.errors import ConfigError
from pymesh.snapshot import to_snapshot_json


def config(**cluster: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "in", "listen": "127.0.0.1:0", "routes": [{"to": [{"cluster": "a"}]}]}
        ],
        "clusters": [{"name": "a", "endpoints": ["127.0.0.1:9001"], **cluster}],
    }


def errors_of(data: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return {e["loc"]: e["msg"] for e in info.value.errors}


def snapshot_cluster(data: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = json.loads(to_snapshot_json(load_config(data), 1))["clusters"][0]
    return cluster


@pytest.mark.parametrize("lb", ["round_robin", "random", "least_request", "ewma"])
def test_plain_balancers_need_no_key_and_refuse_one(lb: str) -> None:
    assert snapshot_cluster(config(lb=lb))["lb"] == lb
    errors = errors_of(config(lb=lb, hash_on={"header": "x-user"}))
    assert errors.keys() == {"clusters.0.hash_on"}
    assert "only for ring_hash and maglev" in errors["clusters.0.hash_on"]


@pytest.mark.parametrize("lb", ["ring_hash", "maglev"])
def test_hashing_balancers_need_exactly_one_key(lb: str) -> None:
    assert "needs hash_on" in errors_of(config(lb=lb))["clusters.0.hash_on"]
    both = errors_of(config(lb=lb, hash_on={"header": "x", "cookie": "y"}))
    assert "exactly one" in both["clusters.0.hash_on"]
    assert "exactly one" in errors_of(config(lb=lb, hash_on={}))["clusters.0.hash_on"]
    bad = errors_of(config(lb=lb, hash_on={"header": "x user"}))
    assert bad.keys() == {"clusters.0.hash_on.header"}
    for key, sent in [
        ({"header": "x-user"}, {"header": "x-user", "cookie": None, "source_ip": False}),
        ({"cookie": "session"}, {"header": None, "cookie": "session", "source_ip": False}),
        ({"source_ip": True}, {"header": None, "cookie": None, "source_ip": True}),
    ]:
        assert snapshot_cluster(config(lb=lb, hash_on=key))["hash_on"] == sent


def test_endpoints_take_weights() -> None:
    data = config()
    data["clusters"][0]["endpoints"] = [
        "127.0.0.1:9001",
        {"address": "127.0.0.1:9002", "weight": 3},
        {"address": "127.0.0.1:9003"},
    ]
    assert snapshot_cluster(data)["endpoints"] == [
        {"address": "127.0.0.1:9001", "weight": 1},
        {"address": "127.0.0.1:9002", "weight": 3},
        {"address": "127.0.0.1:9003", "weight": 1},
    ]
    # The string form reads back as written.
    assert load_config(data).clusters[0].endpoints[0] == "127.0.0.1:9001"


@pytest.mark.parametrize(
    ("entry", "loc"),
    [
        ({"address": "127.0.0.1:9002", "weight": 0}, "clusters.0.endpoints.1.weight"),
        ({"address": "127.0.0.1:9002", "weight": 1001}, "clusters.0.endpoints.1.weight"),
        ({"address": "127.0.0.1:0"}, "clusters.0.endpoints.1.address"),
        ({"weight": 2}, "clusters.0.endpoints.1.address"),
        ({"address": "127.0.0.1:9002", "extra": 1}, "clusters.0.endpoints.1.extra"),
        ("nope", "clusters.0.endpoints.1"),
        (7, "clusters.0.endpoints.1"),
        ("127.0.0.1:9001", "clusters.0.endpoints.1"),
        ({"address": "127.0.0.1:9001", "weight": 2}, "clusters.0.endpoints.1"),
    ],
)
def test_bad_endpoints_name_their_field(entry: object, loc: str) -> None:
    data = config()
    data["clusters"][0]["endpoints"] = ["127.0.0.1:9001", entry]
    assert errors_of(data).keys() == {loc}


def test_health_check_defaults_and_snapshot() -> None:
    sent = snapshot_cluster(config(health_check={}))
    assert sent["health_check"] == {
        "tcp": False,
        "path": "/healthz",
        "expected_statuses": [200],
        "interval_ms": 5000,
        "timeout_ms": 1000,
        "healthy_threshold": 2,
        "unhealthy_threshold": 3,
    }
    assert sent["panic_threshold_percent"] == 50
    tcp = snapshot_cluster(config(health_check={"tcp": True, "interval": "250ms"}))["health_check"]
    assert (tcp["tcp"], tcp["path"], tcp["interval_ms"]) == (True, None, 250)
    query = snapshot_cluster(config(health_check={"path": "/?status=503"}))["health_check"]
    assert query["path"] == "/?status=503"
    assert snapshot_cluster(config(panic_threshold_percent=0))["panic_threshold_percent"] == 0


@pytest.mark.parametrize(
    ("check", "loc"),
    [
        ({"tcp": True, "path": "/x"}, "clusters.0.health_check"),
        ({"path": "healthz"}, "clusters.0.health_check.path"),
        ({"path": "/a b"}, "clusters.0.health_check.path"),
        ({"expected_statuses": []}, "clusters.0.health_check.expected_statuses"),
        ({"expected_statuses": [99]}, "clusters.0.health_check.expected_statuses.0"),
        ({"interval": "0s"}, "clusters.0.health_check.interval"),
        ({"timeout": 5}, "clusters.0.health_check.timeout"),
        ({"healthy_threshold": 0}, "clusters.0.health_check.healthy_threshold"),
        ({"unhealthy_threshold": 101}, "clusters.0.health_check.unhealthy_threshold"),
        ({"grpc": True}, "clusters.0.health_check.grpc"),
    ],
)
def test_bad_health_checks_name_their_field(check: dict[str, Any], loc: str) -> None:
    assert errors_of(config(health_check=check)).keys() == {loc}


@pytest.mark.parametrize("value", [-1, 101, "half"])
def test_panic_threshold_is_a_percentage(value: object) -> None:
    assert errors_of(config(panic_threshold_percent=value)).keys() == {
        "clusters.0.panic_threshold_percent"
    }


def test_http_checks_suit_tls_and_http2_endpoints() -> None:
    for extra in ({"protocol": "http2"}, {"tls": {}}, {"tls": {}, "protocol": "auto"}):
        sent = snapshot_cluster(config(health_check={}, **extra))
        assert sent["health_check"]["tcp"] is False
        assert sent["health_check"]["path"] == "/healthz"
    sent = snapshot_cluster(config(protocol="http2", health_check={"tcp": True}))
    assert sent["health_check"]["tcp"] is True
