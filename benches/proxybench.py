#!/usr/bin/env python3
"""pymesh proxy benchmark suite: direct vs pymesh vs nginx vs HAProxy on one machine, CPUs pinned.

Scenarios (``--scenarios``; all by default), each against the same nginx upstream pinned to
CPU 0 together with the load generator, every proxy one worker pinned to CPU 1, targets
alternated round by round, medians over rounds:

- ``h1-keepalive-1k``   HTTP/1.1 keep-alive, 1 KiB responses (``wrk -t1 -c64``), plus open-loop
  latency (``pymesh bench -R``) at 25/50/75 % of the slowest proxy's max and RSS at rest and
  with 10,000 idle keep-alive connections
- ``h1-new-connection`` the same with ``Connection: close`` (one TCP connection per request)
- ``h2-multiplexed``    downstream HTTP/2 by prior knowledge (h2c), ``h2load -c16 -m32``
- ``tls13-termination`` HTTP/1.1 keep-alive over TLS 1.3, one ECDSA P-256 certificate for all
- ``1m-responses``      HTTP/1.1 keep-alive, 1 MiB responses (``wrk -c16``)
- ``tcp-passthrough``   a TCP relay (pymesh ``protocol: tcp``, nginx ``stream``, HAProxy
  ``mode tcp``) carrying the keep-alive 1 KiB load

Proxy CPU per request is utime+stime of the proxy's whole process tree over the measured run
(from /proc), divided by the requests the load generator completed.

Standard library only (matplotlib, if importable, draws the plots). Run it through
``benches/run.sh``; ``--help`` lists the options.
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
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ALL_TARGETS = ("direct", "pymesh", "nginx", "haproxy")
PROXY_TARGETS = ("pymesh", "nginx", "haproxy")
UPSTREAM_CPU = "0"
PROXY_CPU = "1"
LOAD_CPU = "0"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# command -> Debian package; haproxy is optional (its target is skipped if it won't install)
REQUIRED_TOOLS = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux", "openssl": "openssl"}
OPTIONAL_TOOLS = {"haproxy": "haproxy", "h2load": "nghttp2-client"}
NGINX_STREAM_MODULE = Path("/usr/share/nginx/modules/ngx_stream_module.so")
NGINX_STREAM_PKG = "libnginx-mod-stream"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
NOISY_PAUSE_S = 5.0
KIB = 1024
MIB = 1024 * 1024
# TLS 1.3 suite every proxy is held to: rustls (pymesh) prefers it and OpenSSL clients offer it
# first, so nginx and HAProxy are configured to it alone.
TLS13_SUITE = "TLS_AES_256_GCM_SHA384"
LATENCY_LOADS = (0.25, 0.50, 0.75)
# RLIMIT_NOFILE every started process inherits (raised to the hard limit in main)
NOFILE = [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]


def haproxy_maxconn() -> int:
    """HAProxy refuses to start when 2 fds per connection (+ margin) exceed RLIMIT_NOFILE."""
    return max(256, min(30000, (NOFILE[0] - 300) // 2))


def log(msg: str) -> None:
    print(f"[proxybench] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A setup or run failure that ends the benchmark with a clear message."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    mode: str  # http | h2c | tls | tcp: what the proxies listen for
    load: str  # wrk | h2load
    path: str
    body_size: int
    connections: int
    close: bool = False  # wrk sends Connection: close (a new connection per request)
    streams: int = 1  # h2load -m
    extended: bool = False  # open-loop latency and idle-connection RSS too


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "h1-keepalive-1k",
            "HTTP/1.1 keep-alive, 1 KiB responses",
            "http",
            "wrk",
            "/",
            KIB,
            64,
            extended=True,
        ),
        Scenario(
            "h1-new-connection",
            "HTTP/1.1, a new connection per request (`Connection: close`), 1 KiB responses",
            "http",
            "wrk",
            "/",
            KIB,
            64,
            close=True,
        ),
        Scenario(
            "h2-multiplexed",
            "HTTP/2 by prior knowledge (h2c) downstream, HTTP/1.1 upstream, 1 KiB responses",
            "h2c",
            "h2load",
            "/",
            KIB,
            16,
            streams=32,
        ),
        Scenario(
            "tls13-termination",
            "TLS 1.3 termination (ECDSA P-256), HTTP/1.1 keep-alive, 1 KiB responses",
            "tls",
            "wrk",
            "/",
            KIB,
            64,
        ),
        Scenario(
            "1m-responses",
            "HTTP/1.1 keep-alive, 1 MiB responses",
            "http",
            "wrk",
            "/1m",
            MIB,
            16,
        ),
        Scenario(
            "tcp-passthrough",
            "TCP relay (no HTTP parsing) carrying HTTP/1.1 keep-alive 1 KiB",
            "tcp",
            "wrk",
            "/",
            KIB,
            64,
        ),
    )
}


# === tools ===


def _apt_install(pkgs: Sequence[str], updated: list[bool]) -> bool:
    apt = shutil.which("apt-get")
    if apt is None:
        log(f"apt-get not found; cannot install {', '.join(pkgs)}")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not updated[0]:
        subprocess.run([apt, "update"], env=env, check=False, stdout=subprocess.DEVNULL)
        updated[0] = True
    log(f"installing {', '.join(pkgs)}")
    res = subprocess.run(
        [apt, "install", "-y", *pkgs], env=env, check=False, stdout=subprocess.DEVNULL
    )
    return res.returncode == 0


def ensure_tools(targets: Sequence[str], scenarios: Sequence[Scenario], install: bool) -> None:
    """Install missing tools with apt-get (one `apt-get update`, only if something is missing)."""
    updated = [False]
    missing = [c for c in REQUIRED_TOOLS if shutil.which(c) is None]
    wanted = dict(OPTIONAL_TOOLS)
    if "haproxy" not in targets:
        wanted.pop("haproxy")
    if not any(s.load == "h2load" for s in scenarios):
        wanted.pop("h2load")
    missing_opt = [c for c in wanted if shutil.which(c) is None]
    need_stream = (
        "nginx" in targets
        and any(s.mode == "tcp" for s in scenarios)
        and not NGINX_STREAM_MODULE.exists()
    )
    if install:
        if missing:
            _apt_install(sorted({REQUIRED_TOOLS[c] for c in missing}), updated)
        for cmd in missing_opt:
            if not _apt_install([wanted[cmd]], updated):
                log(f"{wanted[cmd]} did not install")
        if need_stream and not _apt_install([NGINX_STREAM_PKG], updated):
            log(f"{NGINX_STREAM_PKG} did not install")
    still = [c for c in REQUIRED_TOOLS if shutil.which(c) is None]
    if still:
        raise BenchError(f"required tools missing: {', '.join(still)}")


def skip_reason(target: str, sc: Scenario) -> str | None:
    """Why target cannot run in scenario sc on this machine, or None."""
    if target == "haproxy" and shutil.which("haproxy") is None:
        return "`haproxy` not installed"
    if sc.load == "h2load" and shutil.which("h2load") is None:
        return "`h2load` (nghttp2-client) not installed"
    if target == "nginx" and sc.mode == "tcp" and not NGINX_STREAM_MODULE.exists():
        return f"nginx stream module missing ({NGINX_STREAM_PKG})"
    return None


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
        time.sleep(0.05)  # poll interval of a bounded wait for the port to open
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    ctx = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


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
    scheme: str = "http"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@dataclass
class Upstream:
    """One nginx on CPU 0 serving the same bodies over HTTP/1.1, h2c and TLS 1.3."""

    server: Server
    h2c_port: int
    tls_port: int

    def direct(self, mode: str) -> Server:
        s = self.server
        if mode == "h2c":
            return Server("direct", self.h2c_port, s.proc, s.logdir)
        if mode == "tls":
            return Server("direct", self.tls_port, s.proc, s.logdir, scheme="https")
        return Server("direct", s.port, s.proc, s.logdir)


@dataclass
class Certs:
    cert: Path
    key: Path
    combined: Path  # cert + key in one PEM, for HAProxy


def make_cert(d: Path) -> Certs:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, made with the openssl CLI."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if res.returncode != 0:
        raise BenchError(f"openssl could not make a certificate: {res.stderr.strip()}")
    # rustls reads PKCS#8; `openssl req -newkey` writes PKCS#8 already ("BEGIN PRIVATE KEY")
    combined = d / "combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    for p in (cert, key, combined):
        p.chmod(0o644)
    return Certs(cert, key, combined)


class Processes:
    """Every process started here; stop_all() ends them by pid (and their own group)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(
        self, name: str, argv: list[str], logdir: Path, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log(f"start {name}: {' '.join(argv)}")
        out = subprocess.PIPE if stdout_pipe else (logdir / f"{name}.out").open("wb")
        err = (logdir / f"{name}.err").open("wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        self.procs.append((name, proc, logdir))
        return proc

    def stop_all(self) -> None:
        for _name, proc, _d in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc, _d in reversed(self.procs):
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


def nginx_conf(tmp: Path, http_inner: str, *, top: str = "", stream: str = "") -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    t = tmp.as_posix()
    http = (
        f"""http {{
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites {TLS13_SUITE};
    ssl_ecdh_curve X25519:prime256v1;
    proxy_max_temp_file_size 0;
{http_inner}
}}
"""
        if http_inner
        else ""
    )
    return f"""{top}{user}worker_processes 1;
worker_rlimit_nofile {NOFILE[0]};
daemon off;
master_process on;
pid {t}/nginx.pid;
error_log {t}/error.log warn;
events {{ worker_connections {max(1024, NOFILE[0] - 200)}; }}
{http}{stream}"""


def _nginx_argv(cpu: str, d: Path) -> list[str]:
    return [
        "taskset",
        "-c",
        cpu,
        "nginx",
        "-p",
        str(d),
        "-e",
        "stderr",
        "-c",
        str(d / "nginx.conf"),
    ]


def start_upstream(procs: Processes, base: Path, certs: Certs) -> Upstream:
    d = base / "upstream"
    d.mkdir()
    (d / "1m.bin").write_bytes(b"y" * MIB)
    (d / "1m.bin").chmod(0o644)
    port, h2c, tls = free_port(), free_port(), free_port()
    locs = f"""        location = / {{ return 200 "{"x" * KIB}"; }}
        location = /1m {{ alias {d}/1m.bin; }}"""
    inner = f"""    server {{
        listen 127.0.0.1:{port};
{locs}
    }}
    server {{
        listen 127.0.0.1:{h2c} http2;
{locs}
    }}
    server {{
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {certs.cert};
        ssl_certificate_key {certs.key};
{locs}
    }}"""
    (d / "nginx.conf").write_text(nginx_conf(d, inner))
    proc = procs.start("upstream", _nginx_argv(UPSTREAM_CPU, d), d)
    for p in (port, h2c, tls):
        wait_port(p, proc, "upstream nginx", READY_TIMEOUT_S)
    return Upstream(Server("upstream", port, proc, d), h2c, tls)


def start_nginx_proxy(
    procs: Processes, base: Path, upstream: Upstream, sc: Scenario, certs: Certs
) -> Server:
    d = base / "nginx"
    d.mkdir()
    port = free_port()
    up_port = upstream.server.port
    scheme = "https" if sc.mode == "tls" else "http"
    if sc.mode == "tcp":
        stream = f"""stream {{
    upstream backend {{ server 127.0.0.1:{up_port}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass backend;
    }}
}}
"""
        conf = nginx_conf(d, "", top=f"load_module {NGINX_STREAM_MODULE};\n", stream=stream)
    else:
        listen = {
            "http": "",
            "h2c": " http2",
            "tls": f" ssl;\n        ssl_certificate {certs.cert};\n"
            f"        ssl_certificate_key {certs.key}",
        }[sc.mode]
        inner = f"""    upstream backend {{
        server 127.0.0.1:{up_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
        conf = nginx_conf(d, inner)
    (d / "nginx.conf").write_text(conf)
    proc = procs.start("nginx", _nginx_argv(PROXY_CPU, d), d)
    wait_port(port, proc, "nginx proxy", READY_TIMEOUT_S)
    return Server("nginx", port, proc, d, scheme=scheme)


def start_haproxy(
    procs: Processes, base: Path, upstream: Upstream, sc: Scenario, certs: Certs
) -> Server:
    d = base / "haproxy"
    d.mkdir()
    port = free_port()
    up_port = upstream.server.port
    bind = {
        "http": "",
        "tcp": "",
        "h2c": " proto h2",
        "tls": f" ssl crt {certs.combined} ssl-min-ver TLSv1.3",
    }[sc.mode]
    if sc.mode == "tcp":
        defaults = "    mode tcp\n"
    else:
        defaults = "    mode http\n    option http-keep-alive\n    http-reuse always\n"
    cfg = f"""global
    nbthread 1
    maxconn {haproxy_maxconn()}
    ssl-default-bind-ciphersuites {TLS13_SUITE}

defaults
{defaults}    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s

frontend fe
    bind 127.0.0.1:{port}{bind}
    default_backend be

backend be
    server up 127.0.0.1:{up_port}
"""
    (d / "haproxy.cfg").write_text(cfg)
    argv = ["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", str(d / "haproxy.cfg")]
    proc = procs.start("haproxy", argv, d)
    wait_port(port, proc, "haproxy", READY_TIMEOUT_S)
    return Server("haproxy", port, proc, d, scheme="https" if sc.mode == "tls" else "http")


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


LISTENER_RE = re.compile(r"^pymesh: listener (\S+) on (\S+):(\d+)\s*$")
ADMIN_RE = re.compile(r"^pymesh: admin listening on (http://\S+)\s*$")


def pymesh_config(port: int, upstream_port: int, sc: Scenario, certs: Certs) -> str:
    head = f"""# generated by benches/proxybench.py ({sc.name})
drain_timeout: 1s
listeners:
  - name: bench
    listen: 127.0.0.1:{port}
"""
    if sc.mode == "tcp":
        body = """    protocol: tcp
    to: [{cluster: upstream}]
"""
    else:
        tls = f"    tls: {{cert: {certs.cert}, key: {certs.key}}}\n" if sc.mode == "tls" else ""
        body = f"""    protocol: http
{tls}    routes:
      - match: {{path_prefix: /}}
        to: [{{cluster: upstream}}]
"""
    return (
        head
        + body
        + f"""clusters:
  - name: upstream
    endpoints: [127.0.0.1:{upstream_port}]
"""
    )


def start_pymesh(
    procs: Processes, base: Path, upstream: Upstream, sc: Scenario, *, certs: Certs, binary: Path
) -> Server:
    d = base / "pymesh"
    (d / "data").mkdir(parents=True)
    port = free_port()
    (d / "gen.yaml").write_text(pymesh_config(port, upstream.server.port, sc, certs))
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
    scheme = "https" if sc.mode == "tls" else "http"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, _ = http_get(f"{admin}/ready", timeout=1.0)
            if status == 200:
                return Server("pymesh", bound, proc, d, admin_url=admin, scheme=scheme)
        if proc.poll() is not None:
            raise BenchError(f"pymesh exited with code {proc.returncode} before ready")
        time.sleep(0.1)  # poll interval of a bounded wait for readiness
    raise BenchError(f"pymesh: {admin}/ready did not answer 200 in time")


# === load ===


@dataclass
class LoadResult:
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
        raise BenchError(f"unparseable latency {text!r}")
    return float(m.group(1)) * _UNITS_US[m.group(2)]


def parse_wrk(out: str) -> LoadResult:
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
    return LoadResult(
        requests=reqs,
        seconds=secs,
        rps=float(rps_m.group(1)) if rps_m else (reqs / secs if secs else 0.0),
        p50_us=_lat_us(pct["50"]) if "50" in pct else float("nan"),
        p99_us=_lat_us(pct["99"]) if "99" in pct else float("nan"),
        errors=errors,
        error_detail="; ".join(detail),
    )


def parse_h2load(out: str) -> LoadResult:
    fin = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not fin or not req:
        raise BenchError(f"unparseable h2load output:\n{out}")
    secs = _lat_us(fin.group(1) + fin.group(2)) / 1e6
    ok = int(req.group(4))
    failed, errored, timeout = int(req.group(5)), int(req.group(6)), int(req.group(7))
    non2xx = 0
    if st := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out):
        non2xx = int(st.group(3)) + int(st.group(4))
    errors = failed + errored + timeout + non2xx
    detail = f"failed {failed}, errored {errored}, timeout {timeout}, 4xx/5xx {non2xx}"
    return LoadResult(
        requests=ok,
        seconds=secs,
        rps=ok / secs if secs else 0.0,
        # h2load reports no percentiles (only min/max/mean/sd per request)
        p50_us=float("nan"),
        p99_us=float("nan"),
        errors=errors,
        error_detail=detail if errors else "",
    )


def run_load(url: str, sc: Scenario, duration: float) -> LoadResult:
    secs = max(1, round(duration))
    pin = ["taskset", "-c", LOAD_CPU]
    if sc.load == "h2load":
        argv = [
            *pin,
            "h2load",
            "-t1",
            f"-c{sc.connections}",
            f"-m{sc.streams}",
            "-D",
            str(secs),
            url,
        ]
    else:
        hdr = ["-H", "Connection: close"] if sc.close else []
        argv = [*pin, "wrk", "-t1", f"-c{sc.connections}", f"-d{secs}s", "--latency", *hdr, url]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, check=False)
    if res.returncode != 0:
        raise BenchError(f"{sc.load} failed ({res.returncode}): {res.stderr.strip()[-1500:]}")
    return parse_h2load(res.stdout) if sc.load == "h2load" else parse_wrk(res.stdout)


@dataclass
class OpenLoop:
    target: str
    round: int
    load_pct: int
    rate: float
    rps: float
    requests: int
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float


def run_open_loop(
    bench: Path, url: str, *, target: str, rnd: int, pct: int, rate: float, secs: float
) -> OpenLoop:
    """`pymesh bench -R`: latency measured from each request's due time (CO-corrected)."""
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        str(bench),
        "bench",
        "-c",
        "64",
        "-R",
        f"{rate:.0f}",
        "-d",
        f"{max(1, round(secs))}s",
        "--json",
        url,
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, check=False)
    if res.returncode != 0:
        raise BenchError(f"pymesh bench failed ({res.returncode}): {res.stderr.strip()[-1500:]}")
    raw = json.loads(res.stdout)
    lat = raw["latency_us"]
    errs = raw["errors"]
    n_err = int(errs["total"]) if isinstance(errs, dict) else int(errs)
    non2xx = sum(int(v) for k, v in raw.get("status", {}).items() if not k.startswith("2"))
    ol = OpenLoop(
        target=target,
        round=rnd,
        load_pct=pct,
        rate=rate,
        rps=float(raw["rps"]),
        requests=int(raw["requests"]),
        errors=n_err + non2xx,
        p50_us=float(lat["p50"]),
        p99_us=float(lat["p99"]),
        p999_us=float(lat["p999"]),
    )
    log(
        f"open loop {pct}% ({rate:.0f}/s) {target:8s} p50 {fmt_lat(ol.p50_us)} "
        f"p99 {fmt_lat(ol.p99_us)} p99.9 {fmt_lat(ol.p999_us)} errors {ol.errors}"
    )
    return ol


# === idle keep-alive connections ===


@dataclass
class IdleRss:
    target: str
    wanted: int
    held: int
    rest_mib: float
    loaded_mib: float | None
    per_conn_kib: float | None
    note: str = ""


def _read_response(s: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        # RST instead of FIN: no TIME_WAIT left behind to eat ephemeral ports
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            s.close()


def idle_rss(srv: Server, n: int, rest_mib: float) -> IdleRss:
    """Open n keep-alive connections (one request each, answered), hold them, read VmRSS."""
    wanted = n
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        return IdleRss(
            srv.name, n, 0, rest_mib, None, None, f"skipped: RLIMIT_NOFILE {soft} < {n + 256}"
        )
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    note = ""
    if srv.name == "haproxy" and haproxy_maxconn() < n:
        note = (
            f"capped at maxconn {haproxy_maxconn()}: HAProxy wants 2 fds per connection "
            f"and RLIMIT_NOFILE is {NOFILE[0]}"
        )
        n = haproxy_maxconn() - 10
    try:
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5.0)
            except OSError as e:
                note = f"stopped at {len(socks)} connections: connect: {e}"
                break
            socks.append(s)
            try:
                s.sendall(req)
                _read_response(s)
            except (OSError, ConnectionError) as e:
                note = f"stopped at {len(socks)} connections: {e}"
                break
        # every connection must still be open: a closed one reads EOF at once
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1) == b"" else 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        loaded = tree_rss_kib(srv.proc.pid) / 1024
    finally:
        _close_all(socks)
    per = (loaded - rest_mib) * 1024 / alive if alive else None
    if alive < n:
        note = (note + "; " if note else "") + f"only {alive} of {n} connections stayed open"
    log(
        f"idle {srv.name}: {alive}/{wanted} connections, RSS {rest_mib:.1f} -> {loaded:.1f} MiB"
        + (f" ({note})" if note else "")
    )
    return IdleRss(srv.name, wanted, alive, rest_mib, loaded, per, note)


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
        time.sleep(1.0)  # the window over which the machine's other load is measured
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
        time.sleep(2.0)  # back off before measuring the load again (bounded by max_wait)


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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


