"""Helpers for end-to-end tests: real processes of the installed ``pymesh`` console script,
real loopback sockets, ports chosen by the OS (port 0, read back from what the process prints).

Every wait is bounded; every process is stopped with SIGTERM at teardown (and killed, failing
the test, if it does not exit). Process output is read by background threads so pipes never fill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

# The console script installed next to the interpreter running the tests (the .venv's).
PYMESH = str(Path(sys.executable).parent / "pymesh")

START_TIMEOUT = 30.0  # seconds for a process to print its addresses and become ready
STOP_TIMEOUT = 20.0  # seconds for a process to exit after SIGTERM (drain_timeout is 5s)
HTTP_TIMEOUT = 10.0

ADMIN_LINE = re.compile(r"^pymesh: admin listening on (https?://\S+?)/?$")
TOKEN_LINE = re.compile(r"^pymesh: admin token in (\S+)$")
LISTENER_LINE = re.compile(r"^pymesh: listener (\S+) on (\S+)$")
ECHO_LINE = re.compile(r"^pymesh echo: (\S+) listening on (\S+)$")


def poll(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Proc:
    """A child process whose stdout and stderr lines are collected by background threads."""

    def __init__(
        self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=cwd,
        )
        self._cond = threading.Condition()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_lines)),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_lines)),
        ]
        for t in self._threads:
            t.daemon = True
            t.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.stderr_lines)

    def describe(self) -> str:
        return (
            f"{' '.join(self.args)} (exit {self.popen.poll()})\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def wait_line(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern`` (the first one, even if already seen)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout_lines:
                    m = pattern.match(line)
                    if m:
                        return m
                if self.popen.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"process exited before printing {pattern.pattern!r}:\n" + self.describe()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no line matching {pattern.pattern!r} within {timeout}s:\n"
                        + self.describe()
                    )
                self._cond.wait(min(remaining, 0.1))

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for exit (killing it if it does not exit in time, and failing); answer the code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            self._close()
            raise AssertionError(
                f"process did not exit within {timeout}s; killed:\n{self.describe()}"
            ) from None
        self._close()
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; answer the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def _close(self) -> None:
        for t in self._threads:
            t.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def ensure_stopped(self) -> int | None:
        """Teardown: stop the process if it still runs; answer the exit code of that stop."""
        if self.popen.returncode is not None:
            self._close()
            return None
        return self.stop()


def stop_all(procs: list[Proc]) -> None:
    """Teardown: SIGTERM every process still running, wait for each (killing any that hangs),
    then fail if one of them did not exit 0 or printed a traceback."""
    running = [p for p in procs if p.popen.poll() is None]
    for p in running:
        p.signal(signal.SIGTERM)
    problems: list[str] = []
    for p in procs:
        try:
            code = p.wait()
        except AssertionError as e:
            problems.append(str(e))
            continue
        if p in running and code != 0:
            problems.append(f"exit code {code} after SIGTERM:\n{p.describe()}")
        if "Traceback" in p.stderr:
            problems.append(f"traceback on stderr:\n{p.describe()}")
    assert not problems, "\n\n".join(problems)


# === echo upstreams ===


class Echo:
    def __init__(self, proc: Proc, name: str, address: str) -> None:
        self.proc = proc
        self.name = name
        self.address = address  # "ip:port"
        self.url = f"http://{address}"


# === the proxy ===


def cluster(name: str, *endpoints: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoints": list(endpoints), **extra}


def listener(
    name: str, routes: list[dict[str, Any]], listen: str = "127.0.0.1:0"
) -> dict[str, Any]:
    return {"name": name, "listen": listen, "routes": routes}


def route(
    to: dict[str, int] | str,
    name: str | None = None,
    path: str | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """A route to one cluster (``to="c"``) or a weighted split (``to={"a": 90, "b": 10}``)."""
    r: dict[str, Any] = {}
    if name is not None:
        r["name"] = name
    if path is not None:
        r["match"] = {"path": path}
    elif prefix is not None:
        r["match"] = {"path_prefix": prefix}
    if isinstance(to, str):
        r["to"] = [{"cluster": to}]
    else:
        r["to"] = [{"cluster": c, "weight": w} for c, w in to.items()]
    return r


def read_token(tokens_file: Path, access: str = "read-write") -> str:
    """The secret of the first token with ``access`` in an admin tokens file."""
    for t in json.loads(tokens_file.read_text())["tokens"]:
        if t["access"] == access:
            secret: str = t["secret"]
            return secret
    raise AssertionError(f"no {access} token in {tokens_file}")


class Mesh:
    def __init__(
        self,
        proc: Proc,
        admin_url: str,
        data_dir: Path,
        config_path: Path | None,
        token: str | None = None,
    ):
        self.proc = proc
        self.admin_url = admin_url.rstrip("/")
        self.data_dir = data_dir
        self.config_path = config_path
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        # Every admin request of the tests sends the read-write token.
        self.admin = httpx.Client(base_url=self.admin_url, timeout=HTTP_TIMEOUT, headers=self.auth)

    def listeners(self) -> dict[str, str]:
        """Every ``pymesh: listener NAME on ADDR`` line printed so far."""
        out: dict[str, str] = {}
        for line in list(self.proc.stdout_lines):
            m = LISTENER_LINE.match(line)
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def listener(self, name: str) -> str:
        """``http://ip:port`` of the listener called ``name`` (as printed at start)."""
        addr = poll(lambda: self.listeners().get(name), START_TIMEOUT, what=f"listener {name}")
        return f"http://{addr}"

    def get(self, path: str) -> httpx.Response:
        return self.admin.get(path)

    def ready(self) -> dict[str, Any]:
        r = self.admin.get("/ready")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def stats(self) -> dict[str, Any]:
        r = self.admin.get("/stats")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def metrics(self) -> str:
        r = self.admin.get("/metrics")
        assert r.status_code == 200, r.text
        return r.text

    def config(self) -> dict[str, Any]:
        r = self.admin.get("/config")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def put_config(self, config: dict[str, Any]) -> httpx.Response:
        return self.admin.put("/config", json=config)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        self.admin.close()
        return self.proc.stop(timeout)

    def close(self) -> int | None:
        self.admin.close()
        return self.proc.ensure_stopped()


