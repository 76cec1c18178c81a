"""``pymesh policy explain LISTENER/ROUTE``: every policy setting of a route (and of its
clusters) with its effective value, the level it came from and the config path that set it.

With ``--config FILE`` the file is resolved locally (nothing needs to run); otherwise the
running proxy's admin API is asked (``GET /policy/effective``).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pymesh.config import load_config_file
from pymesh.errors import ConfigError
from pymesh.policy import effective

__all__ = ["add_arguments", "command"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
DEFAULT_ADMIN = "http://127.0.0.1:9901"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    explain = sub.add_parser(
        "explain", help="show a route's effective policies and where each value came from"
    )
    explain.add_argument("route", metavar="LISTENER/ROUTE", help="e.g. ingress/api")
    explain.add_argument(
        "--cluster",
        metavar="NAME",
        action="append",
        help="also show this cluster's policies (default: every cluster of the route)",
    )
    where = explain.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE", help="resolve this config file locally")
    where.add_argument(
        "--admin", metavar="URL", help=f"ask this running proxy (default {DEFAULT_ADMIN})"
    )
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")


def command(args: argparse.Namespace) -> int:
    """Run ``pymesh policy ...``; answer the exit code."""
    results: list[dict[str, Any]] = []
    try:
        first = _effective(args, args.route, None)
        results.append(first)
        for cluster in args.cluster or first.get("clusters", []):
            results.append(_effective(args, None, cluster))
    except ConfigError as e:
        print(f"pymesh policy: invalid config {args.config}:", file=sys.stderr)
        for line in e.lines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    except LookupError as e:
        print(f"pymesh policy: {e.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as e:
        print(f"pymesh policy: cannot reach the admin API: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            _print_table(result)
    return EXIT_OK


def _effective(args: argparse.Namespace, route: str | None, cluster: str | None) -> dict[str, Any]:
    if args.config is not None:
        result = effective(load_config_file(args.config), route, cluster)
        if isinstance(result, str):
            raise LookupError(result)
        return result
    base = (args.admin or DEFAULT_ADMIN).rstrip("/")
    query = urllib.parse.urlencode({k: v for k, v in (("route", route), ("cluster", cluster)) if v})
    try:
        with urllib.request.urlopen(f"{base}/policy/effective?{query}", timeout=10) as resp:
            body: dict[str, Any] = json.load(resp)
            return body
    except urllib.error.HTTPError as e:
        detail = json.loads(e.read() or b"{}").get("detail", str(e))
        raise LookupError(detail) from None


def _print_table(result: dict[str, Any]) -> None:
    if result.get("route"):
        clusters = ", ".join(result.get("clusters", []))
        print(f"route {result['route']} (clusters: {clusters})")
    else:
        print(f"cluster {result['cluster']}")
    rows = [
        (s["setting"], _value(s["value"]), s["level"], s["loc"] or "-") for s in result["settings"]
    ]
    head = ("SETTING", "VALUE", "LEVEL", "FROM")
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(3)]
    for r in [head, *rows]:
        print(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print()


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return str(value)
