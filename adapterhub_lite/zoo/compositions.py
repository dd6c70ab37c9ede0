"""Compositions: a named, versioned stack in the zoo.

A composition holds references to exact adapter versions and their weights,
no tensors. Wherever a command accepts an adapter it accepts a composition,
which expands to its parts (`stacks.expand`: weights multiply through nested
compositions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RefError
from .stacks import resolve_each, stack_of
from .store import Zoo, ZooEntry


def compose(zoo: Zoo, model: str, name: str, refs: Sequence[str]) -> ZooEntry:
    """Save refs (exact versions, with weights) as a new version of composition `model/name`."""
    zoo.check_new(model, name, "composition")
    named = resolve_each(zoo, refs, model)  # parsed and resolved once: these exact versions are pinned
    stack = stack_of(zoo, named)
    base, adapters = stack.base, stack.adapters
    if not adapters:
        raise RefError("a composition needs at least one adapter ref")
    parts = [{"ref": entry.ref, "weight": weight} for entry, weight in named if not entry.is_base]
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
