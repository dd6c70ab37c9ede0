"""Combining zoo adapters into a new adapter (`adapters combine`; fusing into a new base is fuse.py).

It checks before it writes anything: every ref resolves, all adapters sit
on one base (same fingerprint), their family is the method's, the method
takes the options given, and no input carries fields this version does not
understand (a newer file's DoRA magnitude, say) that a combine would drop.
`plan_combine` does all the work but writing, which is what `--dry-run` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..combining import check_exact, combine, default_method
from ..errors import IncompatibleAdapterError
from ..model import AdaptedModel
from ..registry import Registry
from ..serialization import read_adapter_file
from ..specs import AdapterBundle, CombineInput, CombineMethod, CombineResult
from .stacks import Stack, resolve_stack
from .evaluation import DataOptions
from .loading import load_base
from .versions import add_adapter_version
from .store import Zoo, ZooEntry


@dataclass
class CombinePlan:
    """A checked, computed combine, not yet written."""

    model: str
    base: ZooEntry
    inputs: list[tuple[ZooEntry, float]]
    method: CombineMethod
    rank: int | None
    options: dict[str, Any]
    result: CombineResult
    adapter: AdaptedModel  # the base with the new adapter loaded (named "combined")

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.result.state.values())

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.result.state.values())

    def describe(self) -> dict[str, Any]:
        ranks = self.result.report.get("ranks", {})
        return {
            "method": self.method.name, "base": self.base.ref,
            "inputs": [{"ref": e.ref, "weight": w, **_header_fields(self.adapter.registry, e.card)}
                       for e, w in self.inputs],
            "rank": {"min": min(ranks.values()), "max": max(ranks.values())} if ranks else None,
            "modules": len(ranks), "parameters": self.parameters, "bytes": self.bytes,
            **{k: v for k, v in self.result.report.items() if k not in ("ranks", "method")},
        }


def _header_fields(registry: Registry, card: dict[str, Any]) -> dict[str, Any]:
    """The fields the card's family names for a one-word summary (its config's `header_fields`)."""
    from ..errors import AdapterhubError

    config = card.get("config") or {}
    try:
        names = registry.config_class(str(card.get("family"))).header_fields
    except AdapterhubError:  # a family not installed here: nothing to name
        return {}
    return {k: config[k] for k in names if k in config}


def _combine_input(registry: Registry, entry: ZooEntry, weight: float) -> CombineInput:
    file = read_adapter_file(entry.weights)
    for target in file.meta["targets"].values():
        registry.get_kind(target["kind"])  # every kind must be installed
    unknown = sorted(file.unknown) + [f"config.{k}" for k in file.unknown_config_fields(registry)]
    if unknown:
        raise IncompatibleAdapterError(
            f"{entry.ref} carries fields this version does not understand ({', '.join(unknown)}); combining would "
            "silently drop them: upgrade adapterhub_lite")
    bundle = file.bundle(registry)
    return CombineInput(label=entry.ref, weight=weight, configs=bundle.configs, state=bundle.state)


def plan_combine(registry: Registry, zoo: Zoo, model: str | None, refs: Sequence[str] | Stack,
               method: str | None = None, rank: int | None = None,
               options: Mapping[str, Any] | None = None) -> CombinePlan:
    """Resolve (once), check and compute a combine (`method` None: the one the adapters' family names); nothing
    is written."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    rank = options.pop("rank", None) if rank is None else rank
    if method is not None:
        registry.get_combine_method(method)  # an unknown method is refused before any file is read
    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, list(resolved.adapters)
    inputs = [_combine_input(registry, entry, weight) for entry, weight in adapters]
    method = method or default_method(registry, {item.family for item in inputs})
    spec = registry.get_combine_method(method)
    result = combine(registry, inputs, method, rank, options)
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    config = next(iter(result.configs.values()))
    bundle = AdapterBundle(name="combined", family=config.family, configs=result.configs, state=result.state,
                           config=config.replace(targets=sorted(result.configs), target_types=[]))
    am.add_bundle(bundle)  # proves the result fits the base before anything is written
    check_exact(am, "combined", inputs, result.report, method)  # a result reported exact is checked, not trusted
    return CombinePlan(base.model, base, adapters, spec, rank, options, result, am)


def write_combined(registry: Registry, zoo: Zoo, plan: CombinePlan, name: str,
                data: DataOptions | None = None) -> ZooEntry:
    """Write a planned combine as a new version of adapter `name`; `data` evaluates it for the card."""
    recipe = {"command": "merge", "method": plan.method.name, **({"rank": plan.rank} if plan.rank is not None else {}),
              **plan.options}
    return add_adapter_version(registry, zoo, plan.base, name, plan.adapter, "combined", recipe,
                               {"parents": [e.ref for e, _ in plan.inputs], "merge": plan.describe()}, data)
