"""Response bodies of the admin API. The config itself is ``pymesh.config.MeshConfig``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Live(BaseModel):
    live: bool = Field(description="Always true: the process answers.")


class Ready(BaseModel):
    ready: bool = Field(description="A config is serving and the proxy is not draining.")
    version: int = Field(description="Version of the config now serving (0: none yet).")
    listeners: dict[str, str] = Field(description="Listener name -> bound ip:port.")


class ConfigApplied(BaseModel):
    version: int = Field(description="Version of the config just applied.")
    listeners: dict[str, str] = Field(description="Listener name -> bound ip:port.")


class ProblemItem(BaseModel):
    loc: str = Field(description="Dotted path of the offending field, e.g. listeners.0.listen.")
    msg: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = Field(default="about:blank")
    title: str
    status: int
    detail: str
    errors: list[ProblemItem] | None = Field(
        default=None, description="For an invalid config: every problem found."
    )


class ChangeItem(BaseModel):
    """One change between two configs."""

    op: Literal["add", "remove", "replace"]
    path: str = Field(
        description="Dotted path; named list items in brackets: `listeners[ingress].listen`."
    )
    old: Any = Field(default=None, description="The value before (absent for an add).")
    new: Any = Field(default=None, description="The value after (absent for a remove).")


class DryRun(BaseModel):
    valid: bool = Field(description="Always true: an invalid config is a 422 problem.")
    version: int = Field(description="The serving version the diff is against.")
    changes: list[ChangeItem] = Field(description="What applying it would change.")


class VersionSummary(BaseModel):
    version: int
    applied_at: str = Field(description="ISO 8601 UTC time of the apply.")
    token: str | None = Field(
        description="Id of the admin token that applied it (never the secret)."
    )
    source: str = Field(description="`file`, `demo`, `api`, `rollback:N`, `ttl`, `resume`.")
    changes: int = Field(description="Number of changes against the previous version.")


class VersionDetail(VersionSummary):
    diff: list[ChangeItem] = Field(description="The changes against the previous version.")
    config: dict[str, Any] = Field(description="The whole config of this version.")


class Draining(BaseModel):
    draining: bool


class EndpointState(BaseModel):
    """A cluster endpoint as configured, with the data plane's view of it when it has one."""

    model_config = ConfigDict(extra="allow")

    address: str
    healthy: bool | None = Field(
        default=None, description="Health as the data plane sees it (null: not reported)."
    )
    ejected: bool | None = Field(
        default=None, description="Ejected by outlier detection (null: not reported)."
    )
    lease_ttl: float | None = Field(
        default=None, description="Seconds a heartbeat keeps it (null: registered for good)."
    )
    lease_expires_in: float | None = Field(
        default=None, description="Seconds until it leaves unless heartbeated."
    )


class ClusterState(BaseModel):
    name: str
    spec: dict[str, Any] = Field(description="The cluster's config (see `Cluster`).")
    endpoints: list[EndpointState]
    stats: dict[str, Any] = Field(description="The data plane's counters for the cluster.")


class EndpointRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="Upstream `host:port`.", examples=["127.0.0.1:9001"])
    weight: int | None = Field(
        default=None, description="Relative weight, if the cluster config supports weights."
    )
    ttl: str | None = Field(
        default=None,
        description="Remove the endpoint unless heartbeated within this duration (`10s`; "
        "1s-24h). Default: registered until deregistered.",
        examples=["10s"],
    )
