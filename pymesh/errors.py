"""The exceptions pymesh raises.

``CoreError``, ``ApplyError`` and ``BindError`` come from the compiled core; ``ConfigError``
is the one error users see for any configuration that cannot be applied, whether pydantic,
a semantic check or the core refused it. Each of its errors names the field by a dotted path
(``listeners.0.routes.1.to.0.cluster``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from pymesh._core import ApplyError, BindError, CoreError

__all__ = [
    "ApplyError",
    "BindError",
    "ConfigError",
    "CoreError",
    "DrainingError",
    "ErrorItem",
    "StaleVersionError",
]


class ErrorItem(TypedDict):
    """One problem in a configuration: where (a dotted path) and what."""

    loc: str
    msg: str


class ConfigError(ValueError):
    """A configuration that was refused; nothing was applied.

    ``errors`` lists every problem found, each as ``{"loc": "a.0.b", "msg": "..."}``.
    """

    errors: list[ErrorItem]

    def __init__(self, errors: Iterable[ErrorItem]) -> None:
        self.errors = list(errors)
        super().__init__(self.errors)

    @classmethod
    def single(cls, loc: str, msg: str) -> ConfigError:
        """A ConfigError with one problem."""
        return cls([ErrorItem(loc=loc, msg=msg)])

    def lines(self) -> list[str]:
        """One ``loc: msg`` line per problem."""
        return [f"{e['loc']}: {e['msg']}" for e in self.errors]

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"invalid config ({n} error{'' if n == 1 else 's'})"
        return "\n  ".join([head + ":", *self.lines()])


class DrainingError(RuntimeError):
    """The host is draining and accepts no new configuration."""


class StaleVersionError(RuntimeError):
    """A change was made against a config version that is no longer the one serving
    (``If-Match`` named an older version); nothing was changed."""

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(f"the config is at version {current}, not {expected}; re-read it")