def measure(
    sc: Scenario,
    target: str,
    rnd: int,
    *,
    servers: dict[str, Server],
    upstream: Server,
    secs: float,
) -> Run:
    srv = servers[target]
    proxy = None if target == "direct" else srv
    if proxy is not None and proxy.proc.poll() is not None:
        raise BenchError(f"{target} is no longer running (exit code {proxy.proc.returncode})")
    p0 = tree_cpu_ticks(proxy.proc.pid) if proxy else 0
    u0 = tree_cpu_ticks(upstream.proc.pid)
    busy0, total0 = system_busy_ticks()
    load0 = children_cpu_s()
    w = run_load(srv.url(sc.path), sc, secs)
    load_s = children_cpu_s() - load0
    busy1, total1 = system_busy_ticks()
    p1 = tree_cpu_ticks(proxy.proc.pid) if proxy else 0
    u1 = tree_cpu_ticks(upstream.proc.pid)
    # CPU used by anything other than upstream, proxy and the load generator, as a share of all
    ours = (p1 - p0 + u1 - u0) / CLK_TCK + load_s
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
        f"{sc.name} round {rnd} {target:8s} {w.rps:10.0f} req/s  p50 {fmt_lat(w.p50_us)}  "
        f"p99 {fmt_lat(w.p99_us)}  cpu {cpu}  errors {w.errors}  other load {other_pct:.1f}%"
    )
    return run


