"""The tests run against the installed wheel, not the source tree."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from meshtest import PYMESH

import pymesh

REPO = Path(__file__).resolve().parent.parent


def test_pymesh_is_the_installed_package() -> None:
    where = Path(pymesh.__file__).resolve().parent
    assert "site-packages" in where.parts, where
    assert where != REPO / "pymesh", "the source tree shadows the installed wheel"
    api = importlib.import_module("pymesh.api")
    assert Path(api.__file__ or "").resolve().parent == where / "api"
    core = importlib.import_module("pymesh._core")
    assert Path(core.__file__ or "").resolve().parent == where


def test_no_bare_api_module_installed() -> None:
    site = Path(importlib.import_module("pymesh").__file__ or "").resolve().parent.parent
    assert not (site / "api").exists()
    assert not (site / "api.py").exists()


def test_console_script_next_to_the_interpreter() -> None:
    assert Path(PYMESH).is_file()
    assert Path(PYMESH).parent == Path(sys.executable).parent
