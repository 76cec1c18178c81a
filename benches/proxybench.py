#!/usr/bin/env python3
"""pymesh proxy benchmark: direct vs pymesh vs nginx vs HAProxy on one machine, CPUs pinned.

Scenario ``h1-keepalive-1k``: HTTP/1.1 keep-alive, GET /, 1 KiB responses from an nginx
upstream (``return 200``) pinned to CPU 0 together with the load generator
(``wrk -t1 -c64 --latency``); every proxy runs one worker pinned to CPU 1. Targets are
alternated round by round; the report gives medians over rounds, ratios, and each proxy's
CPU time per request (utime+stime of its whole process tree over the measured run, divided by
the requests wrk completed).

Standard library only. Run it through ``benches/run.sh``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCENARIO = "h1-keepalive-1k"
BODY_SIZE = 1024
ALL_TARGETS = ("direct", "pymesh", "nginx", "haproxy")
PROXY_TARGETS = ("pymesh", "nginx", "haproxy")
UPSTREAM_CPU = "0"
PROXY_CPU = "1"
LOAD_CPU = "0"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# command -> Debian package; haproxy is optional (its target is skipped if it won't install)
REQUIRED_TOOLS = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}
OPTIONAL_TOOLS = {"haproxy": "haproxy"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
NOISY_PAUSE_S = 5.0


def log(msg: str) -> None:
    print(f"[proxybench] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A setup or run failure that ends the benchmark with a clear message."""


# === tools ===


def ensure_tools(targets: Sequence[str], install: bool) -> list[str]:
    """Install missing tools with apt-get; returns the targets that can run."""
    wanted_optional = {c: p for c, p in OPTIONAL_TOOLS.items() if c in targets}
    missing_req = [c for c in REQUIRED_TOOLS if shutil.which(c) is None]
    missing_opt = [c for c in wanted_optional if shutil.which(c) is None]
    if (missing_req or missing_opt) and install:
        apt = shutil.which("apt-get")
        if apt is None:
            log(f"apt-get not found; cannot install {missing_req + missing_opt}")
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            log(f"installing missing tools: {', '.join(missing_req + missing_opt)}")
            subprocess.run([apt, "update"], env=env, check=False, stdout=subprocess.DEVNULL)
            if missing_req:
                pkgs = sorted({REQUIRED_TOOLS[c] for c in missing_req})
                subprocess.run(
                    [apt, "install", "-y", *pkgs], env=env, check=False, stdout=subprocess.DEVNULL
                )
            for cmd in missing_opt:
                res = subprocess.run(
                    [apt, "install", "-y", wanted_optional[cmd]],
                    env=env,
                    check=False,
                    stdout=subprocess.DEVNULL,
                )
                if res.returncode != 0:
                    log(f"{cmd} did not install; its target will be skipped")
    still = [c for c in REQUIRED_TOOLS if shutil.which(c) is None]
    if still:
        raise BenchError(f"required tools missing: {', '.join(still)}")
    runnable = []
    for t in targets:
        if t in OPTIONAL_TOOLS and shutil.which(t) is None:
            log(f"skipping target {t}: `{t}` not available")
            continue
        runnable.append(t)
    return runnable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# === process accounting (/proc) ===


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; comm may contain spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root plus all its live descendants (nginx master + workers, etc.)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_ticks(root: int) -> int:
    """utime+stime (fields 14+15; they cover all threads) summed over the process tree."""
    total = 0
    for pid in process_tree(root):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total


def tree_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# === servers ===


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    logdir: Path
    admin_url: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Processes:
    """Every process started here; stop_all() ends them by pid (and their own group)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], logdir: Path, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log(f"start {name}: {' '.join(argv)}")
        out = subprocess.PIPE if stdout_pipe else (logdir / f"{name}.out").open("wb")
        err = (logdir / f"{name}.err").open("wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM; killing its process group")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            # the group we created for it: reap stragglers (e.g. nginx workers) if any remain
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def nginx_conf(tmp: Path, port: int, inner: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    t = tmp.as_posix()
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {t}/nginx.pid;
error_log {t}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{inner}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {{location}}
        }}
    }}
}}
"""


