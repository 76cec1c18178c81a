"""PEP 517 backend: maturin, plus the admin layer shipped as ``pymesh.api``.

The repository keeps the admin REST layer in a top-level ``api/`` folder (the layout the
project was asked for), but an installed wheel must not put a bare, generic ``api`` module
into site-packages, where a user's own ``api`` package would shadow it or be shadowed.
maturin has one python-source root and does not follow symlinks, so this thin wrapper
copies ``api/`` to ``pymesh/api/`` for the duration of a build and removes the copy after.
Everything else is maturin's own backend, unchanged.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import maturin
from maturin import (
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_wheel",
]

_ROOT = Path(__file__).resolve().parent.parent
_SOURCE = _ROOT / "api"
_STAGED = _ROOT / "pymesh" / "api"


@contextlib.contextmanager
def _staged_api() -> Iterator[None]:
    # From an sdist, pymesh/api is already in place and api/ is absent: nothing to stage.
    if not _SOURCE.is_dir():
        yield
        return
    if _STAGED.exists():
        shutil.rmtree(_STAGED)
    shutil.copytree(_SOURCE, _STAGED, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        yield
    finally:
        shutil.rmtree(_STAGED, ignore_errors=True)


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    with _staged_api():
        return str(maturin.build_wheel(wheel_directory, config_settings, metadata_directory))


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    # An editable install points at the source tree, where the staged copy is gone once the
    # build ends, so `pymesh.api` is not importable from one; scripts/ use normal installs.
    with _staged_api():
        return str(maturin.build_editable(wheel_directory, config_settings, metadata_directory))


def build_sdist(sdist_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    with _staged_api():
        return str(maturin.build_sdist(sdist_directory, config_settings))
