"""What observability costs: proxy CPU per request with JSON access logs to a file and 1%
trace sampling (spans exported over OTLP/HTTP to a local collector) on, versus both off, in
the same run. Metrics are on in both: the core's counters cannot be turned off, so they are
part of the baseline (their cost is a few relaxed atomic adds per request).

Two ``pymesh run`` processes serve the same ``pymesh echo``, one configured ``off`` and one
``on``; both are pinned to CPU 1 (the upstream and the load generator to CPU 0 when the
machine has two CPUs) and the bundled load generator alternates between them for
``--rounds`` rounds, so that machine noise falls on both alike. A process's CPU time (user +
system, from /proc) over a run divided by its requests is the figure, as in DESIGN.md.

    .venv/bin/python benches/observability_cost.py [--seconds 5] [--rounds 5] [--connections 32]

Target (issue 7): at most 10% more proxy CPU per request.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml
from policy_overhead import PYMESH, cpu_seconds, start

from pymesh.bench import run


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and counts its bytes."""

    received = 0

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length", "0"))
        Collector.received += len(self.rfile.read(n))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def config(
    upstream: str, observed: bool, log: Path, collector: str, only: str | None
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "web",
        "listen": "127.0.0.1:0",
        "routes": [{"to": [{"cluster": "echo"}]}],
    }
    cfg: dict[str, Any] = {
        "listeners": [listener],
        "clusters": [{"name": "echo", "endpoints": [upstream]}],
    }
    if observed and only != "tracing":
        listener["access_log"] = {"format": "json", "path": str(log)}
    if observed and only != "access-log":
        cfg["tracing"] = {"otlp_endpoint": collector, "sample_percent": 1.0}
    return cfg


def mesh(cfg: dict[str, Any], tmp: Path) -> tuple[subprocess.Popen[str], str]:
    tmp.mkdir()
    path = tmp / "mesh.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = [PYMESH, "run", "--config", str(path), "--admin", "127.0.0.1:0"]
    args += ["--workers", "1", "--data-dir", str(tmp)]
    proc, addr = start(args, r"pymesh: listener \S+ on (\S+)", 1)
    return proc, f"http://{addr}/"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument(
        "--only",
        choices=["access-log", "tracing"],
        help="turn on just one of the two (to see what each costs)",
    )
    a = p.parse_args()

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    traces = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    echo, upstream = start(
        [PYMESH, "echo", "--listen", "127.0.0.1:0", "--workers", "1"], r"listening on (\S+)", 0
    )
    procs = [echo]
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        try:
            urls: dict[str, str] = {}
            for name in ("off", "on"):
                cfg = config(upstream, name == "on", log, traces, a.only)
                proc, urls[name] = mesh(cfg, Path(tmp) / name)
                procs.append(proc)
            pids = {"off": procs[1].pid, "on": procs[2].pid}
            for name in ("off", "on"):  # warm both processes and their pools
                run(urls[name], connections=a.connections, duration=1.0)
            for _ in range(a.rounds):
                for name in ("off", "on"):
                    before = cpu_seconds(pids[name])
                    r = run(urls[name], connections=a.connections, duration=a.seconds)
                    used = cpu_seconds(pids[name]) - before
                    ok = r.status.get("200", 0)
                    assert ok == r.requests and r.errors.total == 0, r
                    results[name].append((r.rps, used / r.requests * 1e6))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)
        lines = log.read_text().count("\n") if log.exists() else 0
    collector.shutdown()
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in results.items()
    }
    for name, (rps, cpu) in med.items():
        print(f"observability {name:>3}: {rps:>9.0f} req/s  {cpu:6.2f} us proxy CPU per request")
    print(f"access log lines written: {lines}; OTLP bytes received: {Collector.received}")
    if (a.only != "tracing" and lines == 0) or (a.only != "access-log" and not Collector.received):
        sys.exit("the 'on' process wrote no access log or exported no span: not a fair comparison")
    ratio = med["on"][1] / med["off"][1]
    print(f"CPU per request, on / off: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; target <= +10%)")


if __name__ == "__main__":
    main()