def start_upstream(procs: Processes, base: Path) -> Server:
    d = base / "upstream"
    d.mkdir()
    port = free_port()
    body = "x" * BODY_SIZE
    conf = nginx_conf(d, port, "").replace("{location}", f'return 200 "{body}";')
    (d / "nginx.conf").write_text(conf)
    argv = [
        "taskset",
        "-c",
        UPSTREAM_CPU,
        "nginx",
        "-p",
        str(d),
        "-e",
        "stderr",
        "-c",
        str(d / "nginx.conf"),
    ]
    proc = procs.start("upstream", argv, d)
    wait_port(port, proc, "upstream nginx", READY_TIMEOUT_S)
    return Server("upstream", port, proc, d)


def start_nginx_proxy(procs: Processes, base: Path, upstream: Server) -> Server:
    d = base / "nginx"
    d.mkdir()
    port = free_port()
    up = f"""    upstream backend {{
        server 127.0.0.1:{upstream.port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    loc = (
        "proxy_pass http://backend;\n            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";'
    )
    (d / "nginx.conf").write_text(nginx_conf(d, port, up).replace("{location}", loc))
    argv = [
        "taskset",
        "-c",
        PROXY_CPU,
        "nginx",
        "-p",
        str(d),
        "-e",
        "stderr",
        "-c",
        str(d / "nginx.conf"),
    ]
    proc = procs.start("nginx", argv, d)
    wait_port(port, proc, "nginx proxy", READY_TIMEOUT_S)
    return Server("nginx", port, proc, d)


def start_haproxy(procs: Processes, base: Path, upstream: Server) -> Server:
    d = base / "haproxy"
    d.mkdir()
    port = free_port()
    cfg = f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server up 127.0.0.1:{upstream.port}
"""
    (d / "haproxy.cfg").write_text(cfg)
    argv = ["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", str(d / "haproxy.cfg")]
    proc = procs.start("haproxy", argv, d)
    wait_port(port, proc, "haproxy", READY_TIMEOUT_S)
    return Server("haproxy", port, proc, d)


def _pump_lines(stream: object, sink: queue.Queue[str], copy: Path) -> None:
    """Read the child's stdout to EOF (so it never blocks), forwarding lines to sink."""
    assert hasattr(stream, "readline")
    with copy.open("w") as f:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            f.write(line + "\n")
            f.flush()
            sink.put(line)


LISTENER_RE = re.compile(r"^pymesh: listener (\S+) on (\S+):(\d+)\s*$")
ADMIN_RE = re.compile(r"^pymesh: admin listening on (http://\S+)\s*$")


def start_pymesh(procs: Processes, base: Path, upstream: Server, binary: Path) -> Server:
    d = base / "pymesh"
    (d / "data").mkdir(parents=True)
    port = free_port()
    cfg = f"""# generated by benches/proxybench.py
drain_timeout: 1s
listeners:
  - name: bench
    listen: 127.0.0.1:{port}
    protocol: http
    routes:
      - match: {{path_prefix: /}}
        to: [{{cluster: upstream}}]
clusters:
  - name: upstream
    endpoints: [127.0.0.1:{upstream.port}]
"""
    (d / "gen.yaml").write_text(cfg)
    argv = [
        "taskset",
        "-c",
        PROXY_CPU,
        str(binary),
        "run",
        "--config",
        str(d / "gen.yaml"),
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--data-dir",
        str(d / "data"),
    ]
    proc = procs.start("pymesh", argv, d, stdout_pipe=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=_pump_lines, args=(proc.stdout, lines, d / "pymesh.out"), daemon=True
    ).start()
    admin: str | None = None
    bound: int | None = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (admin is None or bound is None) and time.monotonic() < deadline:
        if proc.poll() is not None and lines.empty():
            err = (d / "pymesh.err").read_text(errors="replace")[-2000:]
            raise BenchError(f"pymesh exited with code {proc.returncode}:\n{err}")
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if m := LISTENER_RE.match(line):
            if m.group(1) == "bench":
                bound = int(m.group(3))
        elif m := ADMIN_RE.match(line):
            admin = m.group(1).rstrip("/")
    if admin is None or bound is None:
        raise BenchError("pymesh did not print its admin and listener lines in time")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, _ = http_get(f"{admin}/ready", timeout=1.0)
            if status == 200:
                return Server("pymesh", bound, proc, d, admin_url=admin)
        if proc.poll() is not None:
            raise BenchError(f"pymesh exited with code {proc.returncode} before ready")
        time.sleep(0.1)
    raise BenchError(f"pymesh: {admin}/ready did not answer 200 in time")


