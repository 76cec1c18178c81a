"""The CLI as a client of the admin API: get, diff, apply (dry run and real), rollback,
status and token, with the server and token found through flags, env or the data dir."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from meshtest import HTTP_TIMEOUT, PYMESH, Echo, Mesh, cluster, listener, route

RUN_TIMEOUT = 60


def config(a: Echo, b: Echo, to: str = "a") -> dict[str, Any]:
    return {
        "listeners": [listener("ingress", [route(to, name="main")])],
        "clusters": [cluster("a", a.address), cluster("b", b.address)],
    }


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Keep the default data dir away from the user's home.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYMESH_")}
    base["XDG_DATA_HOME"] = "/nonexistent-pymesh-test"
    return subprocess.run(
        [PYMESH, *args],
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def served_by(m: Mesh) -> str:
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        return c.get("/").headers["server-id"]


def test_cli_get_tables_json_yaml(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(config(a, b))
    d = ["--data-dir", str(m.data_dir)]  # admin URL and token from the data dir

    p = cli("get", "listeners", *d)
    assert p.returncode == 0, p.stderr
    assert "NAME" in p.stdout
    assert "ingress" in p.stdout
    assert m.listener("ingress").removeprefix("http://") in p.stdout

    p = cli("get", "clusters", *d, "-o", "json")
    assert p.returncode == 0, p.stderr
    assert [c["name"] for c in json.loads(p.stdout)] == ["a", "b"]
    p = cli("get", "endpoints", "a", *d)
    assert p.returncode == 0, p.stderr
    assert a.address in p.stdout
    p = cli("get", "routes", *d)
    assert p.returncode == 0, p.stderr
    assert "main" in p.stdout
    p = cli("get", "config", *d, "-o", "yaml")
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load(p.stdout) == m.config()


def test_cli_diff_apply_rollback_status(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(config(a, b))
    d = ["--data-dir", str(m.data_dir)]

    # diff and a dry run change nothing
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config(a, b, to="b")))
    p = cli("diff", str(changed), *d)
    assert p.returncode == 0, p.stderr
    assert '~ listeners[ingress].routes[main].to.0.cluster: "a" -> "b"' in p.stdout
    p = cli("apply", "-f", str(changed), "--dry-run", *d)
    assert p.returncode == 0, p.stderr
    assert "1 change(s) against version 1" in p.stdout
    assert m.ready()["version"] == 1
    assert served_by(m) == "a"

    # apply: prints the diff, then applies
    p = cli("apply", "-f", str(changed), *d)
    assert p.returncode == 0, p.stderr
    assert "listeners[ingress].routes[main].to.0.cluster" in p.stdout
    assert "applied: version 2" in p.stdout
    assert served_by(m) == "b"
    p = cli("apply", "-f", str(changed), *d)
    assert p.returncode == 0, p.stderr
    assert "unchanged" in p.stdout
    assert m.ready()["version"] == 2

    # history and rollback
    p = cli("get", "versions", *d, "-o", "json")
    assert p.returncode == 0, p.stderr
    assert [v["version"] for v in json.loads(p.stdout)] == [2, 1]
    p = cli("rollback", "1", *d)
    assert p.returncode == 0, p.stderr
    assert "now version 3" in p.stdout
    assert served_by(m) == "a"
    p = cli("get", "versions", *d)
    assert "rollback:1" in p.stdout

    p = cli("status", *d)
    assert p.returncode == 0, p.stderr
    assert "version" in p.stdout
    assert "3" in p.stdout
    assert "ingress" in p.stdout
    p = cli("status", *d, "-o", "json")
    status = json.loads(p.stdout)
    assert status["ready"] is True
    assert status["version"] == 3
    assert set(status["clusters"]) == {"a", "b"}


def test_cli_exit_codes(
    tmp_path: Path, echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(config(a, b))
    assert m.token is not None
    flags = ["--admin", m.admin_url, "--token", m.token]

    # invalid config: 2, with the field path; nothing applied
    bad = tmp_path / "bad.yaml"
    bad_cfg = config(a, b)
    bad_cfg["listeners"][0]["routes"][0]["to"][0]["cluster"] = "nope"
    bad.write_text(yaml.safe_dump(bad_cfg))
    p = cli("apply", "-f", str(bad), *flags)
    assert p.returncode == 2, p
    assert "listeners.0.routes.0.to.0.cluster" in p.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("listeners: [\n")
    assert cli("apply", "-f", str(broken), *flags).returncode == 2
    assert cli("diff", str(tmp_path / "missing.yaml"), *flags).returncode == 2
    assert cli("rollback", "0", *flags).returncode == 2
    assert m.ready()["version"] == 1

    # failures: 1 (unknown version, wrong token, nobody listening)
    assert cli("rollback", "99", *flags).returncode == 1
    p = cli("get", "config", "--admin", m.admin_url, "--token", "wrong")
    assert p.returncode == 1
    assert "401" in p.stderr
    p = cli("get", "config", "--admin", "http://127.0.0.1:9", "--token", m.token)
    assert p.returncode == 1
    assert "cannot reach" in p.stderr

    # env: PYMESH_ADMIN and PYMESH_ADMIN_TOKEN
    env = {"PYMESH_ADMIN": m.admin_url, "PYMESH_ADMIN_TOKEN": m.token}
    p = cli("get", "versions", env=env)
    assert p.returncode == 0, p.stderr
    assert "file" in p.stdout

    # the token command prints what the data dir holds
    p = cli("token", "--data-dir", str(m.data_dir))
    assert p.returncode == 0
    assert p.stdout.strip() == m.token
