"""Response bodies of the admin API. The config itself is ``pymesh.config.MeshConfig``."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