# === load ===


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p99_us: float
    errors: int
    error_detail: str


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _lat_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError(f"unparseable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_US[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise BenchError(f"unparseable wrk output:\n{out}")
    reqs = int(m.group(1))
    secs = _lat_us(m.group(2) + m.group(3)) / 1e6
    pct = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)", out, re.M))
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors, detail = 0, []
    if sm := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(x) for x in sm.groups())
        detail.append(sm.group(0))
    if nm := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(nm.group(1))
        detail.append(nm.group(0))
    return WrkResult(
        requests=reqs,
        seconds=secs,
        rps=float(rps_m.group(1)) if rps_m else (reqs / secs if secs else 0.0),
        p50_us=_lat_us(pct["50"]) if "50" in pct else float("nan"),
        p99_us=_lat_us(pct["99"]) if "99" in pct else float("nan"),
        errors=errors,
        error_detail="; ".join(detail),
    )


def run_wrk(url: str, duration: float, connections: int, threads: int) -> WrkResult:
    secs = max(1, round(duration))
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{secs}s",
        "--latency",
        url,
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30, check=False)
    if res.returncode != 0:
        raise BenchError(f"wrk failed ({res.returncode}): {res.stderr.strip()}")
    return parse_wrk(res.stdout)


@dataclass
class Run:
    target: str
    round: int
    rps: float
    requests: int
    p50_us: float
    p99_us: float
    errors: int
    error_detail: str
    proxy_cpu_us_per_req: float | None
    upstream_cpu_us_per_req: float
    proxy_rss_mib: float | None
    other_load_pct: float


def system_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from the aggregate line of /proc/stat.

    busy is everything but idle and iowait. irq and softirq stay in: with tick-based
    accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a tick that lands in softirq is also charged
    to the interrupted task's stime, so the processes' own figures include it too.
    """
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def wait_for_quiet(max_wait: float, pct: float) -> None:
    """Before a run: wait (bounded) until other processes use at most pct % of all CPUs."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        b0, t0 = system_busy_ticks()
        time.sleep(1.0)
        b1, t1 = system_busy_ticks()
        load = 100.0 * (b1 - b0) / max(1, t1 - t0)
        if load <= pct:
            if waited:
                log(f"machine quiet again ({load:.0f}% busy)")
            return
        if time.monotonic() >= deadline:
            log(f"machine still {load:.0f}% busy after waiting {max_wait:g}s; measuring anyway")
            return
        if not waited:
            log(f"machine {load:.0f}% busy with other work; waiting up to {max_wait:g}s")
            waited = True
        time.sleep(2.0)


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(
    target: str,
    rnd: int,
    servers: dict[str, Server],
    upstream: Server,
    *,
    args: argparse.Namespace,
    duration: float,
) -> Run:
    srv = servers[target]
    proxy = None if target == "direct" else srv
    if proxy is not None and proxy.proc.poll() is not None:
        raise BenchError(f"{target} is no longer running (exit code {proxy.proc.returncode})")
    p0 = tree_cpu_ticks(proxy.proc.pid) if proxy else 0
    u0 = tree_cpu_ticks(upstream.proc.pid)
    busy0, total0 = system_busy_ticks()
    wrk0 = children_cpu_s()
    w = run_wrk(srv.url, duration, args.connections, args.threads)
    wrk_s = children_cpu_s() - wrk0
    busy1, total1 = system_busy_ticks()
    p1 = tree_cpu_ticks(proxy.proc.pid) if proxy else 0
    u1 = tree_cpu_ticks(upstream.proc.pid)
    # CPU used by anything other than upstream, proxy and wrk, as a share of all CPUs
    ours = (p1 - p0 + u1 - u0) / CLK_TCK + wrk_s
    other = max(0.0, (busy1 - busy0) / CLK_TCK - ours)
    other_pct = 100.0 * other / max(1e-9, (total1 - total0) / CLK_TCK)
    rss = tree_rss_kib(proxy.proc.pid) / 1024 if proxy else None
    if proxy is not None and proxy.proc.poll() is not None:
        raise BenchError(f"{target} died during the run (exit code {proxy.proc.returncode})")
    per_req = 1e6 / CLK_TCK / w.requests if w.requests else float("nan")
    run = Run(
        target=target,
        round=rnd,
        rps=w.rps,
        requests=w.requests,
        p50_us=w.p50_us,
        p99_us=w.p99_us,
        errors=w.errors,
        error_detail=w.error_detail,
        proxy_cpu_us_per_req=(p1 - p0) * per_req if proxy else None,
        upstream_cpu_us_per_req=(u1 - u0) * per_req,
        proxy_rss_mib=rss,
        other_load_pct=other_pct,
    )
    cpu = f"{run.proxy_cpu_us_per_req:.1f} µs/req" if proxy else "-"
    log(
        f"round {rnd} {target:8s} {w.rps:10.0f} req/s  p50 {fmt_lat(w.p50_us)}  "
        f"p99 {fmt_lat(w.p99_us)}  cpu {cpu}  errors {w.errors}  other load {other_pct:.1f}%"
    )
    return run


