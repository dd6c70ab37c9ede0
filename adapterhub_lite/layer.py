"""AdapterLayer: the contract a family implements, one *kind* per base module type (its math, nothing else).

The core (`host.py`'s `AdaptedModule`) stands in the model where the base module was and owns the bookkeeping:
names, weights, on/off, fold and unfold, state, several families on one module. It gives each family on the
module one kind object (`layer_class(base)`) and asks it for the math:

- **must implement**: `create` (an adapter's parameters, starting as a no-op), `delta` (its additive output
  for an input), `delta_weight` (its change to `base.weight`);
- **may override**: `delta_weights` (several weights), `folded_weights` (a fast fold into tensors the core
  hands over), `add_deltas` / `add_deltas_routed` (several adapters at once, e.g. a fused stack), `run` (the whole
  forward, for kinds that are not base(x) + deltas, like attention), `forward_with` (the base op on replaced
  weights), `describe` (per-target file metadata), `invalidate` (drop the kind's own caches), `kept_bytes`
  (what those caches hold); a kind that acts
  on the whole layer (`composes = "wraps"`) gives `wrap_forward` and `wrap_weights`; a kind may offer a
  fixed-shape path for compiled serving (`prepare_static` / `fill_static` / `static_forward` /
  `release_static`, see `forward.py`); class attributes `targets`, `composes`, and two cost hints,
  `route_per_group` and `train_on_folded_weights`;
- **reads**: `base` (the wrapped module), `adapters[name]` (what `create` made), `configs[name]`, `training`,
  and `host` (the AdaptedModule: `host.base_state()` for the unfolded weights, `host.live()`, `host.folded`).

Contract methods renamed to the project's fixed words (`_RENAMED`) still work under their old names, with a
DeprecationWarning when a kind defines one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._moved import Renamed
from .config import AdapterConfig
from .errors import AdapterStateError, PluginError
from .routing import Route

Allocate = Callable[[str, Tensor], Tensor]  # (base parameter path, the current tensor) -> a tensor to write into
# What a kind used to inherit and now reads from its host (old plugin code still works, with a warning).
_MOVED_TO_HOST = {name: name for name in ("live", "active", "weight", "base_state", "base_numel", "base_bytes",
                                          "strategy", "_originals", "_weights", "_disabled")}
_MOVED_TO_HOST.update(merged="folded", merged_tensors="folded_tensors", _merged="_folded")
# Contract names a kind may still define under their old names: old -> new.
_RENAMED = {"merged_weights": "folded_weights", "combine": "add_deltas", "combine_routed": "add_deltas_routed",
            "train_on_merged_weights": "train_on_folded_weights"}


def _old_name(new: str) -> Callable[..., Any]:
    """A contract method under its old name, as the base class had it: warns, then runs the base's method of the
    new name (a kind's old `combine` calling `super().combine` or `AdapterLayer.combine(self, ...)` gets what it
    always got; the core calls the new names, which reach any override, old-named ones included)."""
    old = next(o for o, n in _RENAMED.items() if n == new)

    def call(self: AdapterLayer, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{type(self).__name__}.{old} is now called {new}: use the new name (the old one will go)",
                      DeprecationWarning, stacklevel=2)
        return getattr(AdapterLayer, new)(self, *args, **kwargs)

    call.__name__ = old
    return call


class AdapterLayer(nn.Module):
    targets: ClassVar[tuple[type[nn.Module] | str, ...]] = ()  # classes or qualified class names
    # How this kind's adapters stack with other families' on one module: "adds" (base(x) + delta, the delta taken
    # against the base weight) or "wraps" (acts on the whole layer, base and other families' deltas alike, like
    # (IA)^3's scales: the kind gives `wrap_forward` and `wrap_weights`).
    composes: ClassVar[str] = "adds"
    # Cost hints for the forward strategies (forward.py). Under a route, run each sample group separately
    # (kinds whose op is compute-bound per sample, like convs: on folded weights for small layers at inference,
    # else each adapter's delta on its own samples); weight-bound GEMMs are cheaper with one masked pass.
    route_per_group: ClassVar[bool] = False
    # Training on small layers through W + delta built inside autograd (kinds whose adapter activations cost
    # more than the base weight gradient, like convs, may opt in; LoraConv2d.train_on_folded_weights = True).
    train_on_folded_weights: ClassVar[bool] = False
    # What the core hands a kind when it attaches it (`_attach`), plain attributes since every forward reads them:
    host: Any  # the AdaptedModule holding this kind
    adapters: nn.ModuleDict  # the module's adapters by name (what `create` made); the host owns them
    configs: dict[str, AdapterConfig]  # their configs by name

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.label = f"{type(self).__name__} (from {type(self).__module__.split('.')[0]})"  # for errors

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A kind written against the older contract names (`_RENAMED`) gets them under the new ones."""
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED.items():
            if old in cls.__dict__ and new not in cls.__dict__:
                warnings.warn(f"{cls.__qualname__}.{old}: the kind contract now calls it {new}; rename it (the old "
                              "name works for now)", DeprecationWarning, stacklevel=2)
                setattr(cls, new, cls.__dict__[old])

    def _attach(self, host: Any) -> None:
        """Called by the AdaptedModule that holds this kind; kept out of torch's module tree (no cycle, and the
        adapters stay registered once, under the host)."""
        for name, value in (("host", host), ("adapters", host.adapters), ("configs", host.configs)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            host = self.__dict__.get("host")
            if host is None and name in ("adapters", "configs"):
                raise AdapterStateError(f"this {type(self).__name__} holds no adapters by itself: wrap the base "
                                        "module in adapterhub_lite.AdaptedModule (or use AdaptedModel) and add "
                                        "adapters there") from None
            if host is None or name not in _MOVED_TO_HOST:
                raise
        new = _MOVED_TO_HOST[name]
        warnings.warn(f"{type(self).__name__}.{name}: the bookkeeping moved to the module holding the kind; use "
                      f"self.host.{new}", DeprecationWarning, stacklevel=2)
        return getattr(host, new)

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

    def folded_weights(self, weighted: list[tuple[str, float]], allocate: Allocate) -> dict[str, Tensor] | None:
        """Base tensors with these adapters folded in, computed fast, each written into `allocate(path,
        current)` (a fresh or reused tensor the core owns); None: use the generic sum. Never writes the current
        tensors (kept for a bit-exact unfold)."""
        return None

    def add_deltas(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        """`out` (the base output) plus `weight * delta` over the live adapters (out None: the sum alone);
        low-rank kinds fuse this."""
        total = out
        for name, weight in live:
            term = self.delta(name, x) * weight
            if out is not None and term.shape != out.shape:  # `out + term` would broadcast it silently
                self._refuse_shape(name, term, out)
            total = term if total is None else total + term
        assert total is not None  # forward only calls with at least one live adapter
        return total

    def _refuse_shape(self, name: str, got: Tensor, want: Tensor) -> None:
        """A kind's output of the wrong shape, as one line naming the kind, its plugin, the module and adapter."""
        raise PluginError(f"{self.label}, adapter {name!r}: its delta has shape {tuple(got.shape)} where the base "
                          f"output has {tuple(want.shape)}: a bug in the kind's delta or add_deltas; report it to the "
                          "plugin's authors")

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                       out: Tensor | None = None) -> Tensor:
        """Like `add_deltas`, but each sample gets only its own adapter's delta (`route` says which): each
        adapter's `delta` runs on its own samples alone (rows of axis `batch_dim`) and is added back at their
        places, so the work is one delta per sample however many adapters the batch names. Right for any kind
        whose delta treats samples independently; kinds with a grouped form override it (one product for all
        groups, e.g. LoRA's), a kind whose delta mixes samples must."""
        route.check_batch(x, batch_dim)
        total = out
        for name, weight in live:
            rows = route.rows(name, x.device)
            if not len(rows):
                continue
            term = self.delta(name, x.index_select(batch_dim, rows)) * weight
            if total is None:
                shape = list(term.shape)
                shape[batch_dim] = x.shape[batch_dim]
                total = term.new_zeros(shape)
            elif term.shape[:batch_dim] + term.shape[batch_dim + 1:] != total.shape[:batch_dim] + total.shape[
                    batch_dim + 1:]:
                self._refuse_shape(name, term, total)
            # in place where autograd records nothing (no output-sized copy); a copy where it does, as the
            # base op's backward may need its own output
            total = (total.index_add(batch_dim, rows, term.to(total.dtype)) if torch.is_grad_enabled()
                     else total.index_add_(batch_dim, rows, term.to(total.dtype)))
        if total is None:  # no sample runs these adapters: their deltas, all masked out
            name = live[0][0]
            total = self.delta(name, x) * route.sample_mask(name, x, batch_dim)
        return total

    def forward_with(self, weights: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """The base module's forward with some of its parameters replaced (kinds override with a direct call)."""
        return torch.func.functional_call(self.base, weights, args, kwargs, strict=False)

    def describe(self, name: str) -> dict[str, Any]:
        """Per-target hyper-parameters worth recording in file metadata."""
        return {}

    def kept_bytes(self) -> int:
        """Bytes of the copies of adapter tensors this kind keeps to run them fast (fused stacks, pools):
        counted with the adapters against a paging budget (`paging.AdapterPager`)."""
        return 0

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
        total = self.add_deltas(live, x, out=out) if route is None else self.add_deltas_routed(live, x, route, out=out)
        if isinstance(out, Tensor) and isinstance(total, Tensor) and total.shape != out.shape:
            self._refuse_shape(", ".join(n for n, _ in live), total, out)
        return total

    def invalidate(self) -> None:
        """Drop the kind's own caches derived from the adapters (called after every composition change)."""

    # The older contract names, for kinds calling them (a kind defining them is mapped by __init_subclass__).
    merged_weights = _old_name("folded_weights")
    combine = _old_name("add_deltas")
    combine_routed = _old_name("add_deltas_routed")
    train_on_merged_weights = Renamed("train_on_folded_weights")