def fmt_lat(us: float) -> str:
    if math.isnan(us):
        return "-"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_delta(us: float) -> str:
    if math.isnan(us):
        return "-"
    return ("+" if us >= 0 else "-") + fmt_lat(abs(us))


def fmt_opt(v: float | None, spec: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, spec)


# === one scenario ===


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
    rest_rss_mib: float | None
    errors: int
    rps_all: list[float] = field(default_factory=list)


@dataclass
class ScenarioResult:
    scenario: Scenario
    targets: list[str]
    skipped: dict[str, str]
    runs: list[Run]
    summaries: list[Summary]
    open_loop: list[OpenLoop]
    idle: list[IdleRss]
    pymesh_stats: object = None
    tls_seen: dict[str, str] = field(default_factory=dict)


def _med(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def summarize(runs: list[Run], targets: Sequence[str], rest: dict[str, float]) -> list[Summary]:
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
                rps=_med([r.rps for r in rs]),
                p50_us=_med([r.p50_us for r in rs]),
                p99_us=_med([r.p99_us for r in rs]),
                proxy_cpu_us_per_req=_med(cpu) if cpu else None,
                upstream_cpu_us_per_req=_med([r.upstream_cpu_us_per_req for r in rs]),
                proxy_rss_mib=max(rss) if rss else None,
                rest_rss_mib=rest.get(t),
                errors=sum(r.errors for r in rs),
                rps_all=[round(r.rps) for r in rs],
            )
        )
    return out


