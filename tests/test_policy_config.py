"""The policy engine: precedence field by field, ``false`` to turn a policy off, contradictions
refused with their paths, the resolved snapshot, ``GET /policy/effective`` and
``pymesh policy explain``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshtest import PYMESH, Echo, Mesh, cluster, listener

from pymesh.config import load_config
from pymesh.errors import ConfigError
from pymesh.policy import resolve_cluster, resolve_route
from pymesh.snapshot import to_snapshot


def layered(**route: Any) -> dict[str, Any]:
    """Policies at every level: the mesh, listener ``in`` and its route ``r`` (plus ``route``)."""
    return {
        "defaults": {
            "route": {"timeout": "10s", "retry": {"attempts": 1, "on": ["503"]}},
            "cluster": {"circuit_breaker": {"max_requests": 100, "max_retries": 5}},
        },
        "listeners": [
            {
                **listener("in", [{"name": "r", "to": [{"cluster": "a"}], **route}]),
                "defaults": {"route": {"timeout": "5s", "retry": {"attempts": 3}}},
            }
        ],
        "clusters": [
            cluster("a", "127.0.0.1:9001", circuit_breaker={"max_requests": 7}),
            cluster("b", "127.0.0.1:9002"),
        ],
    }


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return {e["loc"]: e["msg"] for e in info.value.errors}


# === precedence ===


def test_the_more_specific_level_wins_field_by_field() -> None:
    cfg = load_config(layered(retry={"backoff": "5ms"}, per_try_timeout="1s"))
    s = resolve_route(cfg, 0, 0)
    assert (s["timeout"].value.total_seconds(), s["timeout"].level) == (5, "listener")
    assert s["timeout"].loc == "listeners.0.defaults.route.timeout"
    assert (s["retry.attempts"].value, s["retry.attempts"].level) == (3, "listener")
    assert (s["retry.on"].value, s["retry.on"].level) == (["503"], "defaults")
    assert s["retry.on"].loc == "defaults.route.retry.on"
    assert (s["retry.backoff"].level, s["retry.backoff"].loc) == (
        "route",
        "listeners.0.routes.0.retry.backoff",
    )
    assert (s["retry.budget_percent"].value, s["retry.budget_percent"].level) == (20, "built-in")
    assert s["per_try_timeout"].level == "route"
    c = resolve_cluster(cfg, 0)
    assert (c["circuit_breaker.max_requests"].value, c["circuit_breaker.max_requests"].level) == (
        7,
        "cluster",
    )
    assert c["circuit_breaker.max_retries"].level == "defaults"
    assert c["circuit_breaker.max_connections"].level == "built-in"
    assert resolve_cluster(cfg, 1)["circuit_breaker.max_requests"].value == 100


def test_false_turns_a_policy_off_and_forgets_what_less_specific_levels_said() -> None:
    cfg = load_config(layered(retry=False, timeout=False))
    s = resolve_route(cfg, 0, 0)
    assert s["retry"].value is None and s["retry"].level == "route"
    assert "retry.attempts" not in s
    assert s["timeout"].value is None and s["timeout"].loc == "listeners.0.routes.0.timeout"
    policy = to_snapshot(cfg, 1)["listeners"][0]["routes"][0]["policy"]
    assert policy["retry"] is None and policy["timeout_ms"] is None
    # Turned off at the listener, on again at the route: only the route's fields and the
    # built-in defaults count.
    data = layered(retry={"backoff": "5ms"})
    data["listeners"][0]["defaults"]["route"]["retry"] = False
    s = resolve_route(load_config(data), 0, 0)
    assert s["retry"].level == "route"
    assert (s["retry.attempts"].value, s["retry.attempts"].level) == (2, "built-in")
    assert s["retry.on"].level == "built-in"


def test_the_snapshot_carries_the_resolved_policies() -> None:
    data = layered(
        rate_limit={"requests_per_second": 2.5, "key": {"client_ip": True}},
        fault={"abort": {"status": 503, "percent": 5}},
        mirror={"cluster": "b", "percent": 10},
        retry={"on": ["gateway-error", "unavailable", "connect-failure"]},
    )
    data["clusters"][1]["outlier_detection"] = {"consecutive_5xx": 2, "success_rate": {}}
    snap = to_snapshot(load_config(data), 3)
    policy = snap["listeners"][0]["routes"][0]["policy"]
    assert policy["timeout_ms"] == 5000
    assert policy["retry"]["attempts"] == 3
    assert policy["retry"]["on"] == {
        "connect_failure": True,
        "reset": False,
        "refused_stream": False,
        "statuses": [502, 503, 504],
        "grpc_statuses": [14],
    }
    assert policy["retry"]["max_backoff_ms"] == 250
    assert policy["rate_limit"] == {
        "requests_per_second": 2.5,
        "burst": 3,
        "key_header": None,
        "key_client_ip": True,
        "max_keys": 10000,
    }
    assert policy["fault"] == {"delay": None, "abort": {"status": 503, "percent": 5.0}}
    assert policy["mirror"] == {"cluster": "b", "percent": 10.0}
    outlier = snap["clusters"][1]["policy"]["outlier_detection"]
    assert outlier["consecutive_5xx"] == 2 and outlier["base_ejection_ms"] == 30000
    assert outlier["success_rate"] == {
        "minimum_percent": 50.0,
        "request_volume": 20,
        "interval_ms": 10000,
    }


def test_a_dumped_config_reads_back_with_the_same_policies() -> None:
    cfg = load_config(layered(retry={"backoff": "5ms"}))
    again = load_config(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert to_snapshot(again, 1) == to_snapshot(cfg, 1)


# === contradictions ===


def test_a_per_try_timeout_longer_than_the_request_timeout_is_refused() -> None:
    msgs = problems(layered(per_try_timeout="6s"))
    msg = msgs["listeners.0.routes.0.per_try_timeout"]
    assert "longer than the request timeout 5s (listener" in msg
    assert "listeners.0.defaults.route.timeout" in msg


def test_retries_that_would_replay_a_non_idempotent_route_need_an_opt_in() -> None:
    post = {"match": {"methods": ["POST"]}}
    msgs = problems(layered(**post))
    msg = msgs["defaults.route.retry.on"]
    assert "(for route listeners.0.routes.0) takes POST, which is not idempotent" in msg
    # Retrying only what was never sent is safe; so is the explicit opt-in.
    load_config(layered(**post, retry={"on": ["connect-failure", "refused-stream"]}))
    load_config(layered(**post, retry={"idempotent": True}))
    load_config(layered(match={"methods": ["GET", "PUT"]}))


def test_other_contradictions_name_their_fields() -> None:
    msgs = problems(
        layered(
            mirror={"cluster": "nope"},
            rate_limit={"burst": 3},
            fault={"delay": {"percent": 5}},
            retry={"backoff": "100ms", "max_backoff": "10ms"},
        )
    )
    assert msgs["listeners.0.routes.0.mirror.cluster"] == "unknown cluster 'nope'"
    assert "required" in msgs["listeners.0.routes.0.rate_limit.requests_per_second"]
    assert "required" in msgs["listeners.0.routes.0.fault.delay.duration"]
    assert "shorter than backoff" in msgs["listeners.0.routes.0.retry.max_backoff"]
    data = layered()
    data["listeners"][0]["routes"].append(
        {"name": "d", "match": {"path": "/d"}, "direct_response": {"status": 200}, "retry": {}}
    )
    data["clusters"][0]["outlier_detection"] = {"base_ejection": "1m", "max_ejection": "10s"}
    msgs = problems(data)
    assert "forwarded requests" in msgs["listeners.0.routes.1.retry"]
    assert "shorter than base_ejection" in msgs["clusters.0.outlier_detection.max_ejection"]


@pytest.mark.parametrize(
    ("route", "loc"),
    [
        ({"retry": {"on": ["sometimes"]}}, "listeners.0.routes.0.retry.on.0"),
        ({"retry": {"attempts": 11}}, "listeners.0.routes.0.retry.attempts"),
        ({"rate_limit": {"requests_per_second": 0}}, "listeners.0.routes.0.rate_limit"),
        ({"rate_limit": {"requests_per_second": 1, "key": {}}}, "listeners.0.routes.0.rate_limit"),
        ({"fault": {"abort": {"status": 99}}}, "listeners.0.routes.0.fault.abort"),
        ({"mirror": {"cluster": "b", "percent": 101}}, "listeners.0.routes.0.mirror"),
        ({"timeout": "soon"}, "listeners.0.routes.0.timeout"),
    ],
)
def test_bad_policy_values_are_refused_with_their_path(route: dict[str, Any], loc: str) -> None:
    locs = problems(layered(**route))
    assert any(k.startswith(loc) for k in locs), locs


# === the API and the CLI ===


def test_effective_policies_over_the_api_and_the_cli(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tmp_path: Path
) -> None:
    up = echo("up")
    data = layered(retry={"backoff": "5ms"})
    data["clusters"][0]["endpoints"] = [up.address]
    m = mesh(data)
    r = m.get("/policy/effective?route=in/r&cluster=a")
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {s["setting"]: s for s in body["settings"]}
    assert body["clusters"] == ["a"]
    assert rows["timeout"] == {
        "setting": "timeout",
        "value": "5s",
        "level": "listener",
        "loc": "listeners.0.defaults.route.timeout",
    }
    assert rows["retry.on"]["value"] == ["503"] and rows["retry.on"]["level"] == "defaults"
    assert rows["rate_limit"]["value"] == "off"
    assert rows["circuit_breaker.max_requests"]["value"] == 7
    assert m.get("/policy/effective?route=in/nope").status_code == 404
    assert m.get("/policy/effective").status_code == 422

    # A contradictory policy is refused with its path; the running config keeps serving.
    bad = layered(per_try_timeout="1m")
    refused = m.put_config(bad)
    assert refused.status_code == 422
    assert [e["loc"] for e in refused.json()["errors"]] == ["listeners.0.routes.0.per_try_timeout"]
    assert m.get("/policy/effective?route=in/r").json()["version"] == 1

    admin = subprocess.run(
        [PYMESH, "policy", "explain", "in/r", "--admin", m.admin_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert admin.returncode == 0, admin.stderr
    lines = admin.stdout.splitlines()
    assert lines[0] == "route in/r (clusters: a)"
    assert any(
        line.split() == ["timeout", "5s", "listener", "listeners.0.defaults.route.timeout"]
        for line in lines
    ), admin.stdout
    assert "cluster a" in lines
    assert any(
        line.split()[:3] == ["circuit_breaker.max_requests", "7", "cluster"] for line in lines
    )

    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data))
    local = subprocess.run(
        [PYMESH, "policy", "explain", "in/r", "--config", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert local.returncode == 0, local.stderr
    route_part, cluster_part = json.loads(local.stdout)
    assert route_part["settings"] + cluster_part["settings"] == body["settings"]
    missing = subprocess.run(
        [PYMESH, "policy", "explain", "in/zzz", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2 and "no route 'in/zzz'" in missing.stderr
