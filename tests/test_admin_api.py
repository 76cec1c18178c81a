"""The admin REST API end to end: the config lifecycle (validate, apply, history, rollback),
resources (listeners, routes, clusters, endpoints with TTL leases), tokens (401/403),
optimistic concurrency (409), invalid input (422), readiness and drain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from meshtest import (
    HTTP_TIMEOUT,
    Echo,
    Mesh,
    cluster,
    dead_address,
    listener,
    metric,
    poll,
    route,
)

RO_SECRET = "read-only-secret-0123456789"
RW_SECRET = "read-write-secret-0123456789"


def two_clusters(a: Echo, b: Echo) -> dict[str, Any]:
    return {
        "listeners": [listener("ingress", [route("a", name="main")])],
        "clusters": [cluster("a", a.address), cluster("b", b.address)],
    }


def server_id(m: Mesh, path: str = "/") -> str:
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        r = c.get(path)
        assert r.status_code == 200, r.text
        return r.headers["server-id"]


def test_validate_is_a_dry_run_with_a_structured_diff(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    cfg = two_clusters(a, b)
    m = mesh(cfg)
    assert server_id(m) == "a"
    v1 = m.ready()["version"]
    assert v1 == 1

    # dry run: a structured diff, nothing applied
    changed = json.loads(json.dumps(cfg))
    changed["listeners"][0]["routes"][0]["to"] = [{"cluster": "b"}]
    r = m.admin.post("/config/validate", json=changed)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["version"] == v1
    assert body["changes"] == [
        {
            "op": "replace",
            "path": "listeners[ingress].routes[main].to.0.cluster",
            "old": "a",
            "new": "b",
        }
    ]
    assert m.ready()["version"] == v1
    assert server_id(m) == "a"

    # an invalid dry run: 422 naming the field, nothing applied
    bad = json.loads(json.dumps(changed))
    bad["listeners"][0]["routes"][0]["to"] = [{"cluster": "nope"}]
    r = m.admin.post("/config/validate", json=bad)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    locs = [e["loc"] for e in r.json()["errors"]]
    assert "listeners.0.routes.0.to.0.cluster" in locs
    assert m.ready()["version"] == v1


def test_apply_history_rollback(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    a, b = echo("a"), echo("b")
    cfg = two_clusters(a, b)
    m = mesh(cfg)
    changed = json.loads(json.dumps(cfg))
    changed["listeners"][0]["routes"][0]["to"] = [{"cluster": "b"}]
    change = {
        "op": "replace",
        "path": "listeners[ingress].routes[main].to.0.cluster",
        "old": "a",
        "new": "b",
    }

    # apply: version 2, served at once; the ETag names it
    r = m.put_config(changed)
    assert r.status_code == 200, r.text
    v2 = r.json()["version"]
    assert v2 == 2
    assert r.headers["etag"] == '"2"'
    assert server_id(m) == "b"

    # history: newest first, who (the token's id, never its secret), what changed
    r = m.get("/config/versions")
    assert r.status_code == 200
    history = r.json()
    assert [h["version"] for h in history] == [2, 1]
    assert history[0]["token"] == "admin"
    assert history[0]["source"] == "api"
    assert history[0]["changes"] == 1
    assert history[1]["source"] == "file"
    assert m.token is not None
    assert m.token not in r.text
    r = m.get("/config/versions/2")
    assert r.status_code == 200
    detail = r.json()
    assert detail["diff"] == [change]
    assert detail["config"] == m.config()
    assert m.get("/config/versions/99").status_code == 404

    # rollback to 1: applied as version 3 with version 1's config
    r = m.admin.post("/config/rollback/1")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3
    assert server_id(m) == "a"
    assert m.config() == m.get("/config/versions/1").json()["config"]
    top = m.get("/config/versions").json()[0]
    assert top["version"] == 3
    assert top["source"] == "rollback:1"
    assert m.admin.post("/config/rollback/42").status_code == 404


def test_tokens_401_403_and_counted(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    # a tokens file written before the first start: one read-only, one read-write token
    data = tmp_path / "mesh0" / "data"
    data.mkdir(parents=True)
    tokens = data / "admin-tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"id": "ops", "secret": RW_SECRET, "access": "read-write"},
                    {"id": "viewer", "secret": RO_SECRET, "access": "read-only"},
                ]
            }
        )
    )
    os.chmod(tokens, 0o600)
    m = mesh(two_clusters(a, b))
    assert m.token == RW_SECRET
    url = m.admin_url

    def call(method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.request(method, url + path, headers=headers, timeout=HTTP_TIMEOUT, **kw)

    # /live and /ready need no token
    assert call("GET", "/live", None).status_code == 200
    assert call("GET", "/ready", None).status_code == 200
    # everything else does: missing or wrong -> 401 problem with WWW-Authenticate
    for path in ("/config", "/stats", "/metrics", "/clusters", "/config/versions"):
        r = call("GET", path, None)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"].startswith("application/problem+json")
    assert call("GET", "/config", "wrong-token").status_code == 401
    assert call("GET", "/config", RW_SECRET + "x").status_code == 401
    r = httpx.get(url + "/config", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401
    # read-only reads, may not write (403); nothing changes
    assert call("GET", "/config", RO_SECRET).status_code == 200
    cfg = call("GET", "/config", RO_SECRET).json()
    assert call("PUT", "/config", RO_SECRET, json=cfg).status_code == 403
    assert call("POST", "/config/rollback/1", RO_SECRET).status_code == 403
    assert call("DELETE", "/clusters/b", RO_SECRET).status_code == 403
    assert call("POST", "/drain", RO_SECRET).status_code == 403
    assert m.ready()["version"] == 1
    # the token file stays private; the history names the token, not the secret
    assert (tokens.stat().st_mode & 0o777) == 0o600
    assert call("PUT", "/config", RW_SECRET, json=cfg).status_code == 200
    versions = call("GET", "/config/versions", RO_SECRET).json()
    assert versions[0]["token"] == "ops"

    text = m.metrics()
    assert metric(text, "pymesh_admin_auth_failures_total", reason="unauthenticated") == 8
    assert metric(text, "pymesh_admin_auth_failures_total", reason="forbidden") == 4


def test_if_match_stale_is_409_and_changes_nothing(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(two_clusters(a, b))
    r = m.get("/config")
    etag = r.headers["etag"]
    assert etag == '"1"'
    cfg = r.json()
    # a matching If-Match applies
    r = m.admin.put("/config", json=cfg, headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"2"'
    # the old ETag is stale now: 409, with the current version; nothing changes
    cfg["listeners"][0]["routes"][0]["to"] = [{"cluster": "b"}]
    for method, path, body in [
        ("PUT", "/config", cfg),
        ("DELETE", "/clusters/b", None),
        ("PUT", "/listeners/ingress", cfg["listeners"][0]),
        ("POST", "/config/rollback/1", None),
    ]:
        r = m.admin.request(method, path, json=body, headers={"If-Match": etag})
        assert r.status_code == 409, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["etag"] == '"2"'
    assert m.ready()["version"] == 2
    assert server_id(m) == "a"
    assert m.admin.put("/config", json=cfg, headers={"If-Match": "garbage"}).status_code == 400


def test_invalid_input_is_422_with_paths_never_500(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(two_clusters(a, b))
    cases: list[tuple[str, str, Any, str]] = [
        ("PUT", "/config", {"listeners": "nope"}, "listeners"),
        ("PUT", "/config", [1, 2], "(root)"),
        ("POST", "/listeners", {"name": "x", "listen": "nowhere"}, "listeners.1.listen"),
        ("PUT", "/listeners/ingress", {"name": "other"}, "body.name"),
        ("POST", "/clusters", {"name": "c"}, "clusters.2.endpoints"),
        ("DELETE", "/clusters/a", None, "listeners.0.routes.0.to.0.cluster"),
        ("POST", "/clusters/a/endpoints", {"address": "x"}, "clusters.0.endpoints.1"),
        ("POST", "/clusters/a/endpoints", {"address": "127.0.0.1:1", "ttl": "soon"}, "body.ttl"),
        ("POST", "/clusters/a/endpoints", {"nope": 1}, "body.address"),
        ("DELETE", "/clusters/a/endpoints/" + a.address, None, "clusters.0.endpoints"),
    ]
    for method, path, body, loc in cases:
        r = m.admin.request(method, path, json=body)
        assert r.status_code == 422, (method, path, r.text)
        problem = r.json()
        assert problem["status"] == 422
        locs = [e["loc"] for e in problem["errors"]]
        assert loc in locs, (method, path, locs)
    r = m.admin.put("/config", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == "body"
    # unknown items: 404; duplicates: 409
    assert m.get("/listeners/ghost").status_code == 404
    assert m.admin.delete("/clusters/ghost").status_code == 404
    r = m.admin.post("/clusters", json=cluster("a", a.address))
    assert r.status_code == 409
    assert m.ready()["version"] == 1
    assert server_id(m) == "a"


def test_resources_listeners_routes_clusters_endpoints(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b, c = echo("a"), echo("b"), echo("c")
    m = mesh(two_clusters(a, b))

    # clusters: add one, read it with its endpoints, replace it
    r = m.admin.post("/clusters", json=cluster("c", c.address))
    assert r.status_code == 201, r.text
    r = m.get("/clusters/c")
    assert r.status_code == 200
    state = r.json()
    assert state["spec"]["endpoints"] == [c.address]
    assert [e["address"] for e in state["endpoints"]] == [c.address]
    assert "requests_total" in state["stats"]
    clusters = m.get("/clusters").json()
    assert [x["name"] for x in clusters] == ["a", "b", "c"]

    # routes within a listener: insert before the catch-all, read, replace, delete
    r = m.admin.post("/listeners/ingress/routes?index=0", json=route("c", name="to-c", prefix="/c"))
    assert r.status_code == 201, r.text
    names = [x["name"] for x in m.get("/listeners/ingress/routes").json()]
    assert names == ["to-c", "main"]
    assert server_id(m, "/c/x") == "c"
    assert server_id(m, "/") == "a"
    assert m.get("/listeners/ingress/routes/to-c").json()["match"]["path_prefix"] == "/c"
    r = m.admin.put("/listeners/ingress/routes/to-c", json=route("b", prefix="/c"))
    assert r.status_code == 200, r.text
    assert server_id(m, "/c/x") == "b"
    assert m.admin.delete("/listeners/ingress/routes/to-c").status_code == 200
    assert server_id(m, "/c/x") == "a"
    assert m.get("/listeners/ingress/routes/to-c").status_code == 404

    # listeners: add a second one, read it, delete it
    r = m.admin.post("/listeners", json=listener("side", [route("c")]))
    assert r.status_code == 201, r.text
    bound = r.json()["listeners"]["side"]
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        assert client.get(f"http://{bound}/").headers["server-id"] == "c"
    assert m.get("/listeners/side").json()["name"] == "side"
    assert [x["name"] for x in m.get("/listeners").json()] == ["ingress", "side"]
    assert m.admin.delete("/listeners/side").status_code == 200
    assert "side" not in m.ready()["listeners"]

    # deleting a cluster nothing refers to
    assert m.admin.delete("/clusters/c").status_code == 200
    assert m.get("/clusters/c").status_code == 404


def test_endpoints_register_and_deregister(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b, c = echo("a"), echo("b"), echo("c")
    m = mesh(two_clusters(a, b))
    # register a second endpoint in cluster a, then deregister it
    r = m.admin.post("/clusters/a/endpoints", json={"address": c.address})
    assert r.status_code == 201, r.text
    seen = {server_id(m) for _ in range(6)}
    assert seen == {"a", "c"}
    # registering again changes nothing (no new version)
    version = m.ready()["version"]
    assert m.admin.post("/clusters/a/endpoints", json={"address": c.address}).status_code == 200
    assert m.ready()["version"] == version
    eps = m.get("/clusters/a/endpoints").json()
    assert [e["address"] for e in eps] == [a.address, c.address]
    assert all(e["lease_ttl"] is None for e in eps)
    assert m.admin.delete(f"/clusters/a/endpoints/{c.address}").status_code == 200
    assert {server_id(m) for _ in range(4)} == {"a"}
    assert m.admin.delete(f"/clusters/a/endpoints/{c.address}").status_code == 404

    history = m.get("/config/versions?limit=100").json()
    assert [h["changes"] for h in history[:2]] == [1, 1]


def test_endpoint_ttl_expires_without_heartbeats(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(two_clusters(a, b))
    r = m.admin.post("/clusters/a/endpoints", json={"address": b.address, "ttl": "1s"})
    assert r.status_code == 201, r.text
    registered = r.json()["version"]

    def addresses() -> list[str]:
        return [e["address"] for e in m.get("/clusters/a/endpoints").json()]

    assert addresses() == [a.address, b.address]
    lease = m.get("/clusters/a/endpoints").json()[1]
    assert lease["lease_ttl"] == 1.0
    assert 0 < lease["lease_expires_in"] <= 1.0
    # heartbeats keep it for longer than its TTL (each one a full TTL from now)
    r = m.admin.post(f"/clusters/a/endpoints/{b.address}/heartbeat")
    assert r.status_code == 200, r.text
    assert r.json()["lease_ttl"] == 1.0
    # heartbeat every 300ms for 1.8s (longer than the TTL): a bounded loop, paced
    hb = f"/clusters/a/endpoints/{b.address}/heartbeat"
    until = time.monotonic() + 1.8
    while time.monotonic() < until:
        assert m.admin.post(hb).status_code == 200
        time.sleep(0.3)
    assert m.ready()["version"] == registered
    assert addresses() == [a.address, b.address]
    # no more heartbeats: it leaves, as a new version from the lease loop
    poll(lambda: addresses() == [a.address], 10.0, interval=0.1, what="endpoint expired")
    top = m.get("/config/versions").json()[0]
    assert top["source"] == "ttl"
    assert top["version"] == registered + 1
    assert m.admin.post(f"/clusters/a/endpoints/{b.address}/heartbeat").status_code == 404


def test_drain_turns_ready_503_and_the_process_still_stops(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(two_clusters(a, b))
    assert m.get("/ready").status_code == 200
    r = m.admin.post("/drain")
    assert r.status_code == 202
    assert r.json() == {"draining": True}
    r = m.get("/ready")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    # no new config while draining
    assert m.put_config(m.config()).status_code == 503
    assert m.get("/live").status_code == 200
    assert m.stop() == 0


def test_dead_endpoint_stats_pass_through(mesh: Callable[..., Mesh]) -> None:
    dead = dead_address()
    m = mesh({"listeners": [listener("ingress", [route("d")])], "clusters": [cluster("d", dead)]})
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/").status_code == 503
    state = poll(
        lambda: (s := m.get("/clusters/d").json())["stats"].get("connect_failures_total") and s,
        5.0,
        what="a connect failure counted",
    )
    assert state["endpoints"][0]["address"] == dead
    # health is what the core reports, or null when it reports none
    assert state["endpoints"][0]["healthy"] in (None, True, False)


def test_policies_follow_the_config_model(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    """/policies is the config's mesh-wide `defaults` section when the model has one."""
    from pymesh.config import MeshConfig  # noqa: PLC0415

    a, b = echo("a"), echo("b")
    m = mesh(two_clusters(a, b))
    paths = m.get("/openapi.json").json()["paths"]
    if "defaults" not in MeshConfig.model_fields:
        assert "/policies" not in paths
        assert m.get("/policies").status_code == 404
        return
    assert "/policies" in paths
    r = m.get("/policies")
    assert r.status_code == 200, r.text
    defaults = r.json()
    assert defaults == m.config()["defaults"]
    r = m.admin.put("/policies", json=defaults, headers={"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    assert m.get("/policies").json() == defaults
    r = m.admin.put("/policies", json={"no-such-field": 1})
    assert r.status_code == 422
    assert all(e["loc"].startswith("defaults") for e in r.json()["errors"])
    assert m.ready()["version"] == 2
