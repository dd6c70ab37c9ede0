"""From refs to a stack, once: parse, resolve against the zoo, expand compositions, check one base.

Every command that takes refs (apply, combine, fuse, merge, export, compose) resolves
them here exactly once and passes the resolved `Stack` on, so no string is
parsed twice and every step sees the same exact versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import IncompatibleAdapterError, RefError, ZooError
from ..refs import AdapterRef, parse_refs
from .store import Zoo, ZooEntry


@dataclass(frozen=True)
class Stack:
    """A base version and the adapter versions on it, each at its weight (compositions expanded)."""

    base: ZooEntry
    adapters: tuple[tuple[ZooEntry, float], ...] = ()

    @property
    def model(self) -> str:
        return self.base.model

    def describe(self) -> list[dict[str, object]]:
        return [{"ref": entry.ref, "weight": weight} for entry, weight in self.adapters]


def expand(zoo: Zoo, entry: ZooEntry, weight: float = 1.0) -> list[tuple[ZooEntry, float]]:
    """The adapter versions an entry stands for, each with its effective weight (weights multiply through
    nested compositions)."""
    if not entry.is_composition:
        return [(entry, weight)]
    out = []
    for part in entry.card.get("parts", []):
        try:
            found = zoo.resolve(part["ref"])
        except (RefError, ZooError, KeyError) as exc:
            raise ZooError(f"composition {entry.ref} names {part['ref']}, which the zoo cannot provide ({exc}); "
                           f"restore it or compose again") from None
        out += expand(zoo, found, weight * float(part["weight"]))
    return out


def resolve_stack(zoo: Zoo, refs: Sequence[str | AdapterRef] | Stack, model: str | None = None) -> Stack:
    """The base and the weighted adapters that refs name, checked to share one base (a Stack passes
    through). Without a base among the refs, the base is the one the first adapter was trained on."""
    if isinstance(refs, Stack):
        return refs
    return stack_of(zoo, resolve_each(zoo, refs, model))


def resolve_each(zoo: Zoo, refs: Sequence[str | AdapterRef], model: str | None = None
                 ) -> list[tuple[ZooEntry, float]]:
    """Each ref's zoo entry (exact version) and weight (default 1), compositions not yet expanded."""
    return [(zoo.resolve(r), r.weight if r.weight is not None else 1.0) for r in parse_refs(refs, model)]


def stack_of(zoo: Zoo, named: list[tuple[ZooEntry, float]]) -> Stack:
    """The Stack that resolved entries make: compositions expanded, one base, every adapter trained on it."""
    bases = [entry for entry, _ in named if entry.is_base]
    if len(bases) > 1:
        raise RefError("name the base at most once")
    adapters = [pair for entry, weight in named if not entry.is_base for pair in expand(zoo, entry, weight)]
    if bases:
        base = bases[0]
    elif adapters:
        base = zoo.resolve(adapters[0][0].card["base"]["ref"])
    else:
        base = zoo.resolve(named[0][0].model)
    for entry, _ in adapters:
        trained_on = entry.card["base"]
        if trained_on["fingerprint"] != base.card["fingerprint"]:
            raise IncompatibleAdapterError(
                f"{entry.ref} was trained on {trained_on['ref']}, not {base.ref}: "
                f"use it with {trained_on['ref']} (or leave the base out to use it)")
    return Stack(base, tuple(adapters))
