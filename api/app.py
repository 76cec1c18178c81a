"""The admin API application factory."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import HTTPException

from pymesh import __version__
from pymesh.config import MeshConfig, load_config
from pymesh.errors import ConfigError, DrainingError, StaleVersionError
from pymesh.host import Host
from pymesh.leases import Leases
from pymesh.tokens import TokenSet

from .auth import AuthFailures
from .changes import config_data
from .problems import install_problem_handlers
from .routes import api_router
from .routes.clusters import endpoint_address

__all__ = ["create_app", "expire_leases"]

LEASE_RETRY = 0.2
"""Seconds before leases that ran out and could not be acted on (a draining host) are
looked at again."""

_DESCRIPTION = """\
Health, configuration (whole or by resource), history, stats and metrics of one pymesh proxy.

Every request except `GET /live` and `GET /ready` needs `Authorization: Bearer TOKEN`
(a token from `DATA_DIR/admin-tokens.json`); read-only tokens may only read.

Every change builds a whole new config, validates it, applies it and stores it as a new
version; responses carry the serving version as an `ETag`, and a write with a stale
`If-Match` gets 409 and changes nothing.

Errors are `application/problem+json` documents; an invalid config is a 422 whose `errors`
name each bad field by its dotted path, and nothing is applied.
"""


class AdminApp(FastAPI):
    """FastAPI whose OpenAPI document also carries the config's JSON Schema (``MeshConfig``
    and the models it uses), which ``GET``/``PUT /config`` refer to."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            config_schema = MeshConfig.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(config_schema.pop("$defs", {}))
            components["MeshConfig"] = config_schema
        return self.openapi_schema or {}


def create_app(host: Host, tokens: TokenSet, leases: Leases | None = None) -> FastAPI:
    """The admin API around ``host`` (kept on ``app.state.host``), accepting ``tokens``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_lease_loop(host, app.state.leases))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = AdminApp(
        title="pymesh admin API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.host = host
    app.state.tokens = tokens
    app.state.leases = leases if leases is not None else Leases(host.store)
    app.state.auth_failures = AuthFailures()
    install_problem_handlers(app)
    app.include_router(api_router)
    return app


async def _lease_loop(host: Host, leases: Leases) -> None:
    """Remove endpoints whose lease ran out, waking at the earliest deadline or at a grant
    (which may bring an earlier one) and never otherwise: a proxy without leases spends no
    CPU here. (This sweep every 0.2 s and uvicorn's 0.1 s tick (pymesh/cli.py `_Server`)
    took 2.6 ms a second of the proxy's core under load, 0.34% of its CPU.)"""
    loop = asyncio.get_running_loop()
    granted = asyncio.Event()
    leases.on_grant(lambda: loop.call_soon_threadsafe(granted.set))
    retry = False
    try:
        while True:
            # Cleared before the deadline is read: a grant after this line is either in the
            # deadline read or sets the event again.
            granted.clear()
            deadline = leases.next_deadline()
            floor = LEASE_RETRY if retry else 0.0
            wait = None if deadline is None else max(floor, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(granted.wait(), wait)
            retry = False
            if leases.expired():
                await asyncio.to_thread(expire_leases, host, leases)
                retry = bool(leases.expired())
    finally:
        leases.on_grant(None)


def expire_leases(host: Host, leases: Leases) -> None:
    """Deregister every endpoint whose lease ran out, one version per endpoint (source
    ``ttl``). A removal the config refuses (a cluster's last endpoint) is retried a TTL later."""
    for cluster, address in leases.expired():

        def remove(current: MeshConfig | None, c: str = cluster, a: str = address) -> MeshConfig:
            data = config_data(current)
            for item in data.get("clusters", []):
                if item.get("name") == c:
                    kept = [e for e in item.get("endpoints", []) if endpoint_address(e) != a]
                    if len(kept) == len(item.get("endpoints", [])):
                        break
                    item["endpoints"] = kept
                    return load_config(data)
            raise LookupError  # gone already: nothing to change

        try:
            host.update(remove, source="ttl")
        except LookupError:
            leases.drop(cluster, address)
        except (ConfigError, StaleVersionError, HTTPException) as e:
            print(
                f"pymesh: lease of {address} in cluster {cluster} ran out but it stays: {e}",
                file=sys.stderr,
                flush=True,
            )
            leases.postpone(cluster, address)
        except DrainingError:
            return
        else:
            leases.drop(cluster, address)
