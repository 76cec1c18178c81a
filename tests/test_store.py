"""The versioned config store across restarts: ``pymesh run`` resumes the last applied
version from its data dir, and a kill -9 in the middle of an apply leaves the old or the new
version, never a half (the store's latest version and the served config agree)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from meshtest import (
    HTTP_TIMEOUT,
    PYMESH,
    Echo,
    Mesh,
    cluster,
    listener,
    route,
    spawn_mesh,
    stop_all,
)


def config(a: Echo, b: Echo, to: str = "a") -> dict[str, Any]:
    return {
        "listeners": [listener("ingress", [route(to, name="main")])],
        "clusters": [cluster("a", a.address), cluster("b", b.address)],
    }


def served_by(m: Mesh) -> str:
    with httpx.Client(base_url=m.listener("ingress"), timeout=HTTP_TIMEOUT) as c:
        r = c.get("/")
        assert r.status_code == 200, r.text
        return r.headers["server-id"]


def stored_versions(data_dir: Path) -> list[int]:
    db = sqlite3.connect(data_dir / "pymesh.db")
    try:
        return [v for (v,) in db.execute("SELECT version FROM versions ORDER BY version")]
    finally:
        db.close()


def test_restart_resumes_the_last_applied_version(tmp_path: Path, echo: Any) -> None:
    a, b = echo("a"), echo("b")
    started: list[Mesh] = []
    try:
        m = spawn_mesh(tmp_path, config(a, b))
        started.append(m)
        r = m.put_config(config(a, b, to="b"))
        assert r.status_code == 200, r.text
        assert served_by(m) == "b"
        assert m.stop() == 0

        # no --config: the store's latest version serves again, under its own number
        m = spawn_mesh(tmp_path, None, expect_listeners=["ingress"])
        started.append(m)
        assert "pymesh: resumed config version 2 from" in m.proc.stdout
        assert m.ready()["version"] == 2
        assert served_by(m) == "b"
        assert [v["version"] for v in m.get("/config/versions").json()] == [2, 1]
        # the same token file is used again
        assert (tmp_path / "data" / "admin-tokens.json").stat().st_mode & 0o777 == 0o600
        assert m.stop() == 0

        # --config with a file that differs from the latest: applied as a new version
        m = spawn_mesh(tmp_path, config(a, b))
        started.append(m)
        assert m.ready()["version"] == 3
        assert served_by(m) == "a"
        assert m.get("/config/versions").json()[0]["source"] == "file"
        assert m.stop() == 0

        # --config with the same file again: resumed, no new version
        m = spawn_mesh(tmp_path, config(a, b))
        started.append(m)
        assert m.ready()["version"] == 3
        assert stored_versions(tmp_path / "data") == [1, 2, 3]
        assert m.stop() == 0
    finally:
        for m in started:
            m.admin.close()
        stop_all([m.proc for m in started])


@pytest.mark.parametrize(
    ("point", "survivor"),
    [("before-apply", 1), ("before-commit", 1), ("after-commit", 2)],
)
def test_kill_9_during_apply_leaves_old_or_new_never_half(
    tmp_path: Path, echo: Any, point: str, survivor: int
) -> None:
    a, b = echo("a"), echo("b")
    started: list[Mesh] = []
    try:
        # the process SIGKILLs itself at `point` while applying version 2
        m = spawn_mesh(tmp_path, config(a, b), env={"PYMESH_TEST_CRASH": f"{point}:2"})
        started.append(m)
        assert served_by(m) == "a"
        with pytest.raises(httpx.TransportError):
            m.put_config(config(a, b, to="b"))
        assert m.proc.wait() == -signal.SIGKILL

        assert stored_versions(tmp_path / "data") == list(range(1, survivor + 1))
        # the config file would win over the store: restart without it
        (tmp_path / "mesh.yaml").unlink()
        m = spawn_mesh(tmp_path, None, expect_listeners=["ingress"])
        started.append(m)
        assert m.ready()["version"] == survivor
        latest = m.get("/config/versions").json()[0]
        assert latest["version"] == survivor
        stored = m.get(f"/config/versions/{survivor}").json()["config"]
        assert stored == m.config()
        assert served_by(m) == ("a" if survivor == 1 else "b")
        # and it keeps working: the next change is the next version
        r = m.put_config(config(a, b, to="a" if survivor == 2 else "b"))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == survivor + 1
    finally:
        for m in started:
            m.admin.close()
        stop_all([m.proc for m in started])


def test_tokens_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    tokens = data / "admin-tokens.json"
    tokens.write_text(json.dumps({"tokens": []}))
    tokens.chmod(0o644)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"listeners": []}))
    p = subprocess.run(
        [PYMESH, "run", "--config", str(path), "--admin", "127.0.0.1:0", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2, p
    assert "chmod 600" in p.stderr
    assert "Traceback" not in p.stderr
