"""A structured diff between two configs in their JSON form.

Each change is ``{"op": "add" | "remove" | "replace", "path": ..., "old": ..., "new": ...}``
(``old`` absent for an add, ``new`` absent for a remove). Paths are dotted; items of a list
whose entries all carry a ``name`` (listeners, routes, clusters) are addressed by that name in
brackets, so that inserting a listener does not show as a change of every later one:
``listeners[ingress].routes[api].to.0.weight``. Other lists are compared item by item when
their lengths match and replaced whole otherwise.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Change", "config_diff", "format_change"]

Change = dict[str, Any]

_MISSING = object()


def config_diff(old: Any, new: Any) -> list[Change]:
    """The changes that turn ``old`` into ``new`` (an empty list when they are equal)."""
    out: list[Change] = []
    _diff(old, new, "", out)
    return out


def format_change(change: Change) -> str:
    """One line for people: ``+ path: new``, ``- path: old`` or ``~ path: old -> new``."""
    path = change["path"] or "(root)"
    if change["op"] == "add":
        return f"+ {path}: {_short(change['new'])}"
    if change["op"] == "remove":
        return f"- {path}: {_short(change['old'])}"
    return f"~ {path}: {_short(change['old'])} -> {_short(change['new'])}"


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), sort_keys=False)
    return text if len(text) <= 120 else text[:117] + "..."


def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


def _named(items: list[Any]) -> dict[str, Any] | None:
    """``{name: item}`` if every item is a mapping with a distinct string name."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        if item["name"] in out:
            return None
        out[item["name"]] = item
    return out


def _diff(old: Any, new: Any, path: str, out: list[Change]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                out.append({"op": "remove", "path": _join(path, str(key)), "old": old[key]})
            else:
                _diff(old[key], new[key], _join(path, str(key)), out)
        for key in new:
            if key not in old:
                out.append({"op": "add", "path": _join(path, str(key)), "new": new[key]})
        return
    if isinstance(old, list) and isinstance(new, list):
        old_named, new_named = _named(old), _named(new)
        if old_named is not None and new_named is not None and (old or new):
            for name, item in old_named.items():
                at = _join(path, f"[{name}]")
                if name not in new_named:
                    out.append({"op": "remove", "path": at, "old": item})
                else:
                    _diff(item, new_named[name], at, out)
            for name, item in new_named.items():
                if name not in old_named:
                    out.append({"op": "add", "path": _join(path, f"[{name}]"), "new": item})
            if list(old_named) != list(new_named) and set(old_named) == set(new_named):
                out.append(
                    {
                        "op": "replace",
                        "path": _join(path, "(order)"),
                        "old": list(old_named),
                        "new": list(new_named),
                    }
                )
            return
        if len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                _diff(a, b, _join(path, str(i)), out)
            return
    out.append({"op": "replace", "path": path, "old": old, "new": new})
