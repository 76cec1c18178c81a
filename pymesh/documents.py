"""Parsing configuration documents (JSON or YAML text) into plain Python data.

Both parsers refuse duplicate keys (a silent last-one-wins is a classic config bug) and
raise :class:`DocumentError` with a one-line message that names the line and column.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import yaml

__all__ = ["DocumentError", "parse_document", "parse_json", "parse_yaml"]


class DocumentError(ValueError):
    """The text is not well-formed JSON or YAML; the message says where."""


def parse_document(text: str) -> object:
    """Parse JSON if the text looks like JSON (starts with ``{`` or ``[``), YAML otherwise."""
    if text.lstrip().startswith(("{", "[")):
        return parse_json(text)
    return parse_yaml(text)


def parse_json(text: str | bytes) -> object:
    """Parse JSON text (bytes are decoded as UTF-8)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except UnicodeDecodeError as e:
        raise DocumentError(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DocumentError(f"invalid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise DocumentError("invalid JSON: nested too deeply") from None


def parse_yaml(text: str) -> object:
    """Parse one YAML document with the safe loader (no tags that build Python objects)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        where = ""
        if e.problem_mark is not None:
            where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        raise DocumentError(f"invalid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise DocumentError(f"invalid YAML: {e}") from None
    except RecursionError:
        raise DocumentError("invalid YAML: nested too deeply") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"invalid JSON: duplicate key {key!r}")
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)