# === report ===


def fmt_lat(us: float) -> str:
    if math.isnan(us):
        return "-"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_opt(v: float | None, spec: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, spec)


@dataclass
class Summary:
    target: str
    rounds: int
    rps: float
    p50_us: float
    p99_us: float
    proxy_cpu_us_per_req: float | None
    upstream_cpu_us_per_req: float
    proxy_rss_mib: float | None
    errors: int
    rps_all: list[float] = field(default_factory=list)


def summarize(runs: list[Run], targets: Sequence[str]) -> list[Summary]:
    out = []
    for t in targets:
        rs = [r for r in runs if r.target == t]
        if not rs:
            continue
        cpu = [r.proxy_cpu_us_per_req for r in rs if r.proxy_cpu_us_per_req is not None]
        rss = [r.proxy_rss_mib for r in rs if r.proxy_rss_mib is not None]
        out.append(
            Summary(
                target=t,
                rounds=len(rs),
                rps=statistics.median(r.rps for r in rs),
                p50_us=statistics.median(r.p50_us for r in rs),
                p99_us=statistics.median(r.p99_us for r in rs),
                proxy_cpu_us_per_req=statistics.median(cpu) if cpu else None,
                upstream_cpu_us_per_req=statistics.median(r.upstream_cpu_us_per_req for r in rs),
                proxy_rss_mib=max(rss) if rss else None,
                errors=sum(r.errors for r in rs),
                rps_all=[round(r.rps) for r in rs],
            )
        )
    return out


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def render(
    summaries: list[Summary], machine: dict[str, str], args: argparse.Namespace, runs: list[Run]
) -> str:
    by = {s.target: s for s in summaries}
    lines = [
        f"# {SCENARIO}{' (smoke)' if args.smoke else ''}",
        "",
        f"HTTP/1.1 keep-alive, GET /, {BODY_SIZE}-byte responses from an nginx upstream "
        f"(`return 200`, 1 worker, CPU {UPSTREAM_CPU}); load `wrk -t{args.threads} "
        f"-c{args.connections} -d{round(args.duration)}s --latency` on CPU {LOAD_CPU}; "
        f"each proxy 1 worker on CPU {PROXY_CPU}. Medians of {args.rounds} alternated "
        f"round(s); warm-up {args.warmup:g} s per target.",
        "",
        "| target | req/s | p50 | p99 | proxy CPU µs/req | upstream CPU µs/req "
        "| proxy RSS MiB | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.target} | {s.rps:,.0f} | {fmt_lat(s.p50_us)} | {fmt_lat(s.p99_us)} "
            f"| {fmt_opt(s.proxy_cpu_us_per_req, '.1f')} "
            f"| {fmt_opt(s.upstream_cpu_us_per_req, '.1f')} "
            f"| {fmt_opt(s.proxy_rss_mib, '.1f')} | {s.errors} |"
        )
    pm = by.get("pymesh")
    if pm is not None:
        lines += [
            "",
            "| ratio | req/s | proxy CPU/req | p50 | p99 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for peer in ("nginx", "haproxy", "direct"):
            o = by.get(peer)
            if o is None:
                continue
            cpu = _ratio(pm.proxy_cpu_us_per_req, o.proxy_cpu_us_per_req)
            lines.append(
                f"| pymesh / {peer} | {_ratio(pm.rps, o.rps)} | {cpu} "
                f"| {_ratio(pm.p50_us, o.p50_us)} | {_ratio(pm.p99_us, o.p99_us)} |"
            )
        lines += ["", "Bar (DESIGN.md): pymesh proxy CPU/req ≤ 0.80x nginx and ≤ 1.00x HAProxy."]
    lines += [
        "",
        "Every run, in the order run (other load: CPU used by anything but upstream, proxy "
        "and wrk, as a share of all CPUs; a few % is the pymesh/uvicorn host, ssh, etc.; "
        "much more means the machine was busy and the run is noisy):",
        "",
        "| round | target | req/s | p50 | p99 | proxy CPU µs/req | other load |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.round} | {r.target} | {r.rps:,.0f} | {fmt_lat(r.p50_us)} | {fmt_lat(r.p99_us)} "
        f"| {fmt_opt(r.proxy_cpu_us_per_req, '.1f')} | {r.other_load_pct:.1f}% |"
        for r in runs
    ]
    errs = [r for r in runs if r.errors]
    if errs:
        lines += ["", "Errors reported by wrk:"]
        lines += [f"- round {r.round} {r.target}: {r.error_detail}" for r in errs]
    lines += ["", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", f"Command: `{args.command_line}`", ""]
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0].strip() if text else "n/a"


def machine_info(pymesh: Path | None, targets: Sequence[str]) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
    }
    if "haproxy" in targets:
        info["haproxy"] = _first_line(["haproxy", "-v"])
    if pymesh is not None:
        py = pymesh.parent / "python"
        ver = (
            _first_line(
                [str(py), "-c", "import importlib.metadata as m;print(m.version('pymesh'))"]
            )
            if py.exists()
            else "n/a"
        )
        info["pymesh"] = f"{ver} ({pymesh})"
    return info


