"""AdaptedModule: what stands in the model where an adapted base module was, and the bookkeeping of its adapters.

The core owns here, once for every family: adapter names, weights, on/off, bit-exact fold and unfold, state
in and out, and adapters of several families on one module. The math of each family is a *kind*
(`layer.py`'s `AdapterLayer`, built by the family's plugin); this module holds one kind object per family it
carries and composes them by what each declares (`AdapterLayer.composes`):

- additive families ("adds") add their deltas, each taken against the base weight, so the output is
  base(x) + the sum of every live adapter's delta, in any order;
- a family that acts on the whole layer ("wraps", like (IA)^3's scales) wraps everything inside it: the base
  and the additive deltas alike, W' = D_out (W + sum of deltas) D_in. Several such families nest in the order
  they first came to the module.

With one family the kind runs its own forward (`run`) and its own fast fold (`folded_weights`).

Exactness rules, enforced here once for every kind:

- an adapter that is disabled or at weight 0 is skipped, so with no live adapter the output *is* `base(x)`:
  bit-identical;
- `fold` keeps the original weight tensor and swaps in a new one with the adapters folded in; `unfold` swaps
  the original back: bit-exact, never a subtraction. The cost is one extra copy of each folded weight while
  folded. With several families a fold is computed from the original tensors with every folded adapter (a fold
  in several steps gives what one fold would).

How a forward is served is not this module's business: its `strategy` (set by the model handle, see
`forward.py`: cached folded weights, per-sample routing, compiled) decides, and with none it runs `run` on its
live adapters. The strategies import this module; this module imports none of them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from ._moved import Renamed
from .buffers import FoldBuffers, empty_weight_like
from .config import AdapterConfig
from .errors import (AdapterhubError, AdapterStateError, IncompatibleAdapterError, PluginError, UnknownNameError,
                     UnsupportedModuleError)
from .layer import AdapterLayer, Allocate
from .routing import Route

Live = list[tuple[str, float]]
FIXED_SHAPE_PATH = ("prepare_static", "fill_static", "static_forward", "release_static")


class AdapterDict(nn.ModuleDict):
    """The adapters of a module by name. Any name the zoo allows is a key, also one that is an attribute of a
    torch module ("half", "train", "to"): ModuleDict would refuse those, but they are only ever looked up as
    keys here."""

    def __setitem__(self, key: str, module: nn.Module) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"adapter name {key!r} cannot name a module")
        self._modules[key] = module


class AdaptedModule(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.adapters = AdapterDict().train(base.training)  # every family's; state dict keys `adapters.<name>.`
        self.configs: dict[str, AdapterConfig] = {}
        self._kinds: dict[str, AdapterLayer] = {}  # family -> its kind, in the order the families came
        self.__dict__["_only"] = None  # the kind, while there is one family (see _kinds_changed)
        self._weights: dict[str, float] = {}
        self._disabled: set[str] = set()
        self._folded: dict[str, float] = {}  # name -> weight it was folded at
        self._originals: dict[str, Tensor] = {}  # base parameter path -> unfolded tensor
        self._fold_buffers = FoldBuffers()  # what a fold writes into (kept across unfold only if asked)
        self.strategy: Any = None  # how forward is served (forward.py), set by the model handle; None: `run`
        self.label = f"adapted {type(base).__name__}"  # for errors; the model handle names the module
        self.base_numel = sum(p.numel() for p in base.parameters())  # folding swaps tensors, never shapes
        self.base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
        self.train(base.training)  # a wrapper made on an eval-mode model stays in eval mode (no adapter dropout)

    # --- the kinds ------------------------------------------------------------------------------
    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    @property
    def kinds(self) -> tuple[AdapterLayer, ...]:
        return tuple(self._kinds.values())

    def layer_of(self, name: str) -> AdapterLayer:
        """The kind whose math runs adapter `name`."""
        self._require(name)
        return self._kinds[self.configs[name].family]

    def _kinds_changed(self) -> None:
        """Keep `_only`, the one kind when there is one family (its own forward and fold run), current: every
        forward asks. Not `self._only = ...`: torch would register the kind as a submodule."""
        self.__dict__["_only"] = next(iter(self._kinds.values())) if len(self._kinds) == 1 else None

    def _by_kind(self, weighted: Live) -> list[tuple[AdapterLayer, Live]]:
        """The adapters grouped by the kind holding them, kinds in the order they came."""
        groups: dict[str, Live] = {}
        for name, weight in weighted:
            groups.setdefault(self.configs[name].family, []).append((name, weight))
        return [(kind, groups[family]) for family, kind in self._kinds.items() if family in groups]

    @property
    def route_per_group(self) -> bool:
        """Under a route, run each sample group on its own (a cost hint of the kinds, forward.py)."""
        return any(kind.route_per_group for kind in self._kinds.values())

    @property
    def train_on_folded_weights(self) -> bool:
        """Whether training may run through W + delta (the kind's opt-in; never with several families)."""
        single = self._only
        return single is not None and single.train_on_folded_weights

    def static_kind(self) -> AdapterLayer | None:
        """The kind that serves a compiled forward (`AdaptedModel.compile`): the one family here, if its kind
        has the fixed-shape path (forward.py); None otherwise."""
        single = self._only
        if single is not None and all(callable(getattr(single, n, None)) for n in FIXED_SHAPE_PATH):
            return single
        return None

    def train(self, mode: bool = True) -> AdaptedModule:
        super().train(mode)
        for kind in self.__dict__.get("_kinds", {}).values():  # kinds are not submodules: they follow by hand
            kind.training = mode
        return self

    def invalidate(self) -> None:
        """Drop caches derived from the adapters (called after every composition change)."""
        if self.strategy is not None:
            self.strategy.invalidate()
        for kind in self._kinds.values():
            kind.invalidate()

    # --- composition -----------------------------------------------------------------------------
    def add(self, name: str, config: AdapterConfig, layer_class: type[AdapterLayer] | None = None) -> None:
        """Create adapter `name` with `config`. A family new to this module gets a kind to run it: `layer_class`
        if given (the model handle passes the one it picked), else the installed registry's choice."""
        if name in self.adapters:
            raise AdapterStateError(f"layer already has an adapter named {name!r}: delete it first or pick another name")
        family = config.family
        kind = self._kinds.get(family)
        if kind is None:
            if layer_class is None:
                from .registry import get_registry

                layer_class = get_registry().require_kind_for(self.base, family, self.label).layer_class
            if self._folded:
                raise AdapterStateError(f"adapters {list(self._folded)} are folded into this module: unfold() "
                                        "before adding an adapter of another family to it")
            kind = layer_class(self.base)
            kind._attach(self)
        elif layer_class is not None and type(kind) is not layer_class:
            raise AdapterStateError(f"this module holds {family!r} with {type(kind).__name__}, not {layer_class.__name__}")
        with torch.inference_mode(False):  # an adapter outlives an inference_mode block: normal tensors, which
            created = kind.create(name, config)  # can train later and have the version counters caches key on
        buffers = [key for key, _ in created.named_buffers()]
        if buffers:  # files, combines and state dicts carry an adapter's parameters: a buffer would be lost
            raise UnsupportedModuleError(
                f"{type(kind).__name__}.create made adapter {name!r} with buffers ({', '.join(buffers[:3])}): adapter "
                "files and combines keep parameters only; make them nn.Parameter(requires_grad=False), or compute "
                "them from the config")
        kind.training = self.training
        self._kinds[family] = kind
        self._kinds_changed()
        self.adapters[name] = created.train(self.training)  # follows the model's mode
        self.configs[name] = config
        self._weights[name] = 1.0
        self.invalidate()

    def remove(self, name: str) -> None:
        self._require(name, unfolded=True)
        family = self.configs[name].family
        del self.adapters[name]
        del self.configs[name], self._weights[name]
        self._disabled.discard(name)
        self.invalidate()
        if not any(config.family == family for config in self.configs.values()):
            del self._kinds[family]  # a family's kind goes with its last adapter
            self._kinds_changed()

    def set_weight(self, name: str, weight: float) -> None:
        self._require(name, unfolded=True)
        weight = float(weight)
        if not math.isfinite(weight):
            raise AdapterStateError(f"weight for adapter {name!r} must be finite, got {weight}")
        self._weights[name] = weight  # caches are keyed by the live set and its weights: nothing to drop

    def enable(self, *names: str) -> None:
        for name in names:
            self._require(name, unfolded=True)
            self._disabled.discard(name)

    def disable(self, *names: str) -> None:
        for name in names:
            self._require(name, unfolded=True)
            self._disabled.add(name)

    def weight(self, name: str) -> float:
        self._require(name)
        return self._weights[name]

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(n for n in self.adapters if n not in self._disabled)

    def live(self) -> Live:
        """Adapters the forward must compute: enabled, not folded, non-zero weight."""
        return [(n, self._weights[n]) for n in self.active if n not in self._folded and self._weights[n] != 0.0]

    def held(self, names: tuple[str, ...]) -> Live:
        """Those of `names` this module holds at a non-zero weight, with their weights (the routed set: on or
        off does not apply). One dict lookup per name: it runs on every layer of every routed call."""
        weights = self._weights
        return [(n, w) for n in names if (w := weights.get(n, 0.0)) != 0.0]

    # --- forward -------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Served by the strategy the model handle set (forward.py); without one, `run` on the live adapters."""
        if self.strategy is not None:
            return self.strategy.forward(self, *args, **kwargs)
        return self.run(self.live(), *args, **kwargs)

    def run(self, live: Live, x: Tensor, *args: Any, route: Route | None = None, **kwargs: Any) -> Any:
        """The plain forward with these live adapters (under a `route`, each sample's own adapter only)."""
        if not live:
            return self.base(x, *args, **kwargs)
        single = self._only
        if single is not None:
            try:
                return single.run(live, x, *args, route=route, **kwargs)
            except Exception as exc:
                self._blame(exc, single, live, "forward")
                raise
        if route is not None:  # each sample runs one adapter, whose own delta is exact whatever its family
            out = self.base(x, *args, **kwargs)
            total = out
            for i, (kind, group) in enumerate(self._by_kind(live)):
                term = kind.add_deltas_routed(group, x, route, out=out if i == 0 else None)
                total = term if i == 0 else total + term
            return total
        if self._folded:  # the base tensors hold folded adapters: compose from the originals
            return self.forward_with(self.folded_tensors(live), x, *args, **kwargs)
        groups = self._by_kind(live)

        def inner(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            out = self.base(x, *args, **kwargs)
            adds = [(kind, group) for kind, group in groups if kind.composes == "adds"]
            if not adds:
                return out
            total = adds[0][0].add_deltas(adds[0][1], x, out=out)  # `out` is the base output, as add_deltas promises
            for kind, group in adds[1:]:
                total = total + kind.add_deltas(group, x)
            return total

        run = inner
        for kind, group in groups:
            if kind.composes == "wraps":
                run = functools.partial(kind.wrap_forward, group, inner=run)
        return run(x, *args, **kwargs)

    def forward_with(self, weights: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """The base module's forward with some of its parameters replaced (the kind's direct call if one)."""
        single = self._only
        if single is not None:
            return single.forward_with(weights, *args, **kwargs)
        return torch.func.functional_call(self.base, weights, args, kwargs, strict=False)

    # --- folded tensors ---------------------------------------------------------------------------------
    def delta_weights(self, name: str) -> dict[str, Tensor]:
        """Adapter `name`'s change to each base parameter it changes (its kind's math)."""
        return self.layer_of(name).delta_weights(name)

    def describe(self, name: str) -> dict[str, Any]:
        """Adapter `name`'s per-target hyper-parameters worth recording in file metadata."""
        return self.layer_of(name).describe(name)

    def folded_tensors(self, weighted: Live, allocate: Allocate | None = None, *,
                       differentiable: bool = False) -> dict[str, Tensor]:
        """Base tensors with these adapters folded in at these weights (fresh tensors unless `allocate` hands
        out others); the current tensors stay untouched. `differentiable`: the generic sum, built inside
        autograd (training through folded weights)."""
        if differentiable:
            return self._summed(weighted)
        single = self._only
        if single is None:
            return self._composed(weighted)
        try:
            fast = single.folded_weights(weighted, allocate or (lambda path, current: empty_weight_like(current)))
            return fast if fast is not None else self._summed(weighted)
        except Exception as exc:
            self._blame(exc, single, weighted, "folded weights")
            raise

    @staticmethod
    def _blame(exc: Exception, kind: AdapterLayer, live: Live, doing: str) -> None:
        """Raise an error a kind's code raised as one line naming the kind, its plugin, the module and the
        adapters; the project's own errors are left to pass as they are (they already say what to do)."""
        if isinstance(exc, (AdapterhubError, MemoryError)) or "allocate" in str(exc):  # ours, or out of memory
            return
        names = ", ".join(repr(n) for n, _ in live)
        detail = " ".join(str(exc).split())[:300]
        raise PluginError(f"{kind.label}, adapter{'s' if len(live) > 1 else ''} {names}: its {doing} raised "
                          f"{type(exc).__name__}: {detail} (if the inputs are right, report it to the plugin's "
                          "authors)") from exc

    def _delta_sums(self, weighted: Live) -> dict[str, Tensor]:
        """sum(weight * delta) per base parameter path, accumulated in float32."""
        totals: dict[str, Tensor] = {}
        for name, weight in weighted:
            for path, delta in self.delta_weights(name).items():
                scaled = delta.float() * weight
                totals[path] = scaled if path not in totals else totals[path] + scaled
        return totals

    def _summed(self, weighted: Live) -> dict[str, Tensor]:
        """W + sum(weight * delta), rounded once; differentiable in the adapters when autograd records (the base
        is read detached: it stays frozen)."""
        out = {}
        for path, delta in self._delta_sums(weighted).items():
            param = self.base.get_parameter(path)
            out[path] = (param.detach().float() + delta).to(param.dtype)
        return out

    def _composed(self, weighted: Live) -> dict[str, Tensor]:
        """Several families: the original tensors with the folded adapters and these added, additive deltas
        summed in float32, then each wrapping kind applied to the result."""
        everything = [*self._folded.items(), *[(n, w) for n, w in weighted if n not in self._folded]]
        originals = self.base_state()
        groups = self._by_kind(everything)
        adds = [item for kind, group in groups if kind.composes == "adds" for item in group]
        tensors = {path: (originals[path].float() + delta).to(originals[path].dtype)
                   for path, delta in self._delta_sums(adds).items()}
        for kind, group in groups:
            if kind.composes == "wraps":
                tensors.update(kind.wrap_weights(group, {**originals, **tensors}))
        return tensors

    # --- fold -----------------------------------------------------------------------------------------------
    @property
    def folded(self) -> tuple[str, ...]:
        return tuple(self._folded)

    @torch.no_grad()
    def fold(self, *names: str) -> None:
        """Fold adapters (default: the live ones) into the base weights at their weights."""
        if not names:
            names = tuple(n for n, _ in self.live())
        for name in names:
            self._require(name, unfolded=True)
            if name in self._disabled:
                raise AdapterStateError(f"adapter {name!r} is disabled: enable it before folding it")
        weighted = [(n, self._weights[n]) for n in names if self._weights[n] != 0.0]
        folded = self.folded_tensors(weighted, self._fold_buffers.take) if weighted else {}
        for path, tensor in folded.items():
            param = self.base.get_parameter(path)
            self._originals.setdefault(path, param.data)
            param.data = tensor
        for name in names:
            self._folded[name] = self._weights[name]
        self.invalidate()

    @torch.no_grad()
    def unfold(self, keep_buffers: bool = False) -> None:
        """Put the original base tensors back: bit-exact. With `keep_buffers` the folded tensor is kept for the
        next fold to write into (no allocation then, see buffers.py; a kept buffer is reused only while
        nothing else references its memory); `release_buffers()` frees it."""
        for path, original in self._originals.items():
            param = self.base.get_parameter(path)
            if keep_buffers:
                self._fold_buffers.keep(path, param.data)
            param.data = original
        self._originals.clear()
        self._folded.clear()
        self.invalidate()

    def bake(self) -> None:
        """Make folded changes permanent: forget the originals (frees their memory)."""
        self._originals.clear()
        self._fold_buffers.release()

    def release(self) -> None:
        """Once unwrapped (`inject.unwrap`): drop the kinds, the caches and the kept tensors. A kind points back at
        its host, so without this the pair, and every tensor they reach (the base, the adapters), waits for
        Python's cyclic collector, which a loop over big modules (a streamed fuse) outpaces by a gigabyte."""
        for kind in self._kinds.values():
            kind.__dict__.pop("host", None)
        self._kinds.clear()
        self._kinds_changed()
        self.strategy = None
        self._originals.clear()
        self._fold_buffers.release()

    def release_buffers(self) -> None:
        """Free the buffers kept from the last fold (one weight-sized tensor per folded weight)."""
        self._fold_buffers.release()

    def base_state(self) -> dict[str, Tensor]:
        """The base module's parameters as they are unfolded (for fingerprints, and deltas that read W)."""
        return {path: self._originals.get(path, p.detach()) for path, p in self.base.named_parameters()}

    # --- state -----------------------------------------------------------------------------------------------
    def adapter_state(self, name: str) -> dict[str, Tensor]:
        self._require(name)
        return {k: v.detach() for k, v in self.adapters[name].state_dict().items()}

    def check_adapter_state(self, name: str, tensors: dict[str, Tensor]) -> None:
        """Raise unless `tensors` has exactly this adapter's keys, each with the right shape."""
        self._require(name, unfolded=True)
        own = self.adapters[name].state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise IncompatibleAdapterError(
                f"adapter {name!r} state does not fit this layer: missing {missing}, unexpected {unexpected}"
            )
        for key, target in own.items():
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise IncompatibleAdapterError(
                    f"adapter {name!r} tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                    f"this layer needs {tuple(target.shape)}"
                )

    @torch.no_grad()
    def load_adapter_state(self, name: str, tensors: dict[str, Tensor]) -> None:
        """Copy tensors in; every key must be present and every shape must match."""
        self.check_adapter_state(name, tensors)
        with torch.inference_mode(False), torch.no_grad():
            for key, target in self.adapters[name].state_dict().items():
                target.copy_(tensors[key])
        self.invalidate()

    def _require(self, name: str, unfolded: bool = False) -> None:
        if name not in self.adapters:
            raise UnknownNameError("adapter", name, self.adapters)
        if unfolded and name in self._folded:
            raise AdapterStateError(f"adapter {name!r} is folded into the base weights: unfold() first")

    # The older names (docs/architecture.md, "Words"): they still work, with a DeprecationWarning.
    merge, unmerge, merged = Renamed("fold"), Renamed("unfold"), Renamed("folded")
    merged_tensors, train_on_merged_weights = Renamed("folded_tensors"), Renamed("train_on_folded_weights")

    def extra_repr(self) -> str:
        parts = [f"{n}(w={self._weights[n]:g}{', off' if n in self._disabled else ''}"
                 f"{', folded' if n in self._folded else ''})" for n in self.adapters]
        kinds = f"kinds=[{', '.join(type(k).__name__ for k in self._kinds.values())}], "
        return kinds + "adapters=[" + ", ".join(parts) + "]"