def spawn_mesh(
    tmp_path: Path,
    config: dict[str, Any] | None,
    extra_args: list[str] | None = None,
    expect_listeners: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Mesh:
    """Start ``pymesh run`` and wait until it printed its addresses and /ready answers 200.

    ``config`` None: no ``--config`` (the demo on a fresh data dir; the stored config when the
    data dir already has one). The admin token is read from the tokens file it prints (or is
    ``env["PYMESH_ADMIN_TOKEN"]``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path / "data"
    args = [PYMESH, "run", "--admin", "127.0.0.1:0", "--data-dir", str(data_dir)]
    config_path = None
    if config is not None:
        config_path = tmp_path / "mesh.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        args += ["--config", str(config_path)]
        if expect_listeners is None:
            expect_listeners = [lst["name"] for lst in config.get("listeners", [])]
    args += extra_args or []
    proc = Proc(args, cwd=tmp_path, env=env)
    try:
        m = proc.wait_line(ADMIN_LINE)
        token = (env or {}).get("PYMESH_ADMIN_TOKEN")
        if token is None:
            token = read_token(Path(proc.wait_line(TOKEN_LINE).group(1)))
        mesh = Mesh(proc, m.group(1), data_dir, config_path, token)
    except AssertionError:
        proc.ensure_stopped()
        raise
    try:
        for name in expect_listeners or []:
            mesh.listener(name)

        def is_ready() -> bool:
            assert proc.popen.poll() is None, "pymesh run exited:\n" + proc.describe()
            try:
                return mesh.admin.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        poll(is_ready, START_TIMEOUT, interval=0.05, what="GET /ready == 200")
    except BaseException:
        mesh.close()
        raise
    return mesh


# === helpers ===


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> [(name, labels, value)] (comments skipped)."""
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    out: list[tuple[str, dict[str, str], float]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = sample.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        labels = dict(label.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels`` (None if absent)."""
    hits = [
        v
        for n, lb, v in parse_metrics(text)
        if n == name and all(lb.get(k) == want for k, want in labels.items())
    ]
    assert len(hits) <= 1, f"{len(hits)} samples of {name} match {labels}"
    return hits[0] if hits else None


def dead_address() -> str:
    """A loopback address nothing listens on: a port the OS gave us, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


class OneShotServer:
    """A TCP server on loopback that runs ``handle(conn)`` for each connection in a thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.handle = handle
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            self.handle(conn)
        except BaseException as e:  # reported by close()
            self.errors.append(e)
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()
        assert not self.errors, self.errors