# === main ===


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: 1 round x 2 s, 1 s warm-up; fails on zero requests/errors",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 5; smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per run (default 10; smoke 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per target (default 5; smoke 1)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated subset of " + ",".join(ALL_TARGETS),
    )
    p.add_argument(
        "--pymesh",
        type=Path,
        default=REPO / ".venv" / "bin" / "pymesh",
        help="pymesh executable (default: .venv/bin/pymesh at the repo root)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report path (default benches/results/<scenario>[-smoke].md)",
    )
    p.add_argument(
        "--max-errors",
        type=int,
        default=10,
        help="smoke: fail if a run has more wrk errors than this",
    )
    p.add_argument(
        "--noisy-pct",
        type=float,
        default=15.0,
        help="a run during which other processes used more than this %% of all CPUs is noisy",
    )
    p.add_argument(
        "--noisy-retries",
        type=int,
        help="repeat a noisy run up to this many times (default 3; smoke 0)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        help="before each run wait up to this many seconds for the machine to be quiet "
        "(at most --noisy-pct busy; default 180; smoke 0)",
    )
    p.add_argument(
        "--patience",
        type=float,
        default=30.0,
        help="minutes after warm-up past which runs no longer wait for quiet nor repeat",
    )
    p.add_argument("--no-install", action="store_true", help="never call apt-get")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.smoke else 5)
    a.duration = a.duration or (2.0 if a.smoke else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.smoke else 5.0)
    if a.wait_quiet is None:
        a.wait_quiet = 0.0 if a.smoke else 180.0
    if a.noisy_retries is None:
        a.noisy_retries = 0 if a.smoke else 3
    a.target_list = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.target_list if t not in ALL_TARGETS]
    if bad or not a.target_list:
        p.error(f"unknown targets {bad}; choose from {','.join(ALL_TARGETS)}")
    if a.out is None:
        a.out = HERE / "results" / f"{SCENARIO}{'-smoke' if a.smoke else ''}.md"
    a.command_line = " ".join(["benches/run.sh", *(argv if argv is not None else sys.argv[1:])])
    return a


