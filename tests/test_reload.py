"""Live configuration through the admin API: PUT /config under load, refusals, round trips."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from meshtest import HTTP_TIMEOUT, Echo, Mesh, cluster, listener, poll, route


def two_cluster_config(old: Echo, new: Echo, target: str = "old") -> dict[str, Any]:
    return {
        "listeners": [listener("ingress", [route(target, name="main")])],
        "clusters": [cluster("old", old.address), cluster("new", new.address)],
    }


def test_put_config_under_load_loses_nothing(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    url = m.listener("ingress")
    version_before = m.ready()["version"]

    per_thread = 1500
    deadline = time.monotonic() + 60
    # (start time, status, server-id) of every request, and every exception
    results: list[list[tuple[float, int, str]]] = [[], []]
    errors: list[BaseException] = []
    done = [0, 0]

    def load(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
                for _ in range(per_thread):
                    if time.monotonic() > deadline:
                        return
                    t0 = time.monotonic()
                    r = c.get("/")
                    results[i].append((t0, r.status_code, r.headers.get("server-id", "")))
                    done[i] += 1
        except BaseException as e:  # any transport error is a lost request
            errors.append(e)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        # change the route once both threads are well into their loops
        poll_deadline = time.monotonic() + 30
        while min(done) < 300 and time.monotonic() < poll_deadline and not errors:
            time.sleep(0.01)
        assert min(done) >= 300, (done, errors)
        r = m.put_config(two_cluster_config(old, new, target="new"))
        put_returned = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json()["version"] > version_before
        assert r.json()["listeners"]["ingress"] == url.removeprefix("http://")
    finally:
        for t in threads:
            t.join(70)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    flat = [x for rs in results for x in rs]
    assert len(flat) == 2 * per_thread, "the load loop hit its time bound"
    assert {status for _, status, _ in flat} == {200}
    before = Counter([sid for t0, _, sid in flat if t0 < put_returned])
    after = Counter([sid for t0, _, sid in flat if t0 >= put_returned])
    assert before.get("old", 0) >= 600, before
    assert sum(after.values()) > 0, "no requests were sent after the PUT returned"
    # every request that started after the PUT answered went to the new cluster, including
    # those on keep-alive connections opened before it
    assert after == {"new": sum(after.values())}, after
    assert m.ready()["version"] == r.json()["version"]


def test_get_config_returns_what_was_put(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    r = m.get("/config")
    assert r.status_code == 200
    v1 = m.ready()["version"]
    assert r.headers["etag"] == f'"{v1}"'
    running = r.json()
    assert running["listeners"][0]["name"] == "ingress"
    assert running["listeners"][0]["routes"][0]["to"][0]["cluster"] == "old"
    assert {c["name"] for c in running["clusters"]} == {"old", "new"}
    # durations are rendered as strings
    assert isinstance(running["clusters"][0]["connect_timeout"], str)
    assert isinstance(running["drain_timeout"], str)

    # the running config in its canonical form, changed, PUT back, read back unchanged
    changed = copy.deepcopy(running)
    changed["listeners"][0]["routes"][0]["to"] = [
        {"cluster": "new", "weight": 3},
        {"cluster": "old", "weight": 1},
    ]
    changed["clusters"][0]["connect_timeout"] = "750ms"
    r = m.put_config(changed)
    assert r.status_code == 200, r.text
    v2 = r.json()["version"]
    assert v2 > v1
    r = m.get("/config")
    assert r.headers["etag"] == f'"{v2}"'
    assert r.json() == changed

    # PUT again: the version increases every time
    r = m.put_config(running)
    assert r.status_code == 200, r.text
    v3 = r.json()["version"]
    assert v3 > v2
    assert m.config() == running
    assert m.ready()["version"] == v3
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/").headers["server-id"] == "old"

    # the data dir keeps the last applied config and its version
    saved = json.loads((m.data_dir / "last-applied.json").read_text())
    assert saved["version"] == v3
    assert saved["config"] == running


def bad_unknown_cluster(c: dict[str, Any]) -> None:
    c["listeners"][0]["routes"][0]["to"][0]["cluster"] = "nope"


def bad_duplicate_listener(c: dict[str, Any]) -> None:
    c["listeners"].append(listener("ingress", [route("old")]))


def bad_duration(c: dict[str, Any]) -> None:
    c["clusters"][1]["connect_timeout"] = "5 parsecs"


def bad_zero_duration(c: dict[str, Any]) -> None:
    c["drain_timeout"] = "0s"


def bad_type(c: dict[str, Any]) -> None:
    c["listeners"][0]["routes"][0]["to"][0]["weight"] = "heavy"


def bad_extra_field(c: dict[str, Any]) -> None:
    c["clusters"][0]["colour"] = "blue"


def bad_weights(c: dict[str, Any]) -> None:
    c["listeners"][0]["routes"][0]["to"] = [{"cluster": "old", "weight": 0}]


def bad_missing_endpoints(c: dict[str, Any]) -> None:
    c["clusters"][0]["endpoints"] = []


def bad_path(c: dict[str, Any]) -> None:
    c["listeners"][0]["routes"][0]["match"] = {"path_prefix": "api"}


def bad_protocol(c: dict[str, Any]) -> None:
    c["listeners"][0]["protocol"] = "gopher"


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (bad_unknown_cluster, "listeners.0.routes.0.to.0.cluster"),
        (bad_duplicate_listener, "listeners.1.name"),
        (bad_duration, "clusters.1.connect_timeout"),
        (bad_zero_duration, "drain_timeout"),
        (bad_type, "listeners.0.routes.0.to.0.weight"),
        (bad_extra_field, "clusters.0.colour"),
        (bad_weights, "listeners.0.routes.0.to"),
        (bad_missing_endpoints, "clusters.0.endpoints"),
        (bad_path, "listeners.0.routes.0.match.path_prefix"),
        (bad_protocol, "listeners.0.protocol"),
    ],
    ids=lambda x: x if isinstance(x, str) else x.__name__,
)
def test_bad_config_is_422_and_old_keeps_serving(
    echo: Callable[..., Echo],
    mesh: Callable[..., Mesh],
    mutate: Callable[[dict[str, Any]], None],
    loc: str,
) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    version = m.ready()["version"]
    before = m.config()
    bad = two_cluster_config(old, new)
    mutate(bad)
    r = m.put_config(bad)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"] == "about:blank"
    assert problem["title"] == "invalid config"
    assert problem["status"] == 422
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    locs = [e["loc"] for e in problem["errors"]]
    assert loc in locs, problem
    assert all(isinstance(e["msg"], str) and e["msg"] for e in problem["errors"])
    # nothing applied
    assert m.ready()["version"] == version
    assert m.config() == before
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(5):
            r = c.get("/")
            assert r.status_code == 200
            assert r.headers["server-id"] == "old"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2, 3]", b'"a string"', b"\xff\xfe"],
    ids=["broken", "empty", "array", "string", "binary"],
)
def test_unparseable_body_is_422(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], body: bytes
) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    version = m.ready()["version"]
    r = m.admin.put("/config", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 422
    assert [e["loc"] for e in problem["errors"]] != []
    if body in (b"{not json", b"", b"\xff\xfe"):
        assert "body" in [e["loc"] for e in problem["errors"]], problem
    assert m.ready()["version"] == version


def test_bind_failure_is_422(echo: Callable[..., Echo], mesh: Callable[..., Mesh]) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    version = m.ready()["version"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        cfg = two_cluster_config(old, new)
        cfg["listeners"].append(listener("second", [route("new")], listen=addr))
        r = m.put_config(cfg)
    assert r.status_code == 422, r.text
    assert "listeners.1.listen" in [e["loc"] for e in r.json()["errors"]], r.text
    assert m.ready()["version"] == version
    assert set(m.ready()["listeners"]) == {"ingress"}


def test_put_adds_and_removes_listeners(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    old, new = echo("old"), echo("new")
    m = mesh(two_cluster_config(old, new))
    first = m.listener("ingress")
    cfg = two_cluster_config(old, new)
    cfg["listeners"] = [listener("second", [route("new")])]
    r = m.put_config(cfg)
    assert r.status_code == 200, r.text
    listeners = r.json()["listeners"]
    assert set(listeners) == {"second"}
    assert m.ready()["listeners"] == listeners
    r2 = httpx.get(f"http://{listeners['second']}/", timeout=HTTP_TIMEOUT)
    assert r2.headers["server-id"] == "new"

    # the removed listener stops accepting (bounded poll: it drains first)
    def refused() -> bool:
        try:
            httpx.get(first + "/", timeout=1.0)
        except httpx.TransportError:
            return True
        return False

    poll(refused, 10.0, interval=0.1, what="the removed listener to refuse connections")
