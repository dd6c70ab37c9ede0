"""The zoo card (`card.json`): the fields readers rely on, with their types.

A card that breaks this schema marks its entry as damaged: `adapters zoo list`
shows it as damaged and lists the others, and any command that needs the
entry fails with one line naming the field. Fields not listed here are free
(tasks and plugins add their own); new fields must stay optional so cards
written by older versions keep loading.
"""

from __future__ import annotations

from typing import Any

from ..errors import shorten

KINDS = ("base", "adapter", "composition")
_NUMBER = (int, float)

# field -> (accepted types, required)
_COMMON: dict[str, tuple[tuple[type, ...], bool]] = {
    "model": ((str,), True), "name": ((str,), True), "version": ((int,), True), "created": ((str,), True),
    "files": ((dict,), True), "kind": ((str,), False), "parents": ((list,), False), "metrics": ((dict,), False),
    "recipe": ((dict,), False), "config": ((dict,), False), "parameters": ((int,), False),
    "task": ((str, type(None)), False), "trainable_percent": (_NUMBER, False),
}
_BY_KIND: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "base": {"fingerprint": ((str,), True), "source": ((str,), False)},
    "adapter": {"base": ((dict,), True), "family": ((str,), False), "modules": ((list,), False)},
    "composition": {"base": ((dict,), True), "parts": ((list,), True)},
}
_BASE_LINK = {"ref": ((str,), True), "fingerprint": ((str,), True), "version": ((int,), False)}
_PART = {"ref": ((str,), True), "weight": (_NUMBER, True)}


def card_problem(card: Any, model: str, name: str, version: int) -> str | None:
    """What is wrong with a card read from `model/name/v<version>`, or None if it is sound."""
    if not isinstance(card, dict):
        return f"the card is a JSON {type(card).__name__}, not an object"
    kind = card.get("kind") or ("base" if name == "base" else "adapter")
    if kind not in KINDS:
        return f"field 'kind' is {shorten(kind)}, not one of {', '.join(KINDS)}"
    problem = _fields(card, {**_COMMON, **_BY_KIND[kind]}, "")
    if problem:
        return problem
    for key, expected in (("model", model), ("name", name), ("version", version)):
        if card[key] != expected:
            return f"field {key!r} says {shorten(card[key])}, but the entry is {model}/{name}/v{version}"
    if any(not isinstance(k, str) or not _is_int(v) for k, v in card["files"].items()):
        return "field 'files' must map file names to sizes"
    if any(not isinstance(p, str) for p in card.get("parents", [])):
        return "field 'parents' must list refs"
    if "base" in card and (problem := _fields(card["base"], _BASE_LINK, "base.")):
        return problem
    for i, part in enumerate(card.get("parts", []) if kind == "composition" else []):
        if not isinstance(part, dict):
            return f"parts[{i}] is not an object"
        if problem := _fields(part, _PART, f"parts[{i}]."):
            return problem
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(data: dict[str, Any], schema: dict[str, tuple[tuple[type, ...], bool]], prefix: str) -> str | None:
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                return f"field {prefix + key!r} is missing"
            continue
        value = data[key]
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"field {prefix + key!r} is {shorten(value, 40)} ({type(value).__name__}), expected {names}"
    return None


def metric_scopes(metrics: dict[str, Any], single: str = "test") -> list[tuple[str, dict[str, Any]]]:
    """Adapter cards keep metrics per scope (the names a task's `scopes` gives, "all" first); base cards keep
    one set of metrics, shown under `single`."""
    scoped = bool(metrics) and all(isinstance(v, dict) and v for v in metrics.values())
    return list(metrics.items()) if scoped else [(single, metrics)]