@contextlib.contextmanager
def servers_up(targets: Sequence[str], pymesh: Path) -> Iterator[tuple[Server, dict[str, Server]]]:
    procs = Processes()
    base = Path(tempfile.mkdtemp(prefix="proxybench-"))
    os.chmod(base, 0o755)
    try:
        upstream = start_upstream(procs, base)
        servers: dict[str, Server] = {"direct": upstream}
        starters: dict[str, Callable[[], Server]] = {
            "pymesh": lambda: start_pymesh(procs, base, upstream, pymesh),
            "nginx": lambda: start_nginx_proxy(procs, base, upstream),
            "haproxy": lambda: start_haproxy(procs, base, upstream),
        }
        for t in targets:
            if t != "direct":
                servers[t] = starters[t]()
        yield upstream, servers
    finally:
        procs.stop_all()
        for name, proc in procs.procs:
            err = base / name / f"{name}.err"
            tail = err.read_text(errors="replace")[-1500:] if err.exists() else ""
            if proc.returncode not in (0, -signal.SIGTERM):
                log(f"{name} exited with code {proc.returncode}; stderr tail:\n{tail}")
            elif name == "pymesh" and tail.strip():
                log(f"pymesh exited with code {proc.returncode}; stderr tail:\n{tail}")
        shutil.rmtree(base, ignore_errors=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def check_targets(targets: Sequence[str], servers: dict[str, Server]) -> None:
    for t in targets:
        status, body = http_get(servers[t].url)
        if status != 200 or len(body) != BODY_SIZE:
            raise BenchError(
                f"{t}: GET / gave {status} with {len(body)} bytes, expected 200 with {BODY_SIZE}"
            )


def run_rounds(
    targets: Sequence[str], servers: dict[str, Server], upstream: Server, args: argparse.Namespace
) -> list[Run]:
    """Warm-up, then the targets alternated round by round; noisy runs repeated (bounded)."""
    if args.warmup > 0:
        for t in targets:
            log(f"warm-up {t} {args.warmup:g}s")
            run_wrk(servers[t].url, args.warmup, args.connections, args.threads)
    runs: list[Run] = []
    # past this point no more waiting for quiet nor repeating noisy runs
    deadline = time.monotonic() + args.patience * 60
    for rnd in range(1, args.rounds + 1):
        for t in targets:
            quiet_for = min(args.wait_quiet, deadline - time.monotonic())
            if quiet_for > 0:
                wait_for_quiet(quiet_for, args.noisy_pct)
            run = measure(t, rnd, servers, upstream, args=args, duration=args.duration)
            for _ in range(args.noisy_retries):
                if run.other_load_pct <= args.noisy_pct or time.monotonic() > deadline:
                    break
                log(
                    f"other load {run.other_load_pct:.0f}% > {args.noisy_pct:g}%: "
                    f"noisy run, repeating it in {NOISY_PAUSE_S:g}s"
                )
                time.sleep(NOISY_PAUSE_S)
                quiet_for = min(args.wait_quiet, deadline - time.monotonic())
                if quiet_for > 0:
                    wait_for_quiet(quiet_for, args.noisy_pct)
                run = measure(t, rnd, servers, upstream, args=args, duration=args.duration)
            runs.append(run)
    return runs


def pymesh_stats(servers: dict[str, Server]) -> object:
    pm = servers.get("pymesh")
    if pm is None or not pm.admin_url:
        return None
    with contextlib.suppress(OSError, ValueError):
        _, raw = http_get(f"{pm.admin_url}/stats")
        return json.loads(raw)
    return None


def write_report(
    args: argparse.Namespace,
    targets: Sequence[str],
    runs: list[Run],
    pymesh: Path | None,
    pm_stats: object,
) -> None:
    summaries = summarize(runs, targets)
    machine = machine_info(pymesh, targets)
    report = render(summaries, machine, args, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    raw = {
        "scenario": SCENARIO,
        "smoke": args.smoke,
        "machine": machine,
        "summary": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
        "pymesh_stats_after": pm_stats,
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(report, flush=True)


def smoke_verdict(args: argparse.Namespace, targets: Sequence[str], runs: list[Run]) -> int:
    bad = [r for r in runs if r.requests == 0 or r.errors > args.max_errors]
    missing = [t for t in targets if not any(r.target == t for r in runs)]
    for r in bad:
        log(f"smoke FAIL: {r.target}: {r.requests} requests, {r.errors} errors ({r.error_detail})")
    for t in missing:
        log(f"smoke FAIL: {t}: no run")
    if bad or missing:
        return 1
    log("smoke ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        targets = ensure_tools(args.target_list, install=not args.no_install)
        pymesh = args.pymesh.resolve() if "pymesh" in targets else None
        if pymesh is not None and not os.access(pymesh, os.X_OK):
            raise BenchError(
                f"pymesh executable not found: {pymesh} "
                "(run scripts/dev-install.sh, or pass --pymesh PATH)"
            )
        t0 = time.monotonic()
        with servers_up(targets, pymesh or Path("pymesh")) as (upstream, servers):
            check_targets(targets, servers)
            runs = run_rounds(targets, servers, upstream, args)
            pm_stats = pymesh_stats(servers)
        write_report(args, targets, runs, pymesh, pm_stats)
        log(f"wrote {args.out} in {time.monotonic() - t0:.0f}s")
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130
    return smoke_verdict(args, targets, runs) if args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
