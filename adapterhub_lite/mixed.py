"""MixedLayer: adapters of several families on one base module.

Each family keeps its own layer, built by its plugin (a *part*: that family's adapters and their math); the
mixed layer is the one module in the model, owns the bookkeeping (weights, on/off, merges) and composes the
parts by what each declares (`AdapterLayer.composes`):

- additive families ("adds") add their deltas, each taken against the base weight, so the output is
  base(x) + the sum of every live adapter's delta, in any order;
- a family that acts on the whole layer ("wraps", like (IA)^3's scales) wraps everything inside it: the base
  and the additive deltas alike, W' = D_out (W + sum of deltas) D_in. Several such families nest in the order
  they first came to the layer.

A merge folds exactly this into the weights, computed from the original base tensors with every merged
adapter (a merge in several steps gives what one merge would); unmerge is the usual bit-exact swap. A
module gets a mixed layer only when a second family comes to it; single-family layers stay as their
plugin built them.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor

from .errors import AdapterStateError
from .layer import AdapterLayer, Allocate
from .routing import Route


class MixedLayer(AdapterLayer):
    train_on_merged_weights = False  # the parts' own rules; this layer runs them as they are

    def __init__(self, first: AdapterLayer) -> None:
        """Take over `first` (a single-family layer, nothing merged): its adapters keep their parameters."""
        if first.merged:
            raise AdapterStateError(f"adapters {list(first.merged)} are merged into this module: unmerge() before "
                                    "adding an adapter of another family to it")
        super().__init__(first.base)
        self._parts: dict[str, AdapterLayer] = {}
        self._attach(next(iter(first.configs.values())).kind, first)
        for name, module in first.adapters.items():
            self.adapters[name] = module
            self.configs[name] = first.configs[name]
            self._weights[name] = first.weight(name)
            if name not in first.active:
                self._disabled.add(name)
        first.invalidate()

    def _attach(self, family: str, part: AdapterLayer) -> None:
        part._originals = self._originals  # one record of the original tensors: parts take deltas against it
        part.training = self.training
        self._parts[family] = part

    def part_for(self, family: str, layer_class: type[AdapterLayer]) -> AdapterLayer:
        """The part holding `family` (made with `layer_class` if this layer has none yet)."""
        part = self._parts.get(family)
        if part is None:
            part = layer_class(self.base)
            self._attach(family, part)
        elif type(part) is not layer_class:
            raise AdapterStateError(f"this layer holds {family!r} with {type(part).__name__}, not {layer_class.__name__}")
        return part

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def layer_of(self, name: str) -> AdapterLayer:
        self._require(name)
        return self._parts[self.configs[name].kind]

    # --- the part's state follows this layer's --------------------------------------------------------------
    @property  # type: ignore[override]
    def route_per_group(self) -> bool:
        return any(part.route_per_group for part in self._parts.values())

    def train(self, mode: bool = True) -> MixedLayer:
        super().train(mode)
        for part in self.__dict__.get("_parts", {}).values():
            part.training = mode
        return self

    def invalidate(self) -> None:
        super().invalidate()
        for part in self.__dict__.get("_parts", {}).values():
            part.invalidate()

    # --- composition -----------------------------------------------------------------------------------------
    def add(self, name: str, config: Any) -> None:
        if config.kind not in self._parts:
            raise AdapterStateError(f"this layer has no {config.kind!r} part: add the adapter through AdaptedModel")
        if name in self.adapters:
            raise AdapterStateError(f"layer already has an adapter named {name!r}: delete it first or pick another name")
        part = self._parts[config.kind]
        try:
            part.add(name, config)
        except Exception:
            if not part.adapters:  # a part made for this adapter alone goes with it
                del self._parts[config.kind]
            raise
        self.adapters[name] = part.adapters[name]
        self.configs[name] = config
        self._weights[name] = 1.0
        self.invalidate()

    def remove(self, name: str) -> None:
        self._require(name, unmerged=True)
        family = self.configs[name].kind
        self._parts[family].remove(name)
        super().remove(name)
        if not self._parts[family].adapters:
            del self._parts[family]

    def _by_part(self, weighted: list[tuple[str, float]]) -> list[tuple[AdapterLayer, list[tuple[str, float]]]]:
        """The adapters grouped by the part holding them, parts in their order."""
        groups: dict[str, list[tuple[str, float]]] = {}
        for name, weight in weighted:
            groups.setdefault(self.configs[name].kind, []).append((name, weight))
        return [(part, groups[family]) for family, part in self._parts.items() if family in groups]

    # --- the math, from the parts ------------------------------------------------------------------------------
    def delta(self, name: str, x: Tensor) -> Tensor:
        return self.layer_of(name).delta(name, x)

    def delta_weight(self, name: str) -> Tensor:
        return self.layer_of(name).delta_weight(name)

    def delta_weights(self, name: str) -> dict[str, Tensor]:
        return self.layer_of(name).delta_weights(name)

    def describe(self, name: str) -> dict[str, Any]:
        return self.layer_of(name).describe(name)

    def combine(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        total = out
        for i, (part, group) in enumerate(self._by_part(live)):
            if i == 0:
                total = part.combine(group, x, out=out)  # `out` is the base output, as combine promises
            else:
                total = part.combine(group, x) if total is None else total + part.combine(group, x)
        assert total is not None
        return total

    def combine_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                       out: Tensor | None = None) -> Tensor:
        """Under a route each sample runs one adapter, whose own delta is exact whatever its family."""
        total = out
        for i, (part, group) in enumerate(self._by_part(live)):
            if i == 0:
                total = part.combine_routed(group, x, route, batch_dim, out=out)
            else:
                term = part.combine_routed(group, x, route, batch_dim)
                total = term if total is None else total + term
        assert total is not None
        return total

    def run(self, live: list[tuple[str, float]], x: Tensor, *args: Any, route: Route | None = None,
            **kwargs: Any) -> Tensor:
        if route is not None or not live:
            return super().run(live, x, *args, route=route, **kwargs)  # under a route: each sample's own delta
        if self._merged:  # the base tensors hold merged adapters: compose from the originals
            return self.forward_with(self.merged_tensors(live), x, *args, **kwargs)
        groups = self._by_part(live)

        def inner(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            out = self.base(x, *args, **kwargs)
            adds = [(part, group) for part, group in groups if part.composes == "adds"]
            if not adds:
                return out
            total = adds[0][0].combine(adds[0][1], x, out=out)  # `out` is the base output, as combine promises
            for part, group in adds[1:]:
                total = total + part.combine(group, x)
            return total

        run = inner
        for part, group in groups:
            if part.composes == "wraps":
                run = functools.partial(part.wrap_forward, group, inner=run)
        return run(x, *args, **kwargs)

    def merged_weights(self, weighted: list[tuple[str, float]], allocate: Allocate) -> dict[str, Tensor]:
        """The original tensors with the merged adapters and these folded in: additive deltas summed in float32,
        then each wrapping part applied to the result."""
        everything = [*self._merged.items(), *[(n, w) for n, w in weighted if n not in self._merged]]
        originals = self.base_state()
        totals: dict[str, Tensor] = {}
        groups = self._by_part(everything)
        for part, group in groups:
            if part.composes != "adds":
                continue
            for name, weight in group:
                for path, delta in part.delta_weights(name).items():
                    scaled = delta.float() * weight
                    totals[path] = scaled if path not in totals else totals[path] + scaled
        tensors = {path: (originals[path].float() + delta).to(originals[path].dtype) for path, delta in totals.items()}
        for part, group in groups:
            if part.composes == "wraps":
                tensors.update(part.wrap_weights(group, {**originals, **tensors}))
        return tensors

    def extra_repr(self) -> str:
        return f"families={list(self._parts)}, {super().extra_repr()}"
