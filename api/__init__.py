"""The admin REST API of ``pymesh run`` (shipped in the wheel as ``pymesh.api``)."""

from .app import create_app

__all__ = ["create_app"]
