"""Compositions: a named, versioned stack in the zoo.

A composition holds references to exact adapter versions and their weights,
no tensors. Wherever a command accepts an adapter it accepts a composition,
which expands to its parts (weights multiply through nested compositions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AdapterhubError, ZooError
from .zoo import Zoo, ZooEntry


def expand(zoo: Zoo, entry: ZooEntry, weight: float = 1.0) -> list[tuple[ZooEntry, float]]:
    """The adapter versions an entry stands for, each with its effective weight."""
    if not entry.is_composition:
        return [(entry, weight)]
    out = []
    for part in entry.card.get("parts", []):
        try:
            found = zoo.resolve(part["ref"])
        except AdapterhubError as exc:
            raise ZooError(f"composition {entry.ref} names {part['ref']}, which the zoo cannot provide ({exc}); "
                           f"restore it or compose again") from None
        out += expand(zoo, found, weight * float(part["weight"]))
    return out


def compose(zoo: Zoo, model: str, name: str, refs: Sequence[str]) -> ZooEntry:
    """Save refs (exact versions, with weights) as a new version of composition `model/name`."""
    from .workflow import parse_refs, resolve_stack

    zoo.check_new(model, name, "composition")
    base, adapters = resolve_stack(zoo, refs, model)
    if not adapters:
        raise AdapterhubError("a composition needs at least one adapter ref")
    parts = []
    for ref in parse_refs(refs, model):
        entry = zoo.resolve(ref)
        if not entry.is_base:  # pinned: the exact version this ref names today
            parts.append({"ref": entry.ref, "weight": ref.weight if ref.weight is not None else 1.0})
    card: dict[str, Any] = {
        "kind": "composition", "parts": parts,
        "base": {"ref": base.ref, "version": base.version, "fingerprint": base.card["fingerprint"]},
        "parents": [p["ref"] for p in parts],
        "expanded": [{"ref": e.ref, "weight": w} for e, w in adapters],
        "parameters": sum(int(e.card.get("parameters") or 0) for e, _ in adapters),
    }

    def write(folder: Path) -> None:
        (folder / "composition.json").write_text(json.dumps({"parts": parts}, indent=2) + "\n")

    return zoo.add_version(model, name, write, card)
