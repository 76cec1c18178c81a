"""Routing through ``pymesh run`` over real sockets: every kind of match, rewrites, header
edits, direct responses, redirects, their metrics, and unreachable routes refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from meshtest import HTTP_TIMEOUT, Echo, Mesh, cluster, listener, metric, poll


def tagged(name: str, match: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A route to cluster ``up`` whose responses carry ``x-route: <name>``."""
    return {
        "name": name,
        "match": match,
        "to": [{"cluster": "up"}],
        "response_headers": {"set": {"x-route": name}},
        **extra,
    }


def test_every_kind_of_match_picks_its_route(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    routes = [
        tagged("host-exact", {"host": "api.example.com"}),
        tagged("host-wild", {"host": "*.example.com"}),
        tagged("method", {"path_prefix": "/m", "methods": ["POST", "PUT"]}),
        tagged("header-exact", {"path_prefix": "/h", "headers": {"x-canary": "1"}}),
        tagged(
            "header-regex", {"path_prefix": "/h", "headers": [{"name": "x-v", "regex": "v[0-9]"}]}
        ),
        tagged(
            "header-absent", {"path_prefix": "/h", "headers": [{"name": "x-v", "present": False}]}
        ),
        tagged("query-exact", {"path_prefix": "/q", "query": {"debug": "1"}}),
        tagged("query-regex", {"path_prefix": "/q", "query": [{"name": "v", "regex": "[0-9]+"}]}),
        tagged(
            "query-present", {"path_prefix": "/q", "query": [{"name": "flag", "present": True}]}
        ),
        tagged("exact", {"path": "/e"}),
        tagged("regex", {"path_regex": "/r/[0-9]+"}),
        tagged("fallback", {"path_prefix": "/"}),
    ]
    m = mesh({"listeners": [listener("ingress", routes)], "clusters": [cluster("up", up.address)]})
    cases: list[tuple[str, str, dict[str, str], str]] = [
        ("GET", "/", {"host": "api.example.com"}, "host-exact"),
        ("GET", "/", {"host": "API.Example.COM:8080"}, "host-exact"),
        ("GET", "/", {"host": "a.b.example.com"}, "host-wild"),
        ("GET", "/", {"host": "example.com"}, "fallback"),
        ("POST", "/m", {}, "method"),
        ("GET", "/m", {}, "fallback"),
        ("GET", "/h", {"x-canary": "1"}, "header-exact"),
        ("GET", "/h", {"x-canary": "2", "x-v": "v7"}, "header-regex"),
        ("GET", "/h", {"x-v": "v77"}, "fallback"),
        ("GET", "/h", {}, "header-absent"),
        ("GET", "/q?debug=1", {}, "query-exact"),
        ("GET", "/q?debug=2&v=42", {}, "query-regex"),
        ("GET", "/q?v=4x&flag", {}, "query-present"),
        ("GET", "/q?v=4x", {}, "fallback"),
        ("GET", "/e", {}, "exact"),
        ("GET", "/e/", {}, "fallback"),
        ("GET", "/r/123", {}, "regex"),
        ("GET", "/r/123/x", {}, "fallback"),
    ]
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for method, path, headers, want in cases:
            r = c.request(method, path, headers=headers)
            assert r.status_code == 200, (method, path, headers, r.text)
            assert r.headers["server-id"] == "up"
            assert r.headers["x-route"] == want, (method, path, headers)


def test_rewrites_and_header_edits_reach_the_upstream_and_the_client(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    api = {
        "name": "api",
        "match": {"path_prefix": "/api"},
        "to": [{"cluster": "up"}],
        "rewrite": {"path_prefix": "/v2", "host": "api.internal:9000"},
        "request_headers": {
            "set": {"x-set": "new"},
            "add": {"x-add": "added"},
            "remove": ["x-secret"],
        },
        "response_headers": {
            "set": {"x-served-by": "pymesh"},
            "add": {"x-extra": "2"},
            "remove": ["echo-method"],
        },
    }
    plain = {"name": "plain", "to": [{"cluster": "up"}]}
    m = mesh(
        {"listeners": [listener("ingress", [api, plain])], "clusters": [cluster("up", up.address)]}
    )
    ask = "echo_headers=x-set,x-add,x-secret,x-keep"
    sent = [
        ("host", "public.example.com"),
        ("x-set", "old"),
        ("x-add", "mine"),
        ("x-secret", "s3cret"),
        ("x-keep", "k"),
    ]
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        r = c.get(f"/api/users?{ask}", headers=sent)
        assert r.status_code == 200, r.text
        assert r.headers["echo-path"] == "/v2/users"
        assert r.headers["echo-query"] == ask
        assert r.headers["echo-host"] == "api.internal:9000"
        assert r.headers["echo-header-x-set"] == "new"
        assert r.headers["echo-header-x-add"] == "mine, added"
        assert "echo-header-x-secret" not in r.headers
        assert r.headers["echo-header-x-keep"] == "k"
        assert r.headers["x-served-by"] == "pymesh"
        assert r.headers["x-extra"] == "2"
        assert "echo-method" not in r.headers
        # The other route changes nothing.
        r = c.get(f"/apx?{ask}", headers=sent)
        assert r.headers["echo-path"] == "/apx"
        assert r.headers["echo-host"] == "public.example.com"
        assert r.headers["echo-header-x-secret"] == "s3cret"
        assert r.headers["echo-method"] == "GET"
        assert "x-served-by" not in r.headers


def test_direct_responses_and_redirects_answer_without_an_upstream(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    routes = [
        {
            "name": "teapot",
            "match": {"path": "/teapot"},
            "direct_response": {"status": 418, "body": "short and stout"},
            "response_headers": {"set": {"x-kind": "tea"}},
        },
        {"name": "moved", "match": {"path": "/old"}, "redirect": {"status": 301, "path": "/new"}},
        {
            "name": "docs",
            "match": {"path_prefix": "/docs/"},
            "redirect": {
                "status": 308,
                "scheme": "https",
                "host": "docs.example.com",
                "prefix_rewrite": "/manual/",
                "strip_query": True,
            },
        },
        {"name": "rest", "to": [{"cluster": "up"}]},
    ]
    m = mesh({"listeners": [listener("ingress", routes)], "clusters": [cluster("up", up.address)]})
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        for _ in range(3):
            r = c.get("/teapot")
            assert (r.status_code, r.text, r.headers["x-kind"]) == (418, "short and stout", "tea")
            assert "server-id" not in r.headers
        r = c.get("/old?a=1", headers={"host": "shop.example.com:8080"})
        assert (r.status_code, r.headers["location"]) == (
            301,
            "http://shop.example.com:8080/new?a=1",
        )
        r = c.get("/docs/guide/intro?lang=en", headers={"host": "www.example.com"})
        assert r.status_code == 308
        assert r.headers["location"] == "https://docs.example.com/manual/guide/intro"
        assert c.get("/other").headers["server-id"] == "up"

    def counted() -> str | None:
        text = m.metrics()
        n = metric(
            text,
            "pymesh_requests_total",
            status_class="4xx",
            listener="ingress",
            route="teapot",
            cluster="",
        )
        return text if n == 3 else None

    text = poll(counted, 5.0, what="3 direct responses counted under route teapot")
    moved = {"listener": "ingress", "route": "moved", "cluster": ""}
    assert metric(text, "pymesh_requests_total", status_class="3xx", **moved) == 1
    assert (
        metric(text, "pymesh_request_duration_seconds_count", listener="ingress", route="docs") == 1
    )


def test_unreachable_and_bad_routes_are_refused_and_the_old_config_keeps_serving(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("up")
    good = {
        "listeners": [listener("ingress", [tagged("only", {})])],
        "clusters": [cluster("up", up.address)],
    }
    m = mesh(good)
    shadowed = dict(
        good,
        listeners=[
            listener("ingress", [tagged("all", {}), tagged("api", {"path_prefix": "/api"})])
        ],
    )
    r = m.put_config(shadowed)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [
        {
            "loc": "listeners.0.routes.1.match",
            "msg": "this route can never match: listeners.0.routes.0 ('all'), earlier in the "
            "list, matches every request",
        }
    ]
    bad_regex = dict(good, listeners=[listener("ingress", [tagged("re", {"path_regex": "(?=x)"})])])
    r = m.put_config(bad_regex)
    assert r.status_code == 422, r.text
    (err,) = r.json()["errors"]
    assert err["loc"] == "listeners.0.routes.0.match.path_regex"
    assert "look-around" in err["msg"]
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        assert c.get("/api").headers["x-route"] == "only"
