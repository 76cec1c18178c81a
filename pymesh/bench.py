"""``pymesh bench``: the bundled load generator (Rust, in the core; the GIL is released).

``run(url, ...)`` answers a :class:`BenchResult`; ``compare(a, b, ...)`` runs two targets in
alternating rounds. The command line lives in :func:`command`, called by ``pymesh.cli``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymesh import _core
from pymesh.durations import parse_duration

__all__ = ["BenchErrors", "BenchResult", "Latency", "add_arguments", "command", "compare", "run"]


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in microseconds, from an HdrHistogram (3 significant digits)."""

    p50: int
    p90: int
    p99: int
    p999: int
    p9999: int
    max: int
    mean: float


@dataclass(frozen=True)
class BenchErrors:
    """Failed requests by kind."""

    connect: int
    timeout: int
    reset: int
    protocol: int

    @property
    def total(self) -> int:
        return self.connect + self.timeout + self.reset + self.protocol


@dataclass(frozen=True)
class BenchResult:
    """One run. ``status`` maps each status code (as a string) to its count."""

    requests: int
    errors: BenchErrors
    duration_s: float
    rps: float
    bytes: int
    status: dict[str, int]
    latency_us: Latency

    @classmethod
    def from_core(cls, raw: Mapping[str, Any]) -> BenchResult:
        return cls(
            requests=int(raw["requests"]),
            errors=BenchErrors(**raw["errors"]),
            duration_s=float(raw["duration_s"]),
            rps=float(raw["rps"]),
            bytes=int(raw["bytes"]),
            status={str(k): int(v) for k, v in raw["status"].items()},
            latency_us=Latency(**raw["latency_us"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The documented JSON object of ``pymesh bench --json``."""
        out = asdict(self)
        out["errors"]["total"] = self.errors.total
        return out


def _seconds(value: str | float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        # Config durations must be positive; a bench option may be zero (no warm-up).
        if value.rstrip("mshd").strip("0.") == "" and value[:1] == "0":
            return 0.0
        try:
            return parse_duration(value).total_seconds()
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return float(value)


def run(
    url: str,
    *,
    connections: int = 10,
    threads: int = 1,
    duration: str | float | None = None,
    requests: int | None = None,
    rate: float | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: str | float = "10s",
    warmup: str | float = 0.0,
    progress: bool = False,
    http2: bool = False,
    streams: int = 1,
    cacert: str | None = None,
    insecure: bool = False,
    cert: str | None = None,
    key: str | None = None,
) -> BenchResult:
    """Load ``url`` and answer what happened. Durations are seconds or strings like ``"5s"``.

    Closed loop by default; with ``rate`` (requests/s over all connections) an open loop
    whose latencies count from each request's due time (coordinated-omission corrected).
    ``http2`` speaks HTTP/2 (h2c by prior knowledge, or ALPN over ``https://``) with
    ``streams`` concurrent streams per connection; ``cacert``, ``insecure``, ``cert`` and
    ``key`` set up TLS for ``https://`` URLs.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    raw = _core.run_bench(
        url,
        connections=connections,
        threads=threads,
        duration_s=_seconds(duration, "duration"),
        requests=requests,
        rate=rate,
        method=method,
        headers=pairs,
        body=body,
        timeout_s=_seconds(timeout, "timeout") or 0.0,
        warmup_s=_seconds(warmup, "warmup") or 0.0,
        progress=progress,
        http2=http2,
        streams=streams,
        cacert=cacert,
        insecure=insecure,
        cert=cert,
        key=key,
    )
    return BenchResult.from_core(raw)


def compare(
    url_a: str, url_b: str, *, rounds: int = 3, **options: Any
) -> tuple[list[BenchResult], list[BenchResult]]:
    """Run two targets alternately for ``rounds`` rounds (a, b, a, b, ...)."""
    a: list[BenchResult] = []
    b: list[BenchResult] = []
    for _ in range(rounds):
        a.append(run(url_a, **options))
        b.append(run(url_b, **options))
    return a, b


# === command line ===


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="http://host:port/path")
    p.add_argument("-c", "--connections", type=int, default=10, help="connections (default 10)")
    p.add_argument("-t", "--threads", type=int, default=1, help="threads (default 1)")
    p.add_argument("-d", "--duration", help="measured time, e.g. 10s (default 10s unless -n)")
    p.add_argument("-n", "--requests", type=int, help="number of requests")
    p.add_argument("-R", "--rate", type=float, help="open loop: requests/s over all connections")
    p.add_argument("-X", "--method", default="GET", help="HTTP method (default GET)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeat)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body")
    body.add_argument("--body-file", type=Path, help="request body from a file")
    p.add_argument("--timeout", default="10s", help="per-request timeout (default 10s)")
    p.add_argument("--warmup", default="0s", help="unmeasured warm-up time (default 0s)")
    p.add_argument("--http2", action="store_true", help="speak HTTP/2 (h2c, or h2 over https)")
    p.add_argument("-m", "--streams", type=int, default=1, help="HTTP/2 streams per connection")
    p.add_argument("--cacert", help="PEM file of CAs to trust (https)")
    p.add_argument("--insecure", action="store_true", help="accept any server certificate")
    p.add_argument("--cert", help="client certificate PEM (mutual TLS)")
    p.add_argument("--key", help="client key PEM (mutual TLS)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", metavar="URL2", help="alternate with a second target")
    p.add_argument("--rounds", type=int, default=3, help="rounds with --compare (default 3)")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"-H {text!r}: a header is 'Name: value'")
    return name.strip(), value.strip()


def command(args: argparse.Namespace) -> int:
    """``pymesh bench``; answers the exit code (2 for bad options, 1 if every request failed)."""
    try:
        headers = [_header(h) for h in args.header]
        body = args.body_file.read_bytes() if args.body_file else (args.body or "").encode()
        duration = args.duration or (None if args.requests else "10s")
        options: dict[str, Any] = {
            "connections": args.connections,
            "threads": args.threads,
            "duration": duration,
            "requests": args.requests,
            "rate": args.rate,
            "method": args.method,
            "headers": headers,
            "body": body,
            "timeout": args.timeout,
            "warmup": args.warmup,
            "http2": args.http2,
            "streams": args.streams,
            "cacert": args.cacert,
            "insecure": args.insecure,
            "cert": args.cert,
            "key": args.key,
        }
        if args.compare:
            a, b = compare(args.url, args.compare, rounds=args.rounds, **options)
            _print_compare(args, a, b)
            ok = all(r.requests > 0 for r in a + b)
        else:
            progress = not args.json and sys.stderr.isatty()
            result = run(args.url, progress=progress, **options)
            if args.json:
                print(json.dumps(result.to_json()))
            else:
                print(summary(args.url, result))
            ok = result.requests > 0
    except (ValueError, OSError) as e:
        print(f"pymesh bench: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def summary(url: str, r: BenchResult) -> str:
    """A readable table of one result."""
    lat = r.latency_us
    statuses = "  ".join(f"{k}: {v}" for k, v in sorted(r.status.items())) or "none"
    e = r.errors
    rows = [
        f"target      {url}",
        f"requests    {r.requests} in {r.duration_s:.2f}s  ({r.rps:,.0f} req/s, "
        f"{r.bytes / max(r.duration_s, 1e-9) / 1e6:.1f} MB/s)",
        f"status      {statuses}",
        f"errors      {e.total} (connect {e.connect}, timeout {e.timeout}, reset {e.reset}, "
        f"protocol {e.protocol})",
        "latency     p50       p90       p99       p99.9     p99.99    max",
        "            "
        + "".join(
            f"{_ms(v):<10}" for v in (lat.p50, lat.p90, lat.p99, lat.p999, lat.p9999, lat.max)
        ),
    ]
    return "\n".join(row.rstrip() for row in rows)


def _ms(us: int) -> str:
    return f"{us / 1000:.3f}ms"


def _print_compare(args: argparse.Namespace, a: list[BenchResult], b: list[BenchResult]) -> None:
    def med(rs: list[BenchResult], key: str) -> float:
        values = [r.rps if key == "rps" else float(getattr(r.latency_us, key)) for r in rs]
        return statistics.median(values)

    if args.json:
        print(
            json.dumps(
                {
                    "a": {"url": args.url, "rounds": [r.to_json() for r in a]},
                    "b": {"url": args.compare, "rounds": [r.to_json() for r in b]},
                    "ratio_b_over_a": {
                        k: med(b, k) / max(med(a, k), 1e-9) for k in ("rps", "p50", "p99")
                    },
                }
            )
        )
        return
    print(f"{'':8}{'req/s':>12}{'p50':>12}{'p99':>12}   (medians of {len(a)} rounds)")
    for name, rs in (("A", a), ("B", b)):
        p50, p99 = _ms(int(med(rs, "p50"))), _ms(int(med(rs, "p99")))
        print(f"{name:8}{med(rs, 'rps'):>12,.0f}{p50:>12}{p99:>12}")
    ratios = [med(b, k) / max(med(a, k), 1e-9) for k in ("rps", "p50", "p99")]
    print(f"{'B/A':8}" + "".join(f"{x:>12.3f}" for x in ratios))
    print(f"A = {args.url}\nB = {args.compare}")
