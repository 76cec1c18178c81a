"""Routing config: the models' checks with exact field paths, unreachable routes, and the
snapshot form of every routing field (pure Python: nothing is served)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pymesh.config import load_config
from pymesh.errors import ConfigError
from pymesh.snapshot import to_snapshot

TO = [{"cluster": "a"}]
R = "listeners.0.routes"


def config(*routes: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": [{"name": "in", "listen": "127.0.0.1:0", "routes": list(routes)}],
        "clusters": [{"name": "a", "endpoints": ["127.0.0.1:9001"]}],
    }


def errors_of(*routes: dict[str, Any]) -> dict[str, str]:
    """loc -> msg of every problem found in a config with these routes."""
    with pytest.raises(ConfigError) as info:
        load_config(config(*routes))
    return {e["loc"]: e["msg"] for e in info.value.errors}


def snapshot_routes(*routes: dict[str, Any]) -> list[dict[str, Any]]:
    snap = to_snapshot(load_config(config(*routes)), 1)
    json.dumps(snap)  # it must be plain JSON data
    routes_out: list[dict[str, Any]] = snap["listeners"][0]["routes"]
    return routes_out


# === matches ===


@pytest.mark.parametrize(
    ("match", "loc", "says"),
    [
        ({"host": "a.com:8080"}, "match.host", "without a port"),
        ({"host": "*"}, "match.host", "not a host name"),
        ({"host": "a..com"}, "match.host", "not a host name"),
        ({"host": "x.*.com"}, "match.host", "not a host name"),
        ({"host": "[zz]"}, "match.host", "not an IPv6 address"),
        ({"path_regex": "(?=a)"}, "match.path_regex", "look-around"),
        ({"path_regex": "a)|(b"}, "match.path_regex", "invalid regex"),
        ({"path_regex": "/a", "path": "/a"}, "match", "at most one"),
        ({"path": "/a", "path_prefix": "/a"}, "match", "at most one"),
        ({"methods": ["get"]}, "match.methods.0", "write 'GET'"),
        ({"methods": ["GET", "G T"]}, "match.methods.1", "not an HTTP method"),
        ({"methods": ["GET", "GET"]}, "match", "listed twice"),
        ({"headers": {"x a": "1"}}, "match.headers.0.name", "not a header name"),
        ({"headers": {"x-a": "1\n2"}}, "match.headers.0.exact", "not a header value"),
        ({"headers": [{"name": "x-a"}]}, "match.headers.0", "exactly one"),
        ({"headers": [{"name": "x-a", "exact": "1", "present": True}]}, "match.headers.0", "one"),
        ({"headers": [{"name": "x-a", "regex": "["}]}, "match.headers.0.regex", "invalid regex"),
        ({"headers": [{"name": "x-a", "absent": True}]}, "match.headers.0.absent", "Extra"),
        ({"query": {"a=b": "1"}}, "match.query.0.name", "not a query parameter name"),
        ({"query": {"a": "1&b=2"}}, "match.query.0.exact", "never be a raw query value"),
        ({"query": [{"name": "a", "regex": "("}]}, "match.query.0.regex", "invalid regex"),
        ({"query": [{"name": "a"}]}, "match.query.0", "exactly one"),
    ],
)
def test_bad_matches_are_refused_with_their_path(
    match: dict[str, Any], loc: str, says: str
) -> None:
    errors = errors_of({"match": match, "to": TO})
    assert errors.keys() == {f"{R}.0.{loc}"}, errors
    assert says in errors[f"{R}.0.{loc}"]


def test_regex_errors_are_the_cores_one_line_messages() -> None:
    msg = errors_of({"match": {"path_regex": "(?<=a)b"}, "to": TO})[f"{R}.0.match.path_regex"]
    assert "\n" not in msg
    assert msg.startswith("'(?<=a)b': invalid regex: look-around")


def test_match_shorthands_and_normal_forms() -> None:
    route = {
        "match": {
            "host": "API.Example.com",
            "path_regex": "/v[0-9]+/.*",
            "methods": ["GET", "POST"],
            "headers": {"X-Canary": 1},
            "query": [{"name": "debug", "present": True}, {"name": "v", "regex": "[0-9]+"}],
        },
        "to": TO,
    }
    (out,) = snapshot_routes(route)
    assert out["match"] == {
        "host": "api.example.com",
        "path": None,
        "path_prefix": None,
        "path_regex": "/v[0-9]+/.*",
        "methods": ["GET", "POST"],
        "headers": [{"name": "x-canary", "exact": "1", "regex": None, "present": None}],
        "query": [
            {"name": "debug", "exact": None, "regex": None, "present": True},
            {"name": "v", "exact": None, "regex": "[0-9]+", "present": None},
        ],
    }


def test_no_path_condition_is_a_prefix_of_slash() -> None:
    (out,) = snapshot_routes({"match": {"host": "*.example.com"}, "to": TO})
    assert (out["match"]["path"], out["match"]["path_prefix"]) == (None, "/")
    assert out["match"]["host"] == "*.example.com"


# === actions ===


def test_a_route_has_exactly_one_action() -> None:
    both = errors_of({"to": TO, "direct_response": {"status": 200}})
    assert both == {f"{R}.0": "set exactly one of 'to', 'direct_response' and 'redirect'"}
    assert errors_of({"match": {"path": "/x"}}).keys() == {f"{R}.0"}
    assert errors_of({"to": []}).keys() == {f"{R}.0.to"}


@pytest.mark.parametrize(
    ("route", "loc", "says"),
    [
        ({"direct_response": {"status": 199}}, "direct_response.status", "greater than"),
        ({"direct_response": {"status": 600}}, "direct_response.status", "less than"),
        (
            {"direct_response": {"status": 200, "body": "x" * 65537}},
            "direct_response.body",
            "65536 bytes",
        ),
        ({"redirect": {"status": 304}}, "redirect.status", "301, 302, 303, 307 or 308"),
        ({"redirect": {"scheme": "ftp"}}, "redirect.scheme", "'http' or 'https'"),
        ({"redirect": {"host": "a b"}}, "redirect.host", "not a host"),
        ({"redirect": {"host": "a.com:99999"}}, "redirect.host", "not a host"),
        ({"redirect": {"path": "new"}}, "redirect.path", "start with '/'"),
        ({"redirect": {"path": "/a", "prefix_rewrite": "/b"}}, "redirect", "at most one"),
        ({"redirect": {"path": "/a"}, "rewrite": {"host": "x"}}, "rewrite", "only to forwarded"),
        (
            {"direct_response": {"status": 200}, "request_headers": {"remove": ["x-a"]}},
            "request_headers",
            "only to forwarded",
        ),
        ({"to": TO, "rewrite": {"path_prefix": "v2"}}, "rewrite.path_prefix", "start with '/'"),
        ({"to": TO, "rewrite": {"host": "http://x"}}, "rewrite.host", "not a host"),
        ({"to": TO, "request_headers": {"set": {"host": "x"}}}, "request_headers.set.host", "host"),
        ({"to": TO, "request_headers": {"add": {"x a": "1"}}}, "request_headers.add.x a", "name"),
        (
            {"to": TO, "response_headers": {"set": {"x-a": "\r\n"}}},
            "response_headers.set.x-a",
            "value",
        ),
        (
            {"to": TO, "response_headers": {"remove": ["x-ok", "Transfer-Encoding"]}},
            "response_headers.remove.1",
            "managed by the proxy",
        ),
    ],
)
def test_bad_actions_are_refused_with_their_path(
    route: dict[str, Any], loc: str, says: str
) -> None:
    errors = errors_of(route)
    assert errors.keys() == {f"{R}.0.{loc}"}, errors
    assert says in errors[f"{R}.0.{loc}"]


def test_prefix_rewrites_need_a_prefix_to_replace() -> None:
    errors = errors_of(
        {"match": {"path_regex": "/a/.*"}, "to": TO, "rewrite": {"path_prefix": "/b"}},
        {"match": {"path_regex": "/c/.*"}, "redirect": {"prefix_rewrite": "/d"}},
    )
    assert errors == {
        f"{R}.0.rewrite.path_prefix": "a path_regex match has no prefix to rewrite",
        f"{R}.1.redirect.prefix_rewrite": "a path_regex match has no prefix to rewrite",
    }


def test_actions_in_the_snapshot() -> None:
    routes = snapshot_routes(
        {
            "name": "api",
            "match": {"path_prefix": "/api"},
            "to": [{"cluster": "a", "weight": 3}],
            "rewrite": {"path_prefix": "/v2", "host": "api.internal:8080"},
            "request_headers": {"set": {"X-A": "1"}, "add": {"x-b": "2"}, "remove": ["X-C"]},
            "response_headers": {"add": {"x-served-by": "pymesh"}},
        },
        {"match": {"path": "/old"}, "redirect": {"path": "/new"}},
        {"match": {"path": "/teapot"}, "direct_response": {"status": 418, "body": "short"}},
    )
    api, old, teapot = routes
    assert api["rewrite"] == {"path_prefix": "/v2", "host": "api.internal:8080"}
    assert api["request_headers"] == {
        "set": [{"name": "x-a", "value": "1"}],
        "add": [{"name": "x-b", "value": "2"}],
        "remove": ["x-c"],
    }
    assert api["response_headers"]["add"] == [{"name": "x-served-by", "value": "pymesh"}]
    assert (api["direct_response"], api["redirect"]) == (None, None)
    assert old["to"] == []
    assert old["redirect"] == {
        "status": 301,
        "scheme": None,
        "host": None,
        "path": "/new",
        "prefix_rewrite": None,
        "strip_query": False,
    }
    assert old["rewrite"] == {"path_prefix": None, "host": None}
    assert teapot["direct_response"] == {"status": 418, "body": "short"}
    assert (teapot["to"], teapot["redirect"]) == ([], None)


# === unreachable routes ===


def test_a_catch_all_shadows_every_later_route() -> None:
    errors = errors_of(
        {"match": {"path": "/first"}, "to": TO},
        {"name": "all", "to": TO},
        {"match": {"host": "a.com", "methods": ["GET"], "headers": {"x": "1"}}, "to": TO},
        {"match": {"path_regex": "/x.*"}, "redirect": {"path": "/y"}},
    )
    msg = f"this route can never match: {R}.1 ('all'), earlier in the list, matches every request"
    assert errors == {f"{R}.2.match": msg, f"{R}.3.match": msg}


def test_an_exact_duplicate_match_is_unreachable() -> None:
    same = {"host": "a.com", "path": "/x", "methods": ["GET"], "query": {"q": "1"}}
    errors = errors_of(
        {"name": "one", "match": same, "to": TO},
        {"name": "two", "match": dict(same, host="A.com"), "direct_response": {"status": 204}},
    )
    assert errors == {
        f"{R}.1.match": f"this route can never match: {R}.0 ('one'), earlier in the list, "
        "matches every request this one does"
    }


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ({"path_prefix": "/api"}, {"path": "/api/x", "methods": ["GET"]}),
        ({"path_prefix": "/api"}, {"path_prefix": "/api/v2"}),
        ({"host": "*.a.com"}, {"host": "x.a.com", "path": "/p"}),
        ({"host": "*.a.com"}, {"host": "*.b.a.com"}),
        ({"methods": ["GET", "POST"]}, {"methods": ["GET"], "path": "/p"}),
        (
            {"headers": {"x": "1"}},
            {"headers": [{"name": "x", "exact": "1"}, {"name": "y", "present": True}]},
        ),
        (
            {"headers": [{"name": "x", "present": True}]},
            {"headers": [{"name": "x", "regex": "a.*"}]},
        ),
        ({"query": [{"name": "q", "present": True}]}, {"query": {"q": "1"}}),
    ],
)
def test_an_earlier_route_that_covers_a_later_one_is_refused(
    earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    errors = errors_of({"match": earlier, "to": TO}, {"match": later, "to": TO})
    assert errors.keys() == {f"{R}.1.match"}
    assert f"{R}.0 ('route-0')" in errors[f"{R}.1.match"]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ({"path_prefix": "/api"}, {"path_prefix": "/"}),
        ({"path": "/a"}, {"path_prefix": "/a"}),
        ({"path_prefix": "/api"}, {"path_regex": "/api/.*"}),
        ({"host": "a.com"}, {"host": "*.a.com"}),
        ({"host": "*.a.com"}, {"host": "a.com"}),
        ({"methods": ["GET"]}, {"methods": ["GET", "POST"]}),
        ({"methods": ["GET"]}, {}),
        ({"headers": {"x": "1"}}, {"headers": {"x": "2"}}),
        (
            {"headers": [{"name": "x", "present": True}]},
            {"headers": [{"name": "x", "present": False}]},
        ),
        ({"query": {"q": "1"}}, {"path": "/p"}),
    ],
)
def test_overlapping_but_reachable_routes_are_kept(
    earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    cfg = load_config(config({"match": earlier, "to": TO}, {"match": later, "to": TO}))
    assert len(cfg.listeners[0].routes) == 2
