"""The admin API's address: loopback unless TLS is configured; with ``admin.tls`` it serves
HTTPS (and tokens are still required)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import yaml
from certs import CA
from meshtest import ADMIN_LINE, PYMESH, TOKEN_LINE, Proc, poll, read_token, stop_all


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYMESH, *args], capture_output=True, text=True, timeout=60, check=False)


def test_non_loopback_admin_needs_tls(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"admin": {"listen": "0.0.0.0:9901"}}))
    p = run(["validate", str(path)])
    assert p.returncode == 2, p
    assert "admin: " in p.stderr
    assert "needs admin.tls" in p.stderr

    path.write_text(yaml.safe_dump({"listeners": []}))
    p = run(["run", "--config", str(path), "--admin", "0.0.0.0:0", "--data-dir", str(tmp_path)])
    assert p.returncode == 2, p
    assert "--admin: " in p.stderr
    assert "needs admin.tls" in p.stderr
    assert "admin listening" not in p.stdout
    assert "Traceback" not in p.stderr


def test_admin_over_tls(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("admin.test")
    path = tmp_path / "mesh.yaml"
    cfg = {
        "admin": {
            "listen": "127.0.0.1:0",
            "tls": {"cert": str(issued.cert), "key": str(issued.key)},
        }
    }
    path.write_text(yaml.safe_dump(cfg))
    proc = Proc([PYMESH, "run", "--config", str(path), "--data-dir", str(tmp_path / "data")])
    try:
        url = proc.wait_line(ADMIN_LINE).group(1)
        assert url.startswith("https://127.0.0.1:")
        token = read_token(Path(proc.wait_line(TOKEN_LINE).group(1)))
        ctx = ssl.create_default_context(cafile=str(ca.path))
        ctx.check_hostname = False  # the certificate names admin.test; we dial 127.0.0.1
        with httpx.Client(base_url=url, verify=ctx, timeout=10) as c:
            poll(lambda: c.get("/ready").status_code == 200, 30.0, what="/ready over TLS")
            assert c.get("/config").status_code == 401
            r = c.get("/config", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert r.json()["admin"]["tls"]["cert"] == str(issued.cert)
        # plain HTTP is not served on it
        plain = url.replace("https://", "http://")
        try:
            r = httpx.get(plain + "/live", timeout=5)
        except httpx.TransportError:
            pass
        else:
            assert r.status_code == 400
    finally:
        stop_all([proc])
