"""AdapterLayer: one wrapped base module holding any number of named adapters.

The base class owns composition (names, weights, enable/disable, merge
bookkeeping); a plugin subclass owns the math. The contract, in three parts:

- **must implement**: `create` (an adapter's parameters, starting as a no-op),
  `delta` (its additive output for an input), `delta_weight` (its change to
  `base.weight`);
- **may override**: `delta_weights` (several weights), `merged_weights` (a
  fast merge into a tensor the core hands over), `combine` / `combine_routed`
  (several adapters at once, e.g. a fused stack), `forward_with` (the base op
  on replaced weights), `describe` (per-target file metadata), `invalidate`
  (drop the plugin's own caches), `prepare_static` / `fill_static` /
  `static_forward` / `release_static` (a fixed-shape path for compiled
  serving, see `forward.py`); `run` (the whole forward, for kinds that are
  not base(x) + deltas, like attention); class attributes `targets`,
  `composes`, and two cost hints, `route_per_group`, `train_on_merged_weights`;
  a kind that acts on the whole layer (`composes = "wraps"`) gives
  `wrap_forward` and `wrap_weights`;
- **provided**: `add`, `remove`, `set_weight`, `enable`, `disable`, `weight`,
  `active`, `live`, `forward`, `merge`, `unmerge`, `merged`, `bake`,
  `release_buffers`, `base_state`, `adapter_state`, `check_adapter_state`,
  `load_adapter_state`, `merged_tensors`, `layer_of`.

Exactness rules, enforced here once for every kind:

- an adapter that is disabled or at weight 0 is skipped, so with no live
  adapter the output *is* `base(x)`: bit-identical;
- `merge` keeps the original weight tensor and swaps in a new merged one;
  `unmerge` swaps the original back: bit-exact, never a subtraction. The cost
  is one extra copy of each merged weight while merged (none when unmerged).

How a forward is served is not the layer's business: its `strategy` (set by
the model handle, see `forward.py`: cached merged weights, per-sample
routing, compiled) decides, and with none the layer runs `run` on its live
adapters. The strategies import this module; this module imports none of
them. Adapters of several families on one module live in a `MixedLayer`
(`mixed.py`), which composes the families' own layers by `composes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .buffers import MergeBuffers, empty_weight_like
from .config import AdapterConfig
from .errors import AdapterStateError, IncompatibleAdapterError, PluginError, UnknownNameError, UnsupportedModuleError
from .routing import Route

Allocate = Callable[[str, Tensor], Tensor]  # (base parameter path, the current tensor) -> a tensor to write into


class AdapterDict(nn.ModuleDict):
    """The adapters of a layer by name. Any name the zoo allows is a key, also one that is an attribute of a
    torch module ("half", "train", "to"): ModuleDict would refuse those, but they are only ever looked up as
    keys here."""

    def __setitem__(self, key: str, module: nn.Module) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"adapter name {key!r} cannot name a module")
        self._modules[key] = module


class AdapterLayer(nn.Module):
    targets: ClassVar[tuple[type[nn.Module] | str, ...]] = ()  # classes or qualified class names
    # How this kind's adapters stack with other families' on one module: "adds" (base(x) + delta, the delta taken
    # against the base weight) or "wraps" (acts on the whole layer, base and other families' deltas alike, like
    # (IA)^3's scales: the kind gives `wrap_forward` and `wrap_weights`).
    composes: ClassVar[str] = "adds"
    # Cost hints for the forward strategies (forward.py). Under a route, run each sample group separately
    # (kinds whose op is compute-bound per sample, like convs: on merged weights for small layers at inference,
    # else each adapter's delta on its own samples); weight-bound GEMMs are cheaper with one masked pass.
    route_per_group: ClassVar[bool] = False
    # Training on small layers through W + delta built inside autograd (kinds whose adapter activations cost
    # more than the base weight gradient, like convs, may opt in; LoraConv2d.train_on_merged_weights = True).
    train_on_merged_weights: ClassVar[bool] = False

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.adapters = AdapterDict().train(base.training)
        self.configs: dict[str, AdapterConfig] = {}
        self._weights: dict[str, float] = {}
        self._disabled: set[str] = set()
        self._merged: dict[str, float] = {}  # name -> weight it was merged at
        self._originals: dict[str, Tensor] = {}  # base parameter path -> unmerged tensor
        self._merge_buffers = MergeBuffers()  # what a merge writes into (kept across unmerge only if asked)
        self.strategy: Any = None  # how forward is served (forward.py), set by the model handle; None: `run`
        # who this is, for errors: the model handle says which kind, plugin and module
        self.label = f"{type(self).__name__} (from {type(self).__module__.split('.')[0]})"
        self.base_numel = sum(p.numel() for p in base.parameters())  # merging swaps tensors, never shapes
        self.base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
        self.train(base.training)  # a wrapper made on an eval-mode model stays in eval mode (no adapter dropout)

    # --- must implement ---------------------------------------------------------------
    def create(self, name: str, config: AdapterConfig) -> nn.Module:
        """Build the adapter's parameters so that it starts as a no-op (e.g. B zero)."""
        raise NotImplementedError

    def delta(self, name: str, x: Tensor) -> Tensor:
        """The adapter's additive output for input x, not yet scaled by the user weight."""
        raise NotImplementedError

    def delta_weight(self, name: str) -> Tensor:
        """The adapter's change to `base.weight`, shaped like it."""
        raise NotImplementedError

    # --- may override ------------------------------------------------------------------
    def delta_weights(self, name: str) -> dict[str, Tensor]:
        """Changes per base parameter path; override when a layer changes several weights."""
        return {"weight": self.delta_weight(name)}

    def merged_weights(self, weighted: list[tuple[str, float]], allocate: Allocate) -> dict[str, Tensor] | None:
        """Base tensors with these adapters folded in, computed fast, each written into `allocate(path,
        current)` (a fresh or reused tensor the core owns); None: use the generic sum. Never writes the current
        tensors (kept for a bit-exact unmerge)."""
        return None

    def combine(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        """`out` (the base output) plus `weight * delta` over the live adapters (out None: the sum alone);
        low-rank kinds fuse this."""
        total = out
        for name, weight in live:
            term = self.delta(name, x) * weight
            if out is not None and term.shape != out.shape:  # `out + term` would broadcast it silently
                self.refuse_shape(name, term, out)
            total = term if total is None else total + term
        assert total is not None  # forward only calls with at least one live adapter
        return total

    def refuse_shape(self, name: str, got: Tensor, want: Tensor) -> None:
        """A kind's output of the wrong shape, as one line naming the kind, its plugin, the module and adapter."""
        raise PluginError(f"{self.label}, adapter {name!r}: its delta has shape {tuple(got.shape)} where the base "
                          f"output has {tuple(want.shape)}: a bug in the kind's delta or combine; report it to the "
                          "plugin's authors")

    def combine_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                       out: Tensor | None = None) -> Tensor:
        """Like `combine`, but each sample gets only its own adapter's delta (`route` says which); low-rank
        kinds fuse this."""
        total = out
        for name, weight in live:
            term = self.delta(name, x) * (route.sample_mask(name, x, batch_dim) * weight)
            total = term if total is None else total + term
        assert total is not None
        return total

    def forward_with(self, weights: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """The base module's forward with some of its parameters replaced (kinds override with a direct call)."""
        return torch.func.functional_call(self.base, weights, args, kwargs, strict=False)

    def describe(self, name: str) -> dict[str, Any]:
        """Per-target hyper-parameters worth recording in file metadata."""
        return {}

    def wrap_forward(self, live: list[tuple[str, float]], x: Tensor, *args: Any, inner: Callable[..., Any],
                     **kwargs: Any) -> Any:
        """("wraps" kinds) The layer's output with these adapters around `inner`, which runs everything inside
        them (the base, and other families' deltas)."""
        raise NotImplementedError(f"{type(self).__name__} composes by {self.composes!r}, not 'wraps'")

    def wrap_weights(self, weighted: list[tuple[str, float]], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """("wraps" kinds) These base tensors (other families' deltas already in) with these adapters applied:
        the changed ones, as new tensors."""
        raise NotImplementedError(f"{type(self).__name__} composes by {self.composes!r}, not 'wraps'")

    def run(self, live: list[tuple[str, float]], x: Tensor, *args: Any, route: Route | None = None,
            **kwargs: Any) -> Any:
        """The plain forward with these live adapters: the base op plus their deltas (under a `route`, each
        sample's own adapter only). Kinds whose output is not base + deltas (attention) override it."""
        out = self.base(x, *args, **kwargs)
        if not live:
            return out
        total = self.combine(live, x, out=out) if route is None else self.combine_routed(live, x, route, out=out)
        if isinstance(out, Tensor) and isinstance(total, Tensor) and total.shape != out.shape:
            self.refuse_shape(", ".join(n for n, _ in live), total, out)
        return total

    def layer_of(self, name: str) -> AdapterLayer:
        """The layer whose math runs adapter `name`: this one (a MixedLayer answers with the family's own)."""
        self._require(name)
        return self

    def invalidate(self) -> None:
        """Drop caches derived from the adapters (called after every composition change)."""
        if self.strategy is not None:
            self.strategy.invalidate()

    # --- provided: merged tensors -----------------------------------------------------------
    def merged_tensors(self, weighted: list[tuple[str, float]], allocate: Allocate | None = None, *,
                       differentiable: bool = False) -> dict[str, Tensor]:
        """Base tensors with these adapters folded in at these weights (fresh tensors unless `allocate` hands
        out others); the current tensors stay untouched. `differentiable`: the generic sum, built inside
        autograd (training through merged weights)."""
        if differentiable:
            return self._summed(weighted)
        fast = self.merged_weights(weighted, allocate or (lambda path, current: empty_weight_like(current)))
        return fast if fast is not None else self._summed(weighted)

    def _summed(self, weighted: list[tuple[str, float]]) -> dict[str, Tensor]:
        """W + sum(weight * delta), accumulated in float32; differentiable in the adapters when autograd records
        (the base is read detached: it stays frozen)."""
        totals: dict[str, Tensor] = {}
        for name, weight in weighted:
            for path, delta in self.delta_weights(name).items():
                scaled = delta.float() * weight
                totals[path] = scaled if path not in totals else totals[path] + scaled
        out = {}
        for path, delta in totals.items():
            param = self.base.get_parameter(path)
            out[path] = (param.detach().float() + delta).to(param.dtype)
        return out

    # --- provided: composition -----------------------------------------------------------
    def add(self, name: str, config: AdapterConfig) -> None:
        if name in self.adapters:
            raise AdapterStateError(f"layer already has an adapter named {name!r}: delete it first or pick another name")
        created = self.create(name, config)
        buffers = [key for key, _ in created.named_buffers()]
        if buffers:  # files, merges and state dicts carry an adapter's parameters: a buffer would be lost
            raise UnsupportedModuleError(
                f"{type(self).__name__}.create made adapter {name!r} with buffers ({', '.join(buffers[:3])}): adapter "
                "files and merges keep parameters only; make them nn.Parameter(requires_grad=False), or compute "
                "them from the config")
        self.adapters[name] = created.train(self.training)  # follows the model's mode
        self.configs[name] = config
        self._weights[name] = 1.0
        self.invalidate()

    def remove(self, name: str) -> None:
        self._require(name, unmerged=True)
        del self.adapters[name]
        del self.configs[name], self._weights[name]
        self._disabled.discard(name)
        self.invalidate()

    def set_weight(self, name: str, weight: float) -> None:
        self._require(name, unmerged=True)
        weight = float(weight)
        if not math.isfinite(weight):
            raise AdapterStateError(f"weight for adapter {name!r} must be finite, got {weight}")
        self._weights[name] = weight  # caches are keyed by the live set and its weights: nothing to drop

    def enable(self, *names: str) -> None:
        for name in names:
            self._require(name, unmerged=True)
            self._disabled.discard(name)

    def disable(self, *names: str) -> None:
        for name in names:
            self._require(name, unmerged=True)
            self._disabled.add(name)

    def weight(self, name: str) -> float:
        self._require(name)
        return self._weights[name]

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(n for n in self.adapters if n not in self._disabled)

    def live(self) -> list[tuple[str, float]]:
        """Adapters the forward must compute: enabled, not merged, non-zero weight."""
        return [(n, self._weights[n]) for n in self.active if n not in self._merged and self._weights[n] != 0.0]

    # --- provided: forward ---------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Served by the strategy the model handle set (forward.py); without one, `run` on the live adapters."""
        if self.strategy is not None:
            return self.strategy.forward(self, *args, **kwargs)
        return self.run(self.live(), *args, **kwargs)

    # --- provided: merge ------------------------------------------------------------------
    @property
    def merged(self) -> tuple[str, ...]:
        return tuple(self._merged)

    @torch.no_grad()
    def merge(self, *names: str) -> None:
        """Fold adapters (default: the live ones) into the base weights at their weights."""
        if not names:
            names = tuple(n for n, _ in self.live())
        for name in names:
            self._require(name, unmerged=True)
            if name in self._disabled:
                raise AdapterStateError(f"adapter {name!r} is disabled: enable it before merging it")
        weighted = [(n, self._weights[n]) for n in names if self._weights[n] != 0.0]
        merged = self.merged_tensors(weighted, self._merge_buffers.take) if weighted else {}
        for path, tensor in merged.items():
            param = self.base.get_parameter(path)
            self._originals.setdefault(path, param.data)
            param.data = tensor
        for name in names:
            self._merged[name] = self._weights[name]
        self.invalidate()

    @torch.no_grad()
    def unmerge(self, keep_buffers: bool = False) -> None:
        """Put the original base tensors back: bit-exact. With `keep_buffers` the merged tensor is kept for the
        next merge to write into (no allocation then, see buffers.py; a kept buffer is reused only while
        nothing else references its memory); `release_buffers()` frees it."""
        for path, original in self._originals.items():
            param = self.base.get_parameter(path)
            if keep_buffers:
                self._merge_buffers.keep(path, param.data)
            param.data = original
        self._originals.clear()
        self._merged.clear()
        self.invalidate()

    def bake(self) -> None:
        """Make merged changes permanent: forget the originals (frees their memory)."""
        self._originals.clear()
        self._merge_buffers.release()

    def release_buffers(self) -> None:
        """Free the buffers kept from the last merge (one weight-sized tensor per merged weight)."""
        self._merge_buffers.release()

    def base_state(self) -> dict[str, Tensor]:
        """The base module's parameters as they are unmerged (for fingerprints)."""
        return {path: self._originals.get(path, p.detach()) for path, p in self.base.named_parameters()}

    # --- provided: state -------------------------------------------------------------------
    def adapter_state(self, name: str) -> dict[str, Tensor]:
        self._require(name)
        return {k: v.detach() for k, v in self.adapters[name].state_dict().items()}

    def check_adapter_state(self, name: str, tensors: dict[str, Tensor]) -> None:
        """Raise unless `tensors` has exactly this adapter's keys, each with the right shape."""
        self._require(name, unmerged=True)
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
        for key, target in self.adapters[name].state_dict().items():
            target.copy_(tensors[key])
        self.invalidate()

    def _require(self, name: str, unmerged: bool = False) -> None:
        if name not in self.adapters:
            raise UnknownNameError("adapter", name, self.adapters)
        if unmerged and name in self._merged:
            raise AdapterStateError(f"adapter {name!r} is merged into the base weights: unmerge() first")

    def extra_repr(self) -> str:
        parts = [f"{n}(w={self._weights[n]:g}{', off' if n in self._disabled else ''}"
                 f"{', merged' if n in self._merged else ''})" for n in self.adapters]
        return "adapters=[" + ", ".join(parts) + "]"
