"""Combining weighted adapters into one with a registered merge method: the one place a merge is checked
and computed. The zoo's `merge.plan_merge` and `AdaptedModel.merge_adapters` both come here; it knows neither
the zoo nor a model, only the registry and the adapters' tensors and configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, IncompatibleAdapterError
from .registry import Registry
from .specs import MergeInput, MergeResult


def combine(registry: Registry, inputs: list[MergeInput], method: str, rank: int | None = None,
            options: Mapping[str, Any] | None = None) -> MergeResult:
    """Combine weighted adapters with a registered method: the one place a merge is checked and computed
    (the zoo's `plan_merge` and `AdaptedModel.merge_adapters` both come here)."""
    spec = registry.get_merge_method(method)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    rank = options.pop("rank", None) if rank is None else rank  # rank is an option like any other
    if rank is not None and "rank" not in spec.option_names:
        raise ConfigError(f"method {method!r} sets the rank itself; give no rank (or use a method that takes one)",
                          option="rank")
    refused = sorted(set(options) - set(spec.option_names))
    if refused:
        takes = ", ".join(spec.option_names) or "no options"
        raise ConfigError(f"method {method!r} does not use {', '.join(refused)} (it takes {takes})",
                          option=refused[0])
    if not inputs:
        raise ConfigError("name at least one adapter to merge")
    for item in inputs:
        if item.family not in spec.families:
            raise IncompatibleAdapterError(
                f"{item.label} is a {item.family!r} adapter; method {method!r} combines "
                f"{' and '.join(repr(f) for f in spec.families)} adapters only: use a method for that family "
                "(see `adapters plugins`), or fuse the adapters into the base instead", option="into_base")
    return spec.fn(inputs, rank=rank, **options)


def default_method(registry: Registry, families: set[str]) -> str:
    """The combine method the adapters' family names (`AdapterConfig.combine_method`), used wherever adapters
    are combined without a method given; one line naming the family's methods when it names none."""
    names = {registry.config_class(family).combine_method for family in families}
    if len(families) == 1 and None not in names:
        name = names.pop()
        if name in registry.merges and families <= set(registry.get_merge_method(name).families):
            return name
    usable = sorted(m for m, owned in registry.merges.items() if families <= set(owned.spec.families))
    raise ConfigError(f"{' and '.join(sorted(families))} adapters name no default way to combine them: give "
                      f"--method ({', '.join(usable) or 'no installed method combines them'})", option="method")
