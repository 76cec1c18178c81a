"""Durations as people write them in configuration: ``"250ms"``, ``"2s"``, ``"1.5s"``, ``"1m"``,
``"1h"``.

A duration is held as a :class:`datetime.timedelta` with whole milliseconds (the core's
resolution), strictly positive and at most :data:`MAX_DURATION`. :data:`Duration` is the
pydantic type: it validates from such a string (or a ``timedelta``) and serialises back to the
shortest exact string (``timedelta(seconds=90)`` -> ``"90s"``, ``1.5s`` -> ``"1500ms"``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["MAX_DURATION", "Duration", "format_duration", "parse_duration", "to_millis"]

# Milliseconds per unit, largest first (format_duration picks the largest exact unit).
_UNITS_MS: dict[str, int] = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_JSON_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"
_HINT = "a duration is a string like '250ms', '2s', '1.5s', '1m' or '1h'"

MAX_DURATION = timedelta(days=7)
"""The longest duration accepted (one week); longer values are surely a typo."""

_ONE_MS = timedelta(milliseconds=1)


def parse_duration(text: str) -> timedelta:
    """Parse ``"250ms"``, ``"2s"``, ``"1.5s"``, ``"1m"`` or ``"1h"``.

    Raises ValueError unless the text is a positive number with a unit (ms, s, m, h) that is a
    whole number of milliseconds and at most :data:`MAX_DURATION`.
    """
    m = _PATTERN.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration; {_HINT}")
    number, unit = m.groups()
    try:
        millis = Decimal(number) * _UNITS_MS[unit]
    except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
        raise ValueError(f"{text!r} is not a duration; {_HINT}") from None
    if millis != millis.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of milliseconds")
    if millis > to_millis(MAX_DURATION):  # before timedelta(), which overflows on huge values
        raise ValueError(f"duration must be at most {format_duration(MAX_DURATION)}")
    return _checked(timedelta(milliseconds=int(millis)), text)


def format_duration(value: timedelta) -> str:
    """The shortest exact string for ``value``, in the largest unit that divides it."""
    millis = to_millis(value)
    for unit, size in _UNITS_MS.items():
        if millis % size == 0:
            return f"{millis // size}{unit}"
    raise AssertionError("unreachable: every whole number of ms is divisible by 1")


def to_millis(value: timedelta) -> int:
    """Whole milliseconds in ``value`` (as the core's ``*_ms`` fields want)."""
    return value // _ONE_MS


def _checked(value: timedelta, shown: object) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"duration must be greater than 0 (got {shown!r})")
    if value > MAX_DURATION:
        raise ValueError(f"duration must be at most {format_duration(MAX_DURATION)}")
    if value % _ONE_MS:
        raise ValueError(f"{shown!r} is not a whole number of milliseconds")
    return value


def _validate(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return _checked(value, format(value))
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"{_HINT} (got {type(value).__name__} {value!r})")


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _JSON_PATTERN, "examples": ["250ms", "2s"]}),
]
"""A positive duration: validated from ``"250ms"``/``"2s"``/``"1m"``/``"1h"``, serialised back
to such a string."""
