"""The CLI commands that are clients of a running proxy's admin API: ``get``, ``apply``,
``diff``, ``rollback``, ``status``, ``tap`` and ``token``.

Human tables by default (rich), ``-o json`` / ``-o yaml`` for scripts. Exit codes: 0 ok,
1 failure (the server cannot be reached, refused the token, or failed), 2 invalid input
(a file that does not parse, a config the server finds invalid, a bad argument).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    # Imported where a table is printed: `pymesh run` builds this module's parsers but never
    # prints one, and rich cost the running proxy 1.8 MiB of its 60 MiB at rest.
    from rich.table import Table

from pymesh.client import AdminClient, AdminError, resolve_admin
from pymesh.diff import format_change
from pymesh.documents import DocumentError, parse_document
from pymesh.host import default_data_dir
from pymesh.tokens import ENV_TOKEN, first_read_write_secret

__all__ = ["COMMANDS", "add_commands", "run_command"]

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
RESOURCES = ("config", "listeners", "routes", "clusters", "endpoints", "versions")
COMMANDS = frozenset({"get", "apply", "diff", "rollback", "status", "tap", "token"})


class _Invalid(Exception):
    """Bad input from the user (exit 2)."""


def add_commands(sub: Any) -> None:
    """Add the admin-client subcommands to the ``pymesh`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", metavar="URL", help="admin API URL (env PYMESH_ADMIN)")
    common.add_argument("--token", metavar="TOKEN", help=f"admin token (env {ENV_TOKEN})")
    common.add_argument(
        "--data-dir", metavar="DIR", type=Path, help="where to find admin-url and the tokens"
    )
    common.add_argument("--cacert", metavar="FILE", help="CA file for an https admin URL")
    common.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default="table", help="format"
    )

    get = sub.add_parser("get", parents=[common], help="show config, listeners, routes, ...")
    get.add_argument("resource", choices=RESOURCES)
    get.add_argument("name", nargs="?", help="routes: a listener; endpoints: a cluster")

    apply = sub.add_parser("apply", parents=[common], help="print the diff, then apply a file")
    apply.add_argument("-f", "--file", required=True, metavar="FILE")
    apply.add_argument("--dry-run", action="store_true", help="print the diff only")

    diff = sub.add_parser("diff", parents=[common], help="what applying a file would change")
    diff.add_argument("file", metavar="FILE")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="apply version N again, as a new version"
    )
    rollback.add_argument("version", type=int, metavar="N")

    sub.add_parser("status", parents=[common], help="version, uptime, listeners, clusters")
    sub.add_parser("token", parents=[common], help="print the read-write admin token")

    tap = sub.add_parser(
        "tap", parents=[common], help="print requests live, as they finish (GET /tap)"
    )
    tap.add_argument("--listener", metavar="NAME", help="only this listener")
    tap.add_argument("--route", metavar="NAME", help="only this route")
    tap.add_argument("--cluster", metavar="NAME", help="only this cluster")
    tap.add_argument("--status", metavar="CODE", help="only this status (503) or class (5xx)")
    tap.add_argument("--path-prefix", metavar="PREFIX", help="only paths starting with this")
    tap.add_argument("--count", type=_positive, metavar="N", help="stop after N requests")
    tap.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, not {text!r}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = -1.0
    if not 0 < s < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return s


def run_command(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
    if args.command == "token":
        return _token(args, data_dir)
    url, token = resolve_admin(args.admin, args.token, data_dir)
    client = AdminClient(url, token, cafile=args.cacert)
    out = _Output(args.output)
    handlers: dict[str, Callable[[argparse.Namespace, AdminClient, _Output], int]] = {
        "get": _get,
        "apply": _apply,
        "diff": _diff,
        "rollback": _rollback,
        "status": _status,
        "tap": _tap,
    }
    try:
        return handlers[args.command](args, client, out)
    except _Invalid as e:
        _complain(f"pymesh {args.command}: {e}")
        return EXIT_INVALID
    except AdminError as e:
        _complain(f"pymesh {args.command}: {e}")
        for item in e.problem.get("errors") or []:
            _complain(f"  {item.get('loc')}: {item.get('msg')}")
        return EXIT_INVALID if e.status in (400, 422) else EXIT_FAILURE


def _complain(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Output:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.width = None if sys.stdout.isatty() else 200

    def data(self, value: Any, table: Callable[[], Table | str]) -> None:
        if self.fmt == "json":
            print(json.dumps(value, indent=2))
        elif self.fmt == "yaml":
            print(yaml.safe_dump(value, sort_keys=False), end="")
        else:
            shown = table()
            if isinstance(shown, str):
                print(shown, end="" if shown.endswith("\n") else "\n")
            else:
                from rich.console import Console  # noqa: PLC0415 (see the import of Table)

                Console(width=self.width, highlight=False, soft_wrap=False).print(shown)

    def line(self, text: str) -> None:
        print(text, flush=True)


def _table(*columns: str) -> Table:
    from rich.table import Table  # noqa: PLC0415 (see the import at the top)

    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    return t


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# === get ===


def _get(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    getters: dict[str, Callable[[argparse.Namespace, AdminClient, _Output], None]] = {
        "config": _get_config,
        "listeners": _get_listeners,
        "routes": _get_routes,
        "clusters": _get_clusters,
        "endpoints": _get_endpoints,
        "versions": _get_versions,
    }
    getters[args.resource](args, client, out)
    return EXIT_OK


def _get_config(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    cfg = client.get("/config").body
    out.data(cfg, lambda: yaml.safe_dump(cfg, sort_keys=False))


def _get_listeners(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    listeners = client.get("/listeners").body
    bound = client.get("/ready", ok=(200, 503)).body.get("listeners", {})

    def listeners_table() -> Table:
        t = _table("NAME", "LISTEN", "BOUND", "PROTOCOL", "ROUTES", "TLS")
        for lst in listeners:
            t.add_row(
                lst["name"],
                lst["listen"],
                bound.get(lst["name"], "-"),
                lst.get("protocol", "http"),
                str(len(lst.get("routes") or [])),
                "yes" if lst.get("tls") else "no",
            )
        return t

    out.data(listeners, listeners_table)


def _get_routes(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    names = [args.name] if args.name else [x["name"] for x in client.get("/listeners").body]
    routes = [
        {"listener": n, **r} for n in names for r in client.get(f"/listeners/{n}/routes").body
    ]

    def routes_table() -> Table:
        t = _table("LISTENER", "NAME", "MATCH", "TO")
        for r in routes:
            match = {k: v for k, v in (r.get("match") or {}).items() if v not in (None, [])}
            if r.get("to"):
                to = ", ".join(f"{w['cluster']}({w.get('weight', 1)})" for w in r["to"])
            elif r.get("redirect"):
                to = "redirect"
            else:
                to = "direct response"
            t.add_row(r["listener"], r["name"], _text(match or "*"), to)
        return t

    out.data(routes, routes_table)


def _get_clusters(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    clusters = client.get("/clusters").body

    def clusters_table() -> Table:
        t = _table("NAME", "LB", "PROTOCOL", "ENDPOINTS", "HEALTHY", "REQUESTS")
        for c in clusters:
            eps = c["endpoints"]
            known = [e["healthy"] for e in eps if e.get("healthy") is not None]
            healthy = f"{sum(known)}/{len(eps)}" if known else "-"
            t.add_row(
                c["name"],
                c["spec"].get("lb", "-"),
                c["spec"].get("protocol", "-"),
                str(len(eps)),
                healthy,
                _text(c["stats"].get("requests_total")),
            )
        return t

    out.data(clusters, clusters_table)


def _get_endpoints(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    clusters = client.get("/clusters").body
    if args.name:
        clusters = [c for c in clusters if c["name"] == args.name]
        if not clusters:
            raise AdminError(f"no cluster named {args.name!r}", 404)
    rows = [{"cluster": c["name"], **e} for c in clusters for e in c["endpoints"]]

    def endpoints_table() -> Table:
        t = _table("CLUSTER", "ADDRESS", "HEALTHY", "EJECTED", "LEASE")
        for e in rows:
            lease = "-"
            if e.get("lease_ttl") is not None:
                lease = f"{e['lease_expires_in']:.1f}s of {e['lease_ttl']:g}s"
            t.add_row(
                e["cluster"],
                e["address"],
                _text(e.get("healthy")),
                _text(e.get("ejected")),
                lease,
            )
        return t

    out.data(rows, endpoints_table)


def _get_versions(args: argparse.Namespace, client: AdminClient, out: _Output) -> None:
    versions = client.get("/config/versions").body

    def versions_table() -> Table:
        t = _table("VERSION", "APPLIED", "TOKEN", "SOURCE", "CHANGES")
        for v in versions:
            t.add_row(
                str(v["version"]),
                v["applied_at"],
                _text(v["token"]),
                v["source"],
                str(v["changes"]),
            )
        return t

    out.data(versions, versions_table)


# === apply, diff, rollback ===


def _read(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Invalid(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = parse_document(text)
    except DocumentError as e:
        raise _Invalid(f"{path}: {e}") from None
    if data is None:
        raise _Invalid(f"{path}: the file is empty")
    return data


def _dry_run(client: AdminClient, data: Any) -> dict[str, Any]:
    reply: dict[str, Any] = client.request("POST", "/config/validate", data, ok=(200,)).body
    return reply


def _print_changes(out: _Output, result: dict[str, Any]) -> None:
    changes = result["changes"]
    if not changes:
        out.line(f"no changes against version {result['version']}")
        return
    out.line(f"{len(changes)} change(s) against version {result['version']}:")
    for change in changes:
        out.line(f"  {format_change(change)}")


def _diff(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    result = _dry_run(client, _read(args.file))
    out.data(result, lambda: "\n".join(format_change(c) for c in result["changes"]) or "")
    return EXIT_OK


def _apply(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    data = _read(args.file)
    result = _dry_run(client, data)
    if args.output != "table":
        if args.dry_run or not result["changes"]:
            out.data(result, lambda: "")
            return EXIT_OK
    else:
        _print_changes(out, result)
    if args.dry_run:
        return EXIT_OK
    if not result["changes"]:
        if args.output == "table":
            out.line("unchanged")
        return EXIT_OK
    # Apply only on top of the version the diff was made against: a change in between is a
    # 409, not a silent overwrite.
    reply = client.request("PUT", "/config", data, headers={"If-Match": f'"{result["version"]}"'})
    out.data(reply.body, lambda: f"applied: version {reply.body['version']}")
    return EXIT_OK


def _rollback(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    if args.version < 1:
        raise _Invalid("N is a version number, 1 or more")
    reply = client.request("POST", f"/config/rollback/{args.version}")
    out.data(
        reply.body,
        lambda: f"rolled back to version {args.version}: now version {reply.body['version']}",
    )
    return EXIT_OK


# === status, token ===


def _status(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    ready = client.get("/ready", ok=(200, 503)).body
    stats = client.get("/stats").body
    clusters = client.get("/clusters", ok=(200, 404)).body
    clusters = clusters if isinstance(clusters, list) else []
    summary = {
        "ready": ready.get("ready"),
        "version": ready.get("version"),
        "uptime_seconds": stats.get("uptime_seconds"),
        "listeners": ready.get("listeners", {}),
        "clusters": {
            c["name"]: {
                "endpoints": len(c["endpoints"]),
                "healthy": sum(1 for e in c["endpoints"] if e.get("healthy") is True)
                if any(e.get("healthy") is not None for e in c["endpoints"])
                else None,
            }
            for c in clusters
        },
    }

    def status_text() -> Table:
        t = _table("", "")
        t.show_header = False
        t.add_row("ready", _text(summary["ready"]))
        t.add_row("version", _text(summary["version"]))
        t.add_row("uptime", f"{summary['uptime_seconds'] or 0:.0f}s")
        for name, addr in summary["listeners"].items():
            t.add_row(f"listener {name}", addr)
        for name, c in summary["clusters"].items():
            healthy = "health not reported" if c["healthy"] is None else f"{c['healthy']} healthy"
            t.add_row(f"cluster {name}", f"{c['endpoints']} endpoints, {healthy}")
        return t

    out.data(summary, status_text)
    return EXIT_OK if summary["ready"] else EXIT_FAILURE


# === tap ===

_TAP_COLUMNS = (
    ("TIME", 12),
    ("LISTENER", 10),
    ("ROUTE", 12),
    ("CLUSTER", 12),
    ("STATUS", 6),
    ("FLAGS", 7),
    ("MS", 9),
    ("TRIES", 5),
    ("ENDPOINT", 21),
    ("METHOD", 7),
    ("AUTHORITY", 20),
    ("PATH", 0),
)


def _tap_row(cells: list[str]) -> str:
    parts = [
        c if width == 0 else c[:width].ljust(width)
        for c, (_, width) in zip(cells, _TAP_COLUMNS, strict=True)
    ]
    return " ".join(parts).rstrip()


def _tap(args: argparse.Namespace, client: AdminClient, out: _Output) -> int:
    filters = {
        "listener": args.listener,
        "route": args.route,
        "cluster": args.cluster,
        "status": args.status,
        "path_prefix": args.path_prefix,
    }
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    deadline = None if args.duration is None else time.monotonic() + args.duration
    if out.fmt == "table":
        out.line(_tap_row([name for name, _ in _TAP_COLUMNS]))
    shown = 0
    stream = client.events("/tap" + (f"?{query}" if query else ""))
    try:
        for event in stream:
            if event is not None:
                shown += 1
                _tap_event(out, event)
            if args.count is not None and shown >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return EXIT_OK


def _tap_event(out: _Output, e: dict[str, Any]) -> None:
    if out.fmt == "json":
        out.line(json.dumps(e, separators=(",", ":")))
        return
    if out.fmt == "yaml":
        out.line("---\n" + yaml.safe_dump(e, sort_keys=False).rstrip("\n"))
        return
    time_text = str(e.get("time", ""))
    clock = time_text[11:23] if len(time_text) >= 23 else time_text
    out.line(
        _tap_row(
            [
                clock,
                _text(e.get("listener")),
                _text(e.get("route")),
                _text(e.get("cluster")),
                _text(e.get("status")),
                _text(e.get("flags")),
                f"{e.get('duration_ms', 0):.3f}",
                _text(e.get("attempts")),
                _text(e.get("endpoint")),
                _text(e.get("method")),
                _text(e.get("authority")),
                _text(e.get("path")),
            ]
        )
    )


def _token(args: argparse.Namespace, data_dir: Path) -> int:
    secret = args.token or os.environ.get(ENV_TOKEN)
    if not secret:
        try:
            secret = first_read_write_secret(data_dir)
        except ValueError as e:
            _complain(f"pymesh token: {e}")
            return EXIT_INVALID
    if not secret:
        _complain(f"pymesh token: no read-write token in {data_dir} (and {ENV_TOKEN} unset)")
        return EXIT_FAILURE
    print(secret)
    return EXIT_OK