def tls_params(srv: Server) -> str:
    """The TLS version, suite and key exchange group a default OpenSSL client gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        version = tls.version()
    if version != "TLSv1.3":
        raise BenchError(f"{srv.name}: negotiated {version}, expected TLSv1.3")
    return f"{version} {cipher[0] if cipher else '?'}"


def check_target(sc: Scenario, srv: Server) -> None:
    if sc.mode == "h2c":
        res = subprocess.run(
            ["h2load", "-n4", "-c1", srv.url(sc.path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        r = parse_h2load(res.stdout) if res.returncode == 0 else None
        if r is None or r.requests != 4 or r.errors:
            raise BenchError(f"{srv.name}: h2c GET {sc.path} failed:\n{res.stdout}{res.stderr}")
        return
    status, body = http_get(srv.url(sc.path))
    if status != 200 or len(body) != sc.body_size:
        raise BenchError(
            f"{srv.name}: GET {sc.path} gave {status} with {len(body)} bytes, "
            f"expected 200 with {sc.body_size}"
        )


def pymesh_stats(servers: dict[str, Server]) -> object:
    pm = servers.get("pymesh")
    if pm is None or not pm.admin_url:
        return None
    with contextlib.suppress(OSError, ValueError):
        _, raw = http_get(f"{pm.admin_url}/stats")
        return json.loads(raw)
    return None


def run_scenario(sc: Scenario, args: argparse.Namespace, pymesh: Path | None) -> ScenarioResult:
    skipped = {t: r for t in args.target_list if (r := skip_reason(t, sc)) is not None}
    for t, why in skipped.items():
        log(f"{sc.name}: skipping {t}: {why}")
    targets = [t for t in args.target_list if t not in skipped]
    procs = Processes()
    base = Path(tempfile.mkdtemp(prefix=f"proxybench-{sc.name}-"))
    os.chmod(base, 0o755)
    try:
        certs = make_cert(base / "certs")
        upstream = start_upstream(procs, base, certs)
        servers: dict[str, Server] = {"direct": upstream.direct(sc.mode)}
        starters: dict[str, Callable[[], Server]] = {
            "pymesh": lambda: start_pymesh(
                procs, base, upstream, sc, certs=certs, binary=pymesh or Path("pymesh")
            ),
            "nginx": lambda: start_nginx_proxy(procs, base, upstream, sc, certs),
            "haproxy": lambda: start_haproxy(procs, base, upstream, sc, certs),
        }
        for t in targets:
            if t != "direct":
                servers[t] = starters[t]()
        tls: dict[str, str] = {}
        for t in targets:
            check_target(sc, servers[t])
            if sc.mode == "tls":
                tls[t] = tls_params(servers[t])
                log(f"{sc.name}: {t} negotiated {tls[t]}")
        rest = {t: tree_rss_kib(servers[t].proc.pid) / 1024 for t in targets if t != "direct"}
        runs = run_rounds(sc, targets, servers, upstream.server, args)
        summaries = summarize(runs, targets, rest)
        open_loop: list[OpenLoop] = []
        idle: list[IdleRss] = []
        if sc.extended:
            open_loop = run_latency(
                sc, targets, servers=servers, summaries=summaries, args=args, pymesh=pymesh
            )
            for t in targets:
                if t != "direct":
                    idle.append(idle_rss(servers[t], args.idle_connections, rest[t]))
        stats = pymesh_stats(servers)
        return ScenarioResult(
            sc, targets, skipped, runs, summaries, open_loop, idle, stats, tls_seen=tls
        )
    finally:
        procs.stop_all()
        for name, proc, d in procs.procs:
            err = d / f"{name}.err"
            tail = err.read_text(errors="replace")[-1500:] if err.exists() else ""
            if proc.returncode not in (0, -signal.SIGTERM):
                log(f"{name} exited with code {proc.returncode}; stderr tail:\n{tail}")
        shutil.rmtree(base, ignore_errors=True)


def run_rounds(
    sc: Scenario,
    targets: Sequence[str],
    servers: dict[str, Server],
    upstream: Server,
    args: argparse.Namespace,
) -> list[Run]:
    """Warm-up, then the targets alternated round by round; noisy runs repeated (bounded)."""
    if args.warmup > 0:
        for t in targets:
            log(f"{sc.name}: warm-up {t} {args.warmup:g}s")
            run_load(servers[t].url(sc.path), sc, args.warmup)
    runs: list[Run] = []
    deadline = time.monotonic() + args.patience * 60
    for rnd in range(1, args.rounds + 1):
        for t in targets:
            quiet_for = min(args.wait_quiet, deadline - time.monotonic())
            if quiet_for > 0:
                wait_for_quiet(quiet_for, args.noisy_pct)
            run = measure(sc, t, rnd, servers=servers, upstream=upstream, secs=args.duration)
            for _ in range(args.noisy_retries):
                if run.other_load_pct <= args.noisy_pct or time.monotonic() > deadline:
                    break
                log(
                    f"other load {run.other_load_pct:.0f}% > {args.noisy_pct:g}%: "
                    f"noisy run, repeating it in {NOISY_PAUSE_S:g}s"
                )
                time.sleep(NOISY_PAUSE_S)  # let the other work pass before the repeat
                run = measure(sc, t, rnd, servers=servers, upstream=upstream, secs=args.duration)
            runs.append(run)
    return runs


def run_latency(
    sc: Scenario,
    targets: Sequence[str],
    *,
    servers: dict[str, Server],
    summaries: list[Summary],
    args: argparse.Namespace,
    pymesh: Path | None,
) -> list[OpenLoop]:
    """Open-loop latency at fixed shares of the slowest proxy's max, targets alternated."""
    if pymesh is None:
        log(f"{sc.name}: open-loop latency needs `pymesh bench`; skipped (no pymesh)")
        return []
    proxies = [s.rps for s in summaries if s.target != "direct" and s.rps > 0]
    if not proxies:
        return []
    slowest = min(proxies)
    out: list[OpenLoop] = []
    for rnd in range(1, args.latency_rounds + 1):
        for share in args.latency_loads:
            rate = slowest * share
            for t in targets:
                out.append(
                    run_open_loop(
                        pymesh,
                        servers[t].url(sc.path),
                        target=t,
                        rnd=rnd,
                        pct=round(share * 100),
                        rate=rate,
                        secs=args.latency_duration,
                    )
                )
    return out


