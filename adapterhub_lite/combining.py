"""Combining weighted adapters into one with a registered combine method: the one place a combine is checked
and computed. The zoo's `combine.plan_combine` and `AdaptedModel.combine` both come here; it knows neither
the zoo nor a model, only the registry and the adapters' tensors and configs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .errors import AdapterhubWarning, ConfigError, IncompatibleAdapterError
from .registry import Registry
from .specs import AdapterBundle, CombineInput, CombineResult

# largest |result's delta - weighted sum of the inputs' deltas|, relative to the largest term summed, that a
# method reporting "exact" may show: a few ulps of each dtype summed over a re-factoring
EXACT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def combine(registry: Registry, inputs: list[CombineInput], method: str, rank: int | None = None,
            options: Mapping[str, Any] | None = None) -> CombineResult:
    """Combine weighted adapters with a registered method: the one place a combine is checked and computed
    (the zoo's `plan_combine` and `AdaptedModel.combine` both come here)."""
    spec = registry.get_combine_method(method)
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
        raise ConfigError("name at least one adapter to combine")
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
        if name in registry.combine_methods and families <= set(registry.get_combine_method(name).families):
            return name
    usable = sorted(m for m, owned in registry.combine_methods.items() if families <= set(owned.spec.families))
    raise ConfigError(f"{' and '.join(sorted(families))} adapters name no default way to combine them: give "
                      f"--method ({', '.join(usable) or 'no installed method combines them'})", option="method")


def check_exact(am: Any, combined: str, inputs: list[CombineInput], report: dict[str, Any], method: str) -> None:
    """A method that reports an exact result is checked on the inputs it combined: their weighted deltas, summed
    in float64, against the result's, module by module, on `am` (the base with the result loaded as `combined`).
    The largest deviation relative to the size of the terms summed goes into the report (`exact_deviation`);
    beyond the dtype's tolerance the result is recorded as inexact, with one warning."""
    if not report.get("exact"):
        return
    names = []
    try:
        for i, item in enumerate(inputs):
            names.append(f"_exactness_{i}")
            am.add_bundle(AdapterBundle(name=names[-1], family=item.family, configs=item.configs,
                                        state=item.state), activate=False)
        worst, tolerance = 0.0, 0.0
        for layer in am.layers().values():
            held = [(n, item.weight) for n, item in zip(names, inputs) if n in layer.adapters]
            if not held and combined not in layer.adapters:
                continue
            want: dict[str, torch.Tensor] = {}
            size: dict[str, float] = {}  # the terms' size: a sum that cancels to ~0 is judged against its terms
            for name, weight in held:
                for path, delta in layer.delta_weights(name).items():
                    want[path] = want.get(path, 0) + delta.detach().double() * weight
                    size[path] = size.get(path, 0.0) + abs(weight) * float(delta.detach().abs().max())
            got = {path: d.detach().double() for path, d in layer.delta_weights(combined).items()} \
                if combined in layer.adapters else {}
            for path in set(want) | set(got):
                expected = want.get(path, torch.zeros_like(got.get(path, torch.zeros(1))))
                actual = got.get(path, torch.zeros_like(expected))
                scale = max(size.get(path, 0.0), float(actual.abs().max())) + 1e-12
                worst = max(worst, float((actual - expected).abs().max()) / scale)
            dtype = next(iter(layer.base.parameters())).dtype
            tolerance = max(tolerance, EXACT_TOLERANCE.get(dtype, 1e-4))
    finally:
        for name in names:
            if name in am.adapters:
                am.delete_adapter(name)
    report["exact_deviation"] = worst
    if worst > tolerance:
        report["exact"] = False
        warnings.warn(f"combine method {method!r} reported an exact result, but it deviates from the "
                      f"weighted sum of its inputs by {worst:.2e} (tolerance {tolerance:.0e}): recorded as inexact",
                      AdapterhubWarning, stacklevel=2)
