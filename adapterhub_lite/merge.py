"""Combining zoo adapters into a new adapter, and fusing adapters into a new base.

Both check before they write anything: every ref resolves, all adapters sit
on one base (same fingerprint), their family is the method's, the method
takes the options given, and no input carries fields this version does not
understand (a newer file's DoRA magnitude, say) that a merge would drop.
`plan_merge` does all the work but writing, which is what `--dry-run` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .combining import combine
from .errors import IncompatibleAdapterError, RefError
from .fingerprint import state_fingerprint
from .model import AdaptedModel
from .registry import Registry
from .serialization import read_adapter_file
from .specs import AdapterBundle, MergeInput, MergeMethod, MergeResult
from .stacks import Stack, resolve_stack
from .workflow import DataOptions, add_adapter_version, add_base_version, evaluate, load_base, stack
from .zoo import Zoo, ZooEntry


@dataclass
class MergePlan:
    """A checked, computed merge, not yet written."""

    model: str
    base: ZooEntry
    inputs: list[tuple[ZooEntry, float]]
    method: MergeMethod
    rank: int | None
    options: dict[str, Any]
    result: MergeResult
    adapter: AdaptedModel  # the base with the new adapter loaded (named "merged")

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
            "inputs": [{"ref": e.ref, "weight": w, "rank": e.card.get("config", {}).get("rank")}
                       for e, w in self.inputs],
            "rank": {"min": min(ranks.values()), "max": max(ranks.values())} if ranks else None,
            "modules": len(ranks), "parameters": self.parameters, "bytes": self.bytes,
            **{k: v for k, v in self.result.report.items() if k not in ("ranks", "method")},
        }


def _merge_input(registry: Registry, entry: ZooEntry, weight: float) -> MergeInput:
    file = read_adapter_file(entry.weights)
    for target in file.meta["targets"].values():
        registry.get_kind(target["kind"])  # every kind must be installed
    unknown = sorted(file.unknown) + [f"config.{k}" for k in file.unknown_config_fields(registry)]
    if unknown:
        raise IncompatibleAdapterError(
            f"{entry.ref} carries fields this version does not understand ({', '.join(unknown)}); merging would "
            "silently drop them: upgrade adapterhub_lite")
    bundle = file.bundle(registry)
    return MergeInput(label=entry.ref, weight=weight, configs=bundle.configs, state=bundle.state)


def plan_merge(registry: Registry, zoo: Zoo, model: str | None, refs: Sequence[str] | Stack, method: str,
               rank: int | None = None, options: Mapping[str, Any] | None = None) -> MergePlan:
    """Resolve (once), check and compute a merge; nothing is written."""
    spec = registry.get_merge_method(method)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, list(resolved.adapters)
    inputs = [_merge_input(registry, entry, weight) for entry, weight in adapters]
    result = combine(registry, inputs, method, rank, options)
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    config = next(iter(result.configs.values()))
    bundle = AdapterBundle(name="merged", family=config.kind, configs=result.configs, state=result.state,
                           config=config.replace(targets=sorted(result.configs), target_types=[]))
    am.add_bundle(bundle)  # proves the result fits the base before anything is written
    return MergePlan(base.model, base, adapters, spec, rank, options, result, am)


def write_merge(registry: Registry, zoo: Zoo, plan: MergePlan, name: str,
                data: DataOptions | None = None) -> ZooEntry:
    """Write a planned merge as a new version of adapter `name`; `data` evaluates it for the card."""
    recipe = {"command": "merge", "method": plan.method.name, "rank": plan.rank, **plan.options}
    return add_adapter_version(registry, zoo, plan.base, name, plan.adapter, "merged", recipe,
                               {"parents": [e.ref for e, _ in plan.inputs], "merge": plan.describe()}, data)


def fuse(registry: Registry, zoo: Zoo, model: str, refs: Sequence[str] | Stack, name: str, *,
         dry_run: bool = False, data: DataOptions | None = None) -> tuple[dict[str, Any], ZooEntry | None]:
    """Fold weighted adapters into their base and write the result as a new base version `model/name`."""
    zoo.check_new(model, name, "base", writable=not dry_run)
    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, resolved.adapters
    if not adapters:
        raise RefError("name at least one adapter to fuse into the base")
    plain = fused_model(registry, zoo, resolved)
    state = {k: v.detach().contiguous() for k, v in plain.state_dict().items()}
    fingerprint = state_fingerprint(state)
    fused = [{"ref": e.ref, "weight": w, "fingerprint": state_fingerprint(read_adapter_file(e.weights).tensors())}
             for e, w in adapters]
    plan = {"base": base.ref, "fused": fused, "fingerprint": fingerprint, "out": f"{model}/{name}",
            "parameters": sum(t.numel() for t in state.values()),
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}
    if dry_run:
        return plan, None
    card: dict[str, Any] = {
        "config": base.card.get("config", {}), "task": base.card.get("task"),
        "parents": [base.ref, *[f["ref"] for f in fused]],
        "recipe": {"command": "merge --into-base", "base": base.ref, "fused": fused}, "fused": fused,
    }
    if data is not None:
        card["metrics"] = evaluate(registry, zoo, model, plain.eval(), data)
    return plan, add_base_version(zoo, model, name, state, card, registry.get_model(model).task)


def fused_model(registry: Registry, zoo: Zoo, refs: Sequence[str] | Stack, model: str | None = None) -> nn.Module:
    """The plain base model with the adapters of refs (or a resolved Stack) folded in at their weights."""
    am, _ = stack(registry, zoo, refs, model)
    return am.unload(merge=True)
