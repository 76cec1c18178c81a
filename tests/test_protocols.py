"""Protocols end to end: HTTP/2 (h2c and h2 over TLS), gRPC, upgrades, TCP, TLS termination
and origination, TLS passthrough by SNI, and gigabyte streams, over real loopback sockets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from certs import CA, Issued, common_name
from meshtest import Echo, Mesh, OneShotServer, cluster, listener, poll, route

# === helpers ===


def host_port(url_or_addr: str) -> tuple[str, int]:
    addr = url_or_addr.removeprefix("http://")
    host, _, port = addr.rpartition(":")
    return host, int(port)


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], OneShotServer]]:
    servers: list[OneShotServer] = []

    def start(handle: Callable[[socket.socket], None]) -> OneShotServer:
        s = OneShotServer(handle)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def read_until(sock: socket.socket | ssl.SSLSocket, marker: bytes, limit: int = 65536) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}; got {data!r}"
        data += chunk
        assert len(data) < limit
    return data


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def simple_mesh(mesh: Callable[..., Mesh], up: Echo, **cluster_extra: Any) -> Mesh:
    return mesh(
        {
            "listeners": [listener("in", [route("c")])],
            "clusters": [cluster("c", up.address, **cluster_extra)],
        }
    )


# === HTTP/2 ===


def test_http1_and_h2c_prior_knowledge_share_one_listener(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("a")
    url = simple_mesh(mesh, up).listener("in")
    with httpx.Client(http1=False, http2=True, timeout=10) as h2:
        r = h2.get(url + "/")
        assert (r.status_code, r.http_version, r.headers["server-id"]) == (200, "HTTP/2", "a")
        assert r.headers["echo-http-version"] == "HTTP/1.1"  # the cluster speaks http1
        # Twenty slow requests multiplexed on the one connection finish together, not in turn.
        started = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda _: h2.get(url + "/?delay=300ms").status_code, range(20)))
        assert codes == [200] * 20
        assert time.monotonic() - started < 3.0  # in turn they would take 6 s
    r = httpx.get(url + "/", timeout=10)
    assert (r.status_code, r.http_version) == (200, "HTTP/1.1")


def test_http2_upstream_serves_http1_clients_with_bodies_intact(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("h2")
    url = simple_mesh(mesh, up, protocol="http2").listener("in")
    r = httpx.get(url + "/", timeout=10)
    assert (r.status_code, r.headers["echo-http-version"]) == (200, "HTTP/2")
    body = bytes(range(256)) * 4096  # 1 MiB: more than the default HTTP/2 windows
    r = httpx.post(url + "/", content=body, timeout=30)
    assert r.status_code == 200
    assert r.content == body
    r = httpx.get(url + "/?size=3000000", timeout=30)
    assert len(r.content) == 3_000_000


# === gRPC ===


def _grpc_handlers() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"slow":
            time.sleep(2)
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return b"echo:" + request

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def total(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return str(sum(int(r) for r in requests)).encode()

    def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield r.upper()

    return grpc.method_handlers_generic_handler(
        "test.Svc",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


def test_grpc_all_four_kinds_pass_with_status_and_trailers(mesh: Callable[..., Mesh]) -> None:
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((_grpc_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        m = mesh(
            {
                "listeners": [listener("in", [route("g")])],
                "clusters": [cluster("g", f"127.0.0.1:{port}", protocol="http2")],
            }
        )
        host, proxy_port = host_port(m.listener("in"))
        with grpc.insecure_channel(f"{host}:{proxy_port}") as ch:
            unary = ch.unary_unary("/test.Svc/Unary")
            reply, call = unary.with_call(b"hi", timeout=10)
            assert reply == b"echo:hi"
            assert ("x-trailer", "kept") in tuple(call.trailing_metadata() or ())
            with pytest.raises(grpc.RpcError) as missing:
                unary(b"missing", timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert missing.value.details() == "no such thing"
            with pytest.raises(grpc.RpcError) as late:
                unary(b"slow", timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert list(ch.unary_stream("/test.Svc/Count")(b"5", timeout=10)) == [
                b"0",
                b"1",
                b"2",
                b"3",
                b"4",
            ]
            assert (
                ch.stream_unary("/test.Svc/Total")(iter([b"1", b"2", b"39"]), timeout=10) == b"42"
            )
            said = ch.stream_stream("/test.Svc/Chat")(iter([b"a", b"b"]), timeout=10)
            assert list(said) == [b"A", b"B"]
    finally:
        server.stop(0).wait(5)


# === upgrades and TCP ===


def test_upgraded_connections_are_spliced_both_ways(
    mesh: Callable[..., Mesh], tcp_server: Callable[..., OneShotServer]
) -> None:
    def upgrade_then_shout(conn: socket.socket) -> None:
        head = read_until(conn, b"\r\n\r\n").lower()
        assert b"upgrade: shout" in head and b"connection: upgrade" in head
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: shout\r\n\r\n"
        )
        while data := conn.recv(4096):
            conn.sendall(data.upper())

    up = tcp_server(upgrade_then_shout)
    m = mesh({"listeners": [listener("in", [route("u")])], "clusters": [cluster("u", up.address)]})
    with socket.create_connection(host_port(m.listener("in")), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: shout\r\n\r\n")
        head = read_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        for word in (b"hello", b"again"):
            s.sendall(word)
            assert read_until(s, word.upper()) == word.upper()


def test_tcp_listener_relays_bytes_and_passes_half_close(
    mesh: Callable[..., Mesh], tcp_server: Callable[..., OneShotServer]
) -> None:
    def count_until_eof(conn: socket.socket) -> None:
        n = len(read_all(conn))
        conn.sendall(b"got %d bytes" % n)

    up = tcp_server(count_until_eof)
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
            "clusters": [cluster("t", up.address)],
        }
    )
    with socket.create_connection(host_port(m.listener("raw")), timeout=10) as s:
        s.sendall(b"x" * 300_000)
        s.shutdown(socket.SHUT_WR)  # the upstream must see EOF, and still answer
        assert read_all(s) == b"got 300000 bytes"


def test_tcp_idle_connections_are_closed(
    mesh: Callable[..., Mesh], tcp_server: Callable[..., OneShotServer]
) -> None:
    def drain(conn: socket.socket) -> None:
        read_all(conn)

    up = tcp_server(drain)
    m = mesh(
        {
            "listeners": [
                {
                    "name": "raw",
                    "listen": "127.0.0.1:0",
                    "protocol": "tcp",
                    "to": [{"cluster": "t"}],
                    "idle_timeout": "300ms",
                }
            ],
            "clusters": [cluster("t", up.address)],
        }
    )
    with socket.create_connection(host_port(m.listener("raw")), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # closed by the proxy, not by the 10 s socket timeout
        assert time.monotonic() - started < 5


def test_a_server_that_speaks_first_is_heard_at_once_and_http_waits_for_the_client(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh], tcp_server: Callable[..., OneShotServer]
) -> None:
    """HTTP listeners accept a connection once the client's first bytes are in
    (TCP_DEFER_ACCEPT); a TCP listener must not wait for them, or a server that greets first
    (SMTP, MySQL, SSH) would be heard a second late. Also when a kept listener (same name and
    address) turns from http into tcp."""

    def greet(conn: socket.socket) -> None:
        conn.sendall(b"220 ready\r\n")
        read_all(conn)

    up = tcp_server(greet)
    web = echo("w")
    raw = {"name": "raw", "listen": "127.0.0.1:0", "protocol": "tcp", "to": [{"cluster": "t"}]}
    clusters = [cluster("w", web.address), cluster("t", up.address)]
    m = mesh({"listeners": [listener("front", [route("w")]), raw], "clusters": clusters})

    def greeting_after(address: str) -> float:
        with socket.create_connection(host_port(address), timeout=10) as s:
            started = time.monotonic()
            assert read_until(s, b"\r\n") == b"220 ready\r\n"
            return time.monotonic() - started

    assert greeting_after(m.listener("raw")) < 0.5
    # A client that waits before it speaks is answered when it does.
    front = m.listener("front")
    with socket.create_connection(host_port(front), timeout=10) as s:
        time.sleep(0.3)  # the point of the test: a client that speaks late, not a sync
        s.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    # The same listener, now raw TCP to the greeting server: its socket is kept, its
    # deferral is not.
    r = m.put_config({"listeners": [{**raw, "name": "front"}, raw], "clusters": clusters})
    assert r.status_code == 200, r.text
    assert m.listener("front") == front
    assert greeting_after(front) < 0.5


# === TLS ===


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


def tls_connect(
    addr: str, sni: str, ca: CA, alpn: list[str], client: Issued | None = None
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols(alpn)
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    raw = socket.create_connection(host_port(addr), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=sni)


def get_over(s: ssl.SSLSocket, path: str = "/") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
    return read_until(s, b"\r\n\r\n")


def tls_listener(name: str, certs: list[Issued], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "listen": "127.0.0.1:0",
        "routes": [route("e")],
        "tls": {"certificates": [{"cert": str(c.cert), "key": str(c.key)} for c in certs], **extra},
    }


def test_tls_termination_picks_certificates_by_sni_and_h2_by_alpn(
    ca: CA, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = ca.issue("a.test"), ca.issue("b.test")
    up = echo("e")
    m = mesh({"listeners": [tls_listener("tls", [a, b])], "clusters": [cluster("e", up.address)]})
    addr = m.listener("tls")
    for name in ("a.test", "b.test"):
        with tls_connect(addr, name, ca, ["h2", "http/1.1"]) as s:
            assert common_name(s.getpeercert(binary_form=True) or b"") == name
            assert s.selected_alpn_protocol() == "h2"
    with tls_connect(addr, "a.test", ca, ["http/1.1"]) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        assert get_over(s).startswith(b"HTTP/1.1 200")
    _, port = host_port(addr)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with httpx.Client(http2=True, verify=ctx, timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{port}/", extensions={"sni_hostname": "b.test"})
    assert (r.status_code, r.http_version, r.headers["server-id"]) == (200, "HTTP/2", "e")


def test_client_certificates_are_verified_against_the_ca(
    ca: CA, tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    server = ca.issue("a.test")
    good = ca.issue("client.test", client=True)
    stranger = CA(tmp_path / "other", name="other CA").issue("client.test", client=True)
    up = echo("e")
    lst = tls_listener("tls", [server], client_ca=str(ca.path), require_client_certificate=True)
    m = mesh({"listeners": [lst], "clusters": [cluster("e", up.address)]})
    addr = m.listener("tls")

    def fetch(client: Issued | None) -> bytes:
        with tls_connect(addr, "a.test", ca, ["http/1.1"], client=client) as s:
            return get_over(s)

    assert fetch(good).startswith(b"HTTP/1.1 200")
    for client in (None, stranger):
        # TLS 1.3 reports a refused client certificate after the handshake: on first use.
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            fetch(client)


def test_certificates_reload_when_the_config_is_reapplied(
    ca: CA, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    first = ca.issue("a.test", file_stem="served")
    up = echo("e")
    config = {"listeners": [tls_listener("tls", [first])], "clusters": [cluster("e", up.address)]}
    m = mesh(config)
    addr = m.listener("tls")
    old = tls_connect(addr, "a.test", ca, ["http/1.1"])
    try:
        old_serial = old.getpeercert(binary_form=True)
        assert get_over(old).startswith(b"HTTP/1.1 200")
        ca.issue("a.test", file_stem="served")  # new key and certificate, same files
        put = m.put_config(m.config())
        assert put.status_code == 200, put.text
        with tls_connect(addr, "a.test", ca, ["http/1.1"]) as fresh:
            assert fresh.getpeercert(binary_form=True) != old_serial
        assert get_over(old).startswith(b"HTTP/1.1 200")  # the old connection keeps going
    finally:
        old.close()


def test_tls_origination_verifies_the_upstream(
    ca: CA, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("e")
    back = mesh(
        {
            "listeners": [tls_listener("back", [ca.issue("back.test")])],
            "clusters": [cluster("e", up.address)],
        }
    )
    back_addr = back.listeners()["back"]

    def front_to(sni: str, protocol: str) -> str:
        tls = {"sni": sni, "ca": str(ca.path)}
        f = mesh(
            {
                "listeners": [listener("front", [route("b")])],
                "clusters": [cluster("b", back_addr, tls=tls, protocol=protocol)],
            }
        )
        return f.listener("front")

    for protocol in ("http1", "http2", "auto"):
        r = httpx.get(front_to("back.test", protocol) + "/", timeout=10)
        assert (r.status_code, r.headers["server-id"]) == (200, "e"), protocol
    # A name the upstream's certificate does not cover: the handshake fails, nothing is sent.
    r = httpx.get(front_to("wrong.test", "http1") + "/", timeout=10)
    assert r.status_code == 503


def test_auto_over_tls_carries_the_client_host_to_an_http2_upstream(
    ca: CA, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    """`protocol: auto` picks HTTP/2 by ALPN and sends the client's host as `:authority`,
    which the upstream routes on (its router reads the authority first)."""
    named, other = echo("named"), echo("other")
    back_listener = tls_listener("back", [ca.issue("back.test")])
    back_listener["routes"] = [
        {"match": {"host": "svc.example"}, "to": [{"cluster": "named"}]},
        route("other"),
    ]
    back = mesh(
        {
            "listeners": [back_listener],
            "clusters": [cluster("named", named.address), cluster("other", other.address)],
        }
    )
    tls = {"sni": "back.test", "ca": str(ca.path)}
    front = mesh(
        {
            "listeners": [listener("front", [route("b")])],
            "clusters": [cluster("b", back.listeners()["back"], tls=tls, protocol="auto")],
        }
    )
    for host, server in (("svc.example", "named"), ("else.example", "other")):
        r = httpx.get(front.listener("front") + "/", headers={"host": host}, timeout=10)
        assert (r.status_code, r.headers["server-id"]) == (200, server), host
        assert r.headers["echo-host"] == host


def test_tls_passthrough_routes_by_sni_without_terminating(
    ca: CA, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    ea, eb = echo("ea"), echo("eb")
    back = mesh(
        {
            "listeners": [
                {**tls_listener("a", [ca.issue("a.test")]), "routes": [route("ea")]},
                {**tls_listener("b", [ca.issue("b.test")]), "routes": [route("eb")]},
            ],
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
                        {"match": {"sni": "*.b.test"}, "to": [{"cluster": "B"}]},
                    ],
                }
            ],
            "clusters": [cluster("A", seen["a"]), cluster("B", seen["b"])],
        }
    )
    addr = front.listener("pass")
    with tls_connect(addr, "a.test", ca, ["http/1.1"]) as s:
        assert common_name(s.getpeercert(binary_form=True) or b"") == "a.test"  # end to end
        assert b"server-id: ea" in get_over(s).lower()
    # No route for this name: the proxy closes the connection before any handshake.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_connect(addr, "c.test", ca, ["http/1.1"]).close()


# === large streams ===


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_gigabyte_streams_each_way_in_bounded_memory(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    up = echo("big")
    m = simple_mesh(mesh, up)
    url = m.listener("in")
    pid = m.proc.pid
    gib = 1 << 30
    httpx.get(url + "/?size=1000", timeout=10)
    baseline = _rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with httpx.stream("GET", f"{url}/?size={gib}", timeout=60) as r:
            got = sum(len(chunk) for chunk in r.iter_raw(1 << 20))
        assert got == gib

        def chunks() -> Iterator[bytes]:
            block = b"u" * (1 << 20)
            for _ in range(1024):
                yield block

        # Upload to a sink: an echo would be full duplex, which httpx's client is not.
        r = httpx.post(url + "/?sink", content=chunks(), timeout=60)
        assert (r.status_code, r.text) == (200, f"received {gib}\n")
    finally:
        done.set()
        sampler.join(5)
    grown_mib = (peak[0] - baseline) / 1024
    assert grown_mib < 64, f"RSS grew {grown_mib:.1f} MiB"


# === bad config ===


@pytest.mark.parametrize(
    ("lst", "loc"),
    [
        ({"protocol": "tcp", "routes": [route("c")]}, "listeners.0.routes"),
        ({"protocol": "tcp"}, "listeners.0.to"),
        ({"protocol": "tls-passthrough", "routes": [route("c")]}, "listeners.0.routes.0.match.sni"),
        (
            {"routes": [{"match": {"sni": "a.test"}, "to": [{"cluster": "c"}]}]},
            "listeners.0.routes.0.match.sni",
        ),
        (
            {"protocol": "tcp", "to": [{"cluster": "c"}], "tls": {"cert": "/x", "key": "/y"}},
            "listeners.0.tls",
        ),
        ({"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}, "listeners.0.tls.cert"),
        ({"tls": {"cert": "/x"}}, "listeners.0.tls"),
    ],
)
def test_protocol_config_errors_name_the_field(
    mesh: Callable[..., Mesh], echo: Callable[..., Echo], lst: dict[str, Any], loc: str
) -> None:
    up = echo("e")
    m = simple_mesh(mesh, up)
    bad = {
        "listeners": [{"name": "x", "listen": "127.0.0.1:0", **lst}],
        "clusters": [cluster("c", up.address)],
    }
    r = m.put_config(bad)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["errors"]], r.json()
    assert httpx.get(m.listener("in") + "/", timeout=10).status_code == 200
    poll(lambda: m.ready()["version"] == 1, what="the old config still serving")