# === report ===


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def latency_medians(ol: list[OpenLoop]) -> dict[tuple[int, str], OpenLoop]:
    """(load %, target) -> an OpenLoop whose figures are medians over rounds."""
    out: dict[tuple[int, str], OpenLoop] = {}
    for key in sorted({(o.load_pct, o.target) for o in ol}):
        xs = [o for o in ol if (o.load_pct, o.target) == key]
        out[key] = OpenLoop(
            target=key[1],
            round=len(xs),
            load_pct=key[0],
            rate=xs[0].rate,
            rps=_med([o.rps for o in xs]),
            requests=sum(o.requests for o in xs),
            errors=sum(o.errors for o in xs),
            p50_us=_med([o.p50_us for o in xs]),
            p99_us=_med([o.p99_us for o in xs]),
            p999_us=_med([o.p999_us for o in xs]),
        )
    return out


def load_line(sc: Scenario) -> str:
    if sc.load == "h2load":
        return f"`h2load -t1 -c{sc.connections} -m{sc.streams}` (h2c prior knowledge)"
    close = ' -H "Connection: close"' if sc.close else ""
    return f"`wrk -t1 -c{sc.connections}{close} --latency`"


def render_scenario(res: ScenarioResult, machine: dict[str, str], args: argparse.Namespace) -> str:
    sc = res.scenario
    by = {s.target: s for s in res.summaries}
    lines = [
        f"# {sc.name}{' (smoke)' if args.smoke else ''}",
        "",
        f"{sc.title}. `GET {sc.path}` ({sc.body_size:,}-byte bodies) from an nginx upstream "
        f"(1 worker, CPU {UPSTREAM_CPU}); load {load_line(sc)} on CPU {LOAD_CPU}; each proxy "
        f"1 worker on CPU {PROXY_CPU}. Medians of {args.rounds} alternated round(s) x "
        f"{round(args.duration)} s; warm-up {args.warmup:g} s per target.",
        "",
    ]
    for t, why in res.skipped.items():
        lines.append(f"- **{t} skipped**: {why}")
    if res.tls_seen:
        seen = ", ".join(f"{t}: {v}" for t, v in res.tls_seen.items())
        lines.append(f"- TLS negotiated with a default OpenSSL client: {seen}")
    if res.skipped or res.tls_seen:
        lines.append("")
    lines += [
        "| target | req/s | p50 | p99 | proxy CPU µs/req | upstream CPU µs/req "
        "| RSS at rest MiB | RSS after load MiB | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in res.summaries:
        lines.append(
            f"| {s.target} | {s.rps:,.0f} | {fmt_lat(s.p50_us)} | {fmt_lat(s.p99_us)} "
            f"| {fmt_opt(s.proxy_cpu_us_per_req, '.1f')} "
            f"| {fmt_opt(s.upstream_cpu_us_per_req, '.1f')} "
            f"| {fmt_opt(s.rest_rss_mib, '.1f')} "
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
            lines.append(
                f"| pymesh / {peer} | {_ratio(pm.rps, o.rps)} "
                f"| {_ratio(pm.proxy_cpu_us_per_req, o.proxy_cpu_us_per_req)} "
                f"| {_ratio(pm.p50_us, o.p50_us)} | {_ratio(pm.p99_us, o.p99_us)} |"
            )
    if res.open_loop:
        med = latency_medians(res.open_loop)
        lines += [
            "",
            "## Open-loop latency",
            "",
            "`pymesh bench -c 64 -R RATE` (HdrHistogram, latency from each request's due time, "
            "so stalls count against every request they delay), at shares of the slowest "
            f"proxy's max req/s; {args.latency_rounds} round(s) x "
            f"{round(args.latency_duration)} s, medians. Added = target minus direct.",
            "",
            "| load | rate/s | target | p50 | p99 | p99.9 | added p50 | added p99 "
            "| added p99.9 | errors |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (pct, t), ol in med.items():
            d = med.get((pct, "direct"))
            add = (
                [
                    fmt_delta(ol.p50_us - d.p50_us),
                    fmt_delta(ol.p99_us - d.p99_us),
                    fmt_delta(ol.p999_us - d.p999_us),
                ]
                if d is not None and t != "direct"
                else ["-", "-", "-"]
            )
            lines.append(
                f"| {pct}% | {ol.rate:,.0f} | {t} | {fmt_lat(ol.p50_us)} | {fmt_lat(ol.p99_us)} "
                f"| {fmt_lat(ol.p999_us)} | {' | '.join(add)} | {ol.errors} |"
            )
    if res.idle:
        lines += [
            "",
            "## Memory with idle keep-alive connections",
            "",
            "A helper in the benchmark process opens N connections (RLIMIT_NOFILE raised to "
            "its hard limit), sends one request on each and reads the answer, holds them all "
            "open, then reads VmRSS of the proxy's process tree (/proc/PID/status).",
            "",
            "| target | connections held | RSS at rest MiB | RSS with them MiB "
            "| KiB per connection | note |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for i in res.idle:
            lines.append(
                f"| {i.target} | {i.held:,} / {i.wanted:,} | {i.rest_mib:.1f} "
                f"| {fmt_opt(i.loaded_mib, '.1f')} | {fmt_opt(i.per_conn_kib, '.1f')} "
                f"| {i.note} |"
            )
    lines += [
        "",
        "Every run, in the order run (other load: CPU used by anything but upstream, proxy "
        "and load generator, as a share of all CPUs; much more than a few % means the "
        "machine was busy and the run is noisy):",
        "",
        "| round | target | req/s | p50 | p99 | proxy CPU µs/req | other load |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.round} | {r.target} | {r.rps:,.0f} | {fmt_lat(r.p50_us)} | {fmt_lat(r.p99_us)} "
        f"| {fmt_opt(r.proxy_cpu_us_per_req, '.1f')} | {r.other_load_pct:.1f}% |"
        for r in res.runs
    ]
    errs = [r for r in res.runs if r.errors]
    if errs:
        lines += ["", "Errors reported by the load generator:"]
        lines += [f"- round {r.round} {r.target}: {r.error_detail}" for r in errs]
    lines += ["", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", f"Command: `{args.command_line}`", ""]
    return "\n".join(lines)


def render_summary(
    results: list[ScenarioResult], machine: dict[str, str], args: argparse.Namespace
) -> str:
    lines = [
        f"# pymesh benchmark summary{' (smoke)' if args.smoke else ''}",
        "",
        f"Medians of {args.rounds} alternated round(s) x {round(args.duration)} s per target; "
        "every proxy 1 worker on its own CPU. Details per scenario in `<scenario>.md`.",
        "",
        "| scenario | direct req/s | pymesh req/s | nginx req/s | HAProxy req/s "
        "| pymesh CPU µs/req | nginx | HAProxy | CPU pymesh/nginx | CPU pymesh/HAProxy "
        "| req/s pymesh/direct | median other load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in results:
        by = {s.target: s for s in res.summaries}

        def rps(t: str, by: dict[str, Summary] = by) -> str:
            return f"{by[t].rps:,.0f}" if t in by else "-"

        def cpu(t: str, by: dict[str, Summary] = by) -> float | None:
            return by[t].proxy_cpu_us_per_req if t in by else None

        pm = by.get("pymesh")
        dr = by.get("direct")
        other = _med([r.other_load_pct for r in res.runs])
        lines.append(
            f"| {res.scenario.name} | {rps('direct')} | {rps('pymesh')} | {rps('nginx')} "
            f"| {rps('haproxy')} | {fmt_opt(cpu('pymesh'), '.1f')} "
            f"| {fmt_opt(cpu('nginx'), '.1f')} | {fmt_opt(cpu('haproxy'), '.1f')} "
            f"| {_ratio(cpu('pymesh'), cpu('nginx'))} | {_ratio(cpu('pymesh'), cpu('haproxy'))} "
            f"| {_ratio(pm.rps if pm else None, dr.rps if dr else None)} | {other:.0f}% |"
        )
    skipped = [(r.scenario.name, t, w) for r in results for t, w in r.skipped.items()]
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {s}: {t} ({w})" for s, t, w in skipped]
    ext = [r for r in results if r.open_loop or r.idle]
    for r in ext:
        med = latency_medians(r.open_loop)
        if med:
            lines += [
                "",
                f"{r.scenario.name}, open-loop p99 (`pymesh bench -R`), added over direct:",
                "",
                "| load | " + " | ".join(t for t in r.targets if t != "direct") + " |",
                "| ---: |" + " ---: |" * len([t for t in r.targets if t != "direct"]),
            ]
            for pct in sorted({k[0] for k in med}):
                d = med.get((pct, "direct"))
                cells = []
                for t in r.targets:
                    if t == "direct":
                        continue
                    o = med.get((pct, t))
                    cells.append(
                        f"{fmt_lat(o.p99_us)} ({fmt_delta(o.p99_us - d.p99_us)})"
                        if o is not None and d is not None
                        else "-"
                    )
                lines.append(f"| {pct}% | " + " | ".join(cells) + " |")
        if r.idle:
            lines += [
                "",
                f"{r.scenario.name}, RSS (MiB) at rest and with "
                f"{args.idle_connections:,} idle keep-alive connections:",
                "",
                "| target | at rest | with idle connections | KiB per connection | note |",
                "| --- | ---: | ---: | ---: | --- |",
            ]
            lines += [
                f"| {i.target} | {i.rest_mib:.1f} | {fmt_opt(i.loaded_mib, '.1f')} "
                f"| {fmt_opt(i.per_conn_kib, '.1f')} | {i.note} |"
                for i in r.idle
            ]
    lines += [
        "",
        "Bars (DESIGN.md, issue 6): proxy CPU/req pymesh ≤ 0.80x nginx and ≤ 1.00x HAProxy "
        "(HTTP/1.1 keep-alive); ≤ 0.80x nginx for HTTP/2 and TLS; no more than nginx in "
        "every scenario. pymesh RSS ≤ 60 MiB at rest, ≤ 16 KiB per idle connection.",
        "",
        "Machine:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", f"Command: `{args.command_line}`", ""]
    return "\n".join(lines)


def plot(results: list[ScenarioResult], outdir: Path, suffix: str, machine: dict[str, str]) -> None:
    """PNG plots (throughput, CPU per request, latency percentiles); skipped without matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        log("matplotlib not importable: no plots (run.sh installs it for full runs)")
        return
    caption = f"{machine.get('cpu', '?')}, {machine.get('nproc', '?')} CPUs, {machine['date']}"
    colors = {"direct": "#888888", "pymesh": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#d62728"}
    for metric, ylabel, fname in (
        ("rps", "requests/s (median)", "throughput"),
        ("proxy_cpu_us_per_req", "proxy CPU µs per request (median)", "cpu-per-request"),
    ):
        fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.8), squeeze=False)
        for ax, r in zip(axes[0], results, strict=True):
            xs = [s for s in r.summaries if getattr(s, metric) is not None]
            ax.bar(
                [s.target for s in xs],
                [getattr(s, metric) for s in xs],
                color=[colors.get(s.target, "k") for s in xs],
            )
            ax.set_title(r.scenario.name, fontsize=9)
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle(f"{ylabel}\n{caption}", fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / f"{fname}{suffix}.png", dpi=100)
        plt.close(fig)
    for r in results:
        med = latency_medians(r.open_loop)
        if not med:
            continue
        loads = sorted({k[0] for k in med})
        fig, axes = plt.subplots(1, len(loads), figsize=(4 * len(loads), 3.8), squeeze=False)
        for ax, pct in zip(axes[0], loads, strict=True):
            for t in r.targets:
                o = med.get((pct, t))
                if o is None:
                    continue
                ax.plot(
                    ["p50", "p99", "p99.9"],
                    [o.p50_us / 1000, o.p99_us / 1000, o.p999_us / 1000],
                    marker="o",
                    label=t,
                    color=colors.get(t, "k"),
                )
            ax.set_yscale("log")
            ax.set_title(f"{pct}% load ({med[(pct, r.targets[0])].rate:,.0f} req/s)", fontsize=9)
            ax.set_ylabel("latency ms (log)")
            ax.legend(fontsize=7)
        fig.suptitle(f"{r.scenario.name} open-loop latency\n{caption}", fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / f"latency-{r.scenario.name}{suffix}.png", dpi=100)
        plt.close(fig)
    log(f"plots written to {outdir}")


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0].strip() if text else "n/a"


def machine_info(pymesh: Path | None) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line(["nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]) if shutil.which("haproxy") else "n/a",
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]) if shutil.which("h2load") else "n/a",
        "openssl": _first_line(["openssl", "version"]),
        "RLIMIT_NOFILE": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }
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
        help="CI check: every scenario 1 round x 1 s, no warm-up, 200 idle connections; "
        "fails on zero requests/errors",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of " + ",".join(SCENARIOS),
    )
    p.add_argument("--rounds", type=int, help="rounds (default 5; smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per run (default 10; smoke 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per target (default 5; smoke 0)")
    p.add_argument(
        "--latency-rounds", type=int, help="open-loop latency rounds (default 1 per round)"
    )
    p.add_argument(
        "--latency-duration", type=float, help="seconds per open-loop run (default --duration)"
    )
    p.add_argument(
        "--idle-connections",
        type=int,
        help="idle keep-alive connections for the RSS figure (default 10000; smoke 200)",
    )
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
        "--out-dir",
        type=Path,
        default=HERE / "results",
        help="where reports go (default benches/results; smoke files end in -smoke)",
    )
    p.add_argument(
        "--max-errors", type=int, default=10, help="smoke: fail if a run has more errors"
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
        help="minutes per scenario after warm-up past which runs no longer wait nor repeat",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-install", action="store_true", help="never call apt-get")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.smoke else 5)
    a.duration = a.duration or (1.0 if a.smoke else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.0 if a.smoke else 5.0)
    a.latency_rounds = a.latency_rounds or (1 if a.smoke else a.rounds)
    a.latency_duration = a.latency_duration or a.duration
    a.latency_loads = (0.5,) if a.smoke else LATENCY_LOADS
    if a.idle_connections is None:
        a.idle_connections = 200 if a.smoke else 10_000
    if a.wait_quiet is None:
        a.wait_quiet = 0.0 if a.smoke else 180.0
    if a.noisy_retries is None:
        a.noisy_retries = 0 if a.smoke else 3
    a.target_list = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.target_list if t not in ALL_TARGETS]
    if bad or not a.target_list:
        p.error(f"unknown targets {bad}; choose from {','.join(ALL_TARGETS)}")
    a.scenario_list = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenario_list if s not in SCENARIOS]
    if bad or not a.scenario_list:
        p.error(f"unknown scenarios {bad}; choose from {','.join(SCENARIOS)}")
    a.command_line = " ".join(["benches/run.sh", *(argv if argv is not None else sys.argv[1:])])
    return a


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_results(
    args: argparse.Namespace, results: list[ScenarioResult], pymesh: Path | None
) -> None:
    machine = machine_info(pymesh)
    suffix = "-smoke" if args.smoke else ""
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for res in results:
        report = render_scenario(res, machine, args)
        (out / f"{res.scenario.name}{suffix}.md").write_text(report)
        raw = {
            "scenario": asdict(res.scenario),
            "smoke": args.smoke,
            "machine": machine,
            "skipped": res.skipped,
            "summary": [asdict(s) for s in res.summaries],
            "runs": [asdict(r) for r in res.runs],
            "open_loop": [asdict(o) for o in res.open_loop],
            "idle": [asdict(i) for i in res.idle],
            "tls_negotiated": res.tls_seen,
            "pymesh_stats_after": res.pymesh_stats,
        }
        (out / f"{res.scenario.name}{suffix}.json").write_text(json.dumps(raw, indent=2) + "\n")
    summary = render_summary(results, machine, args)
    (out / f"SUMMARY{suffix}.md").write_text(summary)
    print(summary, flush=True)
    if not args.no_plots:
        plot(results, out, suffix, machine)


def smoke_verdict(args: argparse.Namespace, results: list[ScenarioResult]) -> int:
    failed = False
    for res in results:
        for r in res.runs:
            if r.requests == 0 or r.errors > args.max_errors:
                log(
                    f"smoke FAIL: {res.scenario.name} {r.target}: {r.requests} requests, "
                    f"{r.errors} errors ({r.error_detail})"
                )
                failed = True
        for t in res.targets:
            if not any(r.target == t for r in res.runs):
                log(f"smoke FAIL: {res.scenario.name} {t}: no run")
                failed = True
        for o in res.open_loop:
            if o.requests == 0 or o.errors > args.max_errors:
                log(f"smoke FAIL: open loop {o.target}: {o.requests} requests, {o.errors} errors")
                failed = True
    if failed:
        return 1
    log("smoke ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    nofile = raise_nofile()
    NOFILE[0] = nofile
    log(f"RLIMIT_NOFILE {nofile} (inherited by every process started)")
    results: list[ScenarioResult] = []
    try:
        scenarios = [SCENARIOS[s] for s in args.scenario_list]
        ensure_tools(args.target_list, scenarios, install=not args.no_install)
        pymesh = args.pymesh.resolve() if "pymesh" in args.target_list else None
        if pymesh is not None and not os.access(pymesh, os.X_OK):
            raise BenchError(
                f"pymesh executable not found: {pymesh} "
                "(run scripts/dev-install.sh, or pass --pymesh PATH)"
            )
        t0 = time.monotonic()
        for sc in scenarios:
            log(f"=== scenario {sc.name} ===")
            results.append(run_scenario(sc, args, pymesh))
        write_results(args, results, pymesh)
        log(f"wrote {args.out_dir} in {time.monotonic() - t0:.0f}s")
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130
    return smoke_verdict(args, results) if args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
