"""What traffic policies cost: proxy CPU per request and throughput with a realistic policy
set on (request and per-try timeouts, retries with a budget, circuit breaker, outlier
detection, a rate limit that never trips) versus all off, in the same run.

One ``pymesh run`` serves two listeners to the same ``pymesh echo``: ``off`` (a route with
``timeout: false`` to a cluster without policies: the plain path) and ``on``. The bundled load
generator alternates between them for ``--rounds`` rounds; the proxy's CPU time (user +
system, from /proc) over each run divided by its requests is the figure, as in DESIGN.md.
The proxy is pinned to CPU 1 and the upstream to CPU 0 when the machine has two CPUs.

    .venv/bin/python benches/policy_overhead.py [--seconds 5] [--rounds 3] [--connections 32]

Target (issue 4): policies cost at most 5% of proxy CPU per request.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pymesh.bench import run

PYMESH = str(Path(sys.executable).parent / "pymesh")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(args: list[str], pattern: str, cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    if cpu is not None and os.cpu_count() and os.cpu_count() >= 2:
        args = ["taskset", "-c", str(cpu), *args]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if m := re.search(pattern, line):
            return proc, m.group(1)
    raise SystemExit(f"{args[0]} did not start: {''.join(lines)}")


def config(upstream: str) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "off",
                "listen": "127.0.0.1:0",
                "routes": [{"to": [{"cluster": "plain"}], "timeout": False}],
            },
            {
                "name": "on",
                "listen": "127.0.0.1:0",
                "routes": [
                    {
                        "to": [{"cluster": "guarded"}],
                        "timeout": "5s",
                        "per_try_timeout": "2s",
                        "retry": {"attempts": 2, "on": ["connect-failure", "reset", "503"]},
                        "rate_limit": {"requests_per_second": 1e8, "burst": 1_000_000},
                    }
                ],
            },
        ],
        "clusters": [
            {"name": "plain", "endpoints": [upstream]},
            {
                "name": "guarded",
                "endpoints": [upstream],
                "circuit_breaker": {"max_requests": 100_000, "max_pending": 100_000},
                "outlier_detection": {"consecutive_5xx": 5},
            },
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    a = p.parse_args()

    echo, upstream = start(
        [PYMESH, "echo", "--listen", "127.0.0.1:0", "--workers", "1"], r"listening on (\S+)", 0
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.yaml"
        path.write_text(yaml.safe_dump(config(upstream)))
        mesh = subprocess.Popen(
            [
                *(["taskset", "-c", "1"] if (os.cpu_count() or 1) >= 2 else []),
                PYMESH,
                "run",
                "--config",
                str(path),
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--data-dir",
                tmp,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert mesh.stdout is not None
        listeners: dict[str, str] = {}
        while len(listeners) < 2:
            line = mesh.stdout.readline()
            if not line:
                raise SystemExit("pymesh run exited")
            if m := re.match(r"pymesh: listener (\S+) on (\S+)", line):
                listeners[m.group(1)] = f"http://{m.group(2)}/"
        try:
            results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
            for name in ("off", "on"):  # warm both paths and pools
                run(listeners[name], connections=a.connections, duration=1.0)
            for _ in range(a.rounds):
                for name in ("off", "on"):
                    before = cpu_seconds(mesh.pid)
                    r = run(listeners[name], connections=a.connections, duration=a.seconds)
                    used = cpu_seconds(mesh.pid) - before
                    ok = r.status.get("200", 0)
                    assert ok == r.requests and r.errors.total == 0, r
                    results[name].append((r.rps, used / r.requests * 1e6))
        finally:
            mesh.terminate()
            echo.terminate()
            mesh.wait(20)
            echo.wait(20)
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in results.items()
    }
    for name, (rps, cpu) in med.items():
        print(f"policies {name:>3}: {rps:>9.0f} req/s  {cpu:6.2f} us proxy CPU per request")
    ratio = med["on"][1] / med["off"][1]
    print(f"CPU per request, on / off: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; target <= +5%)")


if __name__ == "__main__":
    main()
