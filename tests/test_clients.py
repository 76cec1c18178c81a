"""The real clients issue 3 names, through the proxy on loopback: curl (HTTP/1.1, h2c by prior
knowledge, h2 over TLS), the `websockets` package, `openssl s_client` for SNI passthrough,
and a plain TCP echo. (grpcio is in test_protocols.py.) Certificates are made by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certs import CA
from meshtest import Echo, Mesh, cluster, listener, route
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

CURL = shutil.which("curl") or "curl"
OPENSSL = shutil.which("openssl") or "openssl"


def run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=30, check=False)


def curl(*args: str) -> tuple[str, str]:
    """``curl -sS ARGS``: the HTTP version and status curl reports, and the body."""
    p = run(
        [CURL, "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_version} %{http_code}", *args]
    )
    assert p.returncode == 0, p.stderr
    body, _, tail = p.stdout.decode().rpartition("\n")
    return tail, body


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


def test_curl_http1_and_h2c_prior_knowledge(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("e")
    url = mesh(
        {"listeners": [listener("in", [route("c")])], "clusters": [cluster("c", up.address)]}
    ).listener("in")
    assert curl("--http1.1", url + "/")[0] == "1.1 200"
    assert curl("--http2-prior-knowledge", url + "/")[0] == "2 200"
    # A body goes up and comes back whole over both.
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        status, body = curl(flag, "--data-binary", "hello through the proxy", url + "/")
        assert status.endswith(" 200") and body == "hello through the proxy", (flag, status, body)


def test_curl_h2_over_tls_with_cacert(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("a.test")
    up = echo("e")
    lst = listener("in", [route("c")])
    lst["tls"] = {"cert": str(leaf.cert), "key": str(leaf.key)}
    port = port_of(
        mesh({"listeners": [lst], "clusters": [cluster("c", up.address)]}).listener("in")
    )
    resolve = f"a.test:{port}:127.0.0.1"
    url = f"https://a.test:{port}/"
    assert curl("--http2", "--cacert", str(ca.path), "--resolve", resolve, url)[0] == "2 200"
    assert curl("--http1.1", "--cacert", str(ca.path), "--resolve", resolve, url)[0] == "1.1 200"
    # Without the CA, curl refuses the certificate: the check is real.
    p = run([CURL, "-sS", "--max-time", "20", "--resolve", resolve, url])
    assert p.returncode != 0


# === WebSocket ===


@pytest.fixture
def ws_upstream() -> Iterator[str]:
    """A `websockets` echo server in a thread; yields its host:port."""

    def echo_handler(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    server: Server = ws_serve(echo_handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    yield f"{host}:{port}"
    server.shutdown()
    thread.join(5)


def test_websockets_echo_through_the_proxy(ws_upstream: str, mesh: Callable[..., Mesh]) -> None:
    url = mesh(
        {"listeners": [listener("in", [route("ws")])], "clusters": [cluster("ws", ws_upstream)]}
    ).listener("in")
    with ws_connect(
        url.replace("http://", "ws://") + "/chat", open_timeout=10, close_timeout=5
    ) as ws:
        for i in range(20):
            ws.send(f"text {i}")
            assert ws.recv(timeout=10) == f"text {i}"
        blob = bytes(range(256)) * 1024
        ws.send(blob)
        assert ws.recv(timeout=10) == blob


# === TLS passthrough with openssl s_client ===


def test_openssl_s_client_sni_passthrough(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ca = CA(tmp_path / "pki")
    ea, eb = echo("ea"), echo("eb")
    back_listeners = []
    for name in ("a", "b"):
        leaf = ca.issue(f"{name}.test")
        lst = listener(name, [route(f"e{name}")])
        lst["tls"] = {"cert": str(leaf.cert), "key": str(leaf.key), "alpn": ["http/1.1"]}
        back_listeners.append(lst)
    back = mesh(
        {
            "listeners": back_listeners,
            "clusters": [cluster("ea", ea.address), cluster("eb", eb.address)],
        }
    )
    seen = back.listeners()
    front = mesh(
        {
            "listeners": [
                {
                    "name": "pass",
                    "listen": "127.0.0.1:0",
                    "protocol": "tls-passthrough",
                    "routes": [
                        {"match": {"sni": "a.test"}, "to": [{"cluster": "A"}]},
                        {"match": {"sni": "b.test"}, "to": [{"cluster": "B"}]},
                    ],
                }
            ],
            "clusters": [cluster("A", seen["a"]), cluster("B", seen["b"])],
        }
    )
    addr = front.listener("pass").removeprefix("http://")
    for sni, server_id in (("a.test", "ea"), ("b.test", "eb")):
        p = run(
            [
                OPENSSL,
                "s_client",
                "-connect",
                addr,
                "-servername",
                sni,
                "-CAfile",
                str(ca.path),
                "-verify_return_error",
                "-verify_hostname",
                sni,
                "-ign_eof",
            ],
            stdin=f"GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n".encode(),
        )
        out = p.stdout.decode(errors="replace")
        assert p.returncode == 0, p.stderr
        assert f"subject=CN = {sni}" in out or f"CN={sni}" in out, out  # the backend's own cert
        assert "Verify return code: 0 (ok)" in out, out
        assert f"server-id: {server_id}" in out.lower(), out


# === TCP ===


@pytest.fixture
def tcp_echo() -> Iterator[str]:
    """A plain TCP echo server in a thread: sends back what it reads until EOF, then closes."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stopped = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stopped.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stopped.set()
    thread.join(5)
    sock.close()


def test_plain_tcp_echo_through_a_tcp_listener(tcp_echo: str, mesh: Callable[..., Mesh]) -> None:
    m = mesh(
        {
            "listeners": [
                {
                    "name": "raw",
                    "listen": "127.0.0.1:0",
                    "protocol": "tcp",
                    "to": [{"cluster": "t"}],
                }
            ],
            "clusters": [cluster("t", tcp_echo)],
        }
    )
    host, _, port = m.listener("raw").removeprefix("http://").rpartition(":")
    payload = bytes(range(256)) * 4096  # 1 MiB
    with socket.create_connection((host, int(port)), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        sender.join(10)
    assert got == payload
