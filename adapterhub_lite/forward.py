"""How a wrapped module runs its forward: strategies the model handle chooses, and the policy that tunes them.

An adapted module (`host.py`) knows its adapters, and its kinds their math, not how it is being served. Its
forward asks its `strategy`; with none (a module wrapped by hand) it runs the plain way every call: `run` on
the live adapters (the base op plus their deltas). The strategies:

- `FoldedWeights`, an AdaptedModel's default: inference (no autograd, eval mode) on a layer within
  `LayerPolicy.fold_limit` runs one base-sized op on folded weights, cached until anything they depend on
  changes; training on such a layer of a kind that opts in (`train_on_folded_weights`, e.g. convs) runs
  through W + delta built inside autograd (the same gradients, no rank-sized activations kept); anything
  else runs the plain way.
- `Routed`, inside `AdaptedModel.routing(...)`: sample i runs only its own adapter.
- `Compiled`, from `AdaptedModel.compile(...)`: the kind's fixed-shape buffers, which a compiled graph reads.
  A kind offers this path by implementing `prepare_static(max_rank, fold_limit)`, `fill_static()`,
  `static_forward(...)` and `release_static()`; kinds without them (and modules holding several families)
  are refused by name.

Strategies import the module's types only; neither the module nor the kinds import this one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._moved import Renamed
from .inference_cache import InferenceCache, cache_key
from .routing import Route

if TYPE_CHECKING:
    from .host import AdaptedModule
    from .layer import AdapterLayer as Kind

Live = list[tuple[str, float]]


@dataclass(frozen=True)
class LayerPolicy:
    """The speed and memory trade-offs of every adapter layer of one model (`AdaptedModel(policy=...)`); keyword
    arguments only (the older names `merge_limit`, `keep_merge_buffers`, `merged_training` still work)."""

    # Inference on a layer with at most this many base parameter elements runs on a cached folded copy of its
    # weights (one base-sized op instead of base + adapter ops); bigger layers keep the low-rank path (their
    # relative overhead is small, and a copy would not be). 0 turns the cache off.
    fold_limit: int = 1 << 22
    # Bytes of folded weights cached per layer, as a multiple of the layer's own parameter bytes: 1.0 keeps one
    # folded copy (the steady state of serving one active set); a new active set or weight evicts the old one
    # (least recently used first). Under routing, a budget of N lets each of N adapters keep its own copy.
    cache_budget: float = 1.0
    # The folded-weight cache of the whole model, at most this fraction of its parameter bytes, or `cache_floor`
    # bytes if that is more (a small model is cached whole): the model handle admits the smallest eligible
    # layers first (the most overhead saved per byte), the others keep the low-rank path. None: no limit.
    cache_limit: float | None = 0.10
    cache_floor: int = 64 << 20
    # The inference call with one live set (adapters and weights) on which its folded weights are built. 1 (the
    # default): the first, so every call gives the same bits. 2 or more: the calls before it run the low-rank path
    # (equal to float tolerance, not bit for bit), so a switch between active sets that are used once or twice
    # each costs no fold of every layer.
    cache_after: int = 1
    # Unfold keeps the folded tensor and the next fold writes into it (no allocation), at the cost of one
    # weight-sized copy per folded weight while unfolded: for code that folds and unfolds again and again.
    keep_fold_buffers: bool = False
    # Let kinds that opt in (`train_on_folded_weights`) train small layers through W + delta.
    folded_training: bool = True

    def __init__(self, **values: Any) -> None:
        for old, new in _OLD_POLICY_NAMES.items():
            if old in values:
                warnings.warn(f"LayerPolicy({old}=...) is now LayerPolicy({new}=...): use the new name (the old "
                              "one will go)", DeprecationWarning, stacklevel=2)
                values[new] = values.pop(old)
        for spec in fields(self):
            object.__setattr__(self, spec.name, values.pop(spec.name, spec.default))
        if values:
            raise TypeError(f"LayerPolicy has no option {next(iter(values))!r}; its options: "
                            f"{', '.join(spec.name for spec in fields(self))}")
        self.__post_init__()

    def __post_init__(self) -> None:
        from .errors import ConfigError

        if isinstance(self.fold_limit, bool) or not isinstance(self.fold_limit, int) or self.fold_limit < 0:
            raise ConfigError(f"fold_limit must be a whole number >= 0, got {self.fold_limit!r}")
        if not isinstance(self.cache_budget, (int, float)) or not self.cache_budget >= 0:
            raise ConfigError(f"cache_budget must be a number >= 0, got {self.cache_budget!r}")
        limit = self.cache_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0):
            raise ConfigError(f"cache_limit must be a fraction >= 0 of the model's bytes (or None), got {limit!r}")
        if isinstance(self.cache_floor, bool) or not isinstance(self.cache_floor, int) or self.cache_floor < 0:
            raise ConfigError(f"cache_floor must be a whole number of bytes >= 0, got {self.cache_floor!r}")
        if isinstance(self.cache_after, bool) or not isinstance(self.cache_after, int) or self.cache_after < 1:
            raise ConfigError(f"cache_after must be a whole number of calls >= 1, got {self.cache_after!r}")

    def small(self, layer: AdaptedModule) -> bool:
        return layer.base_numel <= self.fold_limit

    def admitted(self, layers: list[AdaptedModule], model_bytes: int) -> set[int]:
        """Which layers (by id) may cache folded weights: those within `fold_limit`, smallest first, while their
        copies (`cache_budget` each) fit in `cache_limit` of the model's bytes (at least `cache_floor`)."""
        eligible = sorted((layer for layer in layers if self.small(layer)), key=lambda layer: layer.base_bytes)
        if self.cache_limit is None:
            return {id(layer) for layer in eligible}
        room, admitted = max(self.cache_limit * model_bytes, self.cache_floor), set()
        for layer in eligible:
            room -= self.cache_budget * layer.base_bytes
            if room < 0:
                break
            admitted.add(id(layer))
        return admitted

    # The older names, read with a DeprecationWarning.
    merge_limit, keep_merge_buffers = Renamed("fold_limit"), Renamed("keep_fold_buffers")
    merged_training = Renamed("folded_training")


_OLD_POLICY_NAMES = {"merge_limit": "fold_limit", "keep_merge_buffers": "keep_fold_buffers",
                     "merged_training": "folded_training"}


class FoldedWeights:
    """One layer's default forward: cached folded weights for inference and, where the kind opts in, folded
    weights inside autograd for training; the plain way otherwise."""

    def __init__(self, policy: LayerPolicy, admitted: bool = True) -> None:
        self.policy = policy
        self.cache = InferenceCache()
        self.admitted = admitted  # within the model's cache limit (`LayerPolicy.admitted`); else the low-rank path
        self._waiting: tuple | None = None  # the live set not folded yet (`LayerPolicy.cache_after`), its calls
        self._calls = 0

    def forward(self, layer: AdaptedModule, *args: Any, **kwargs: Any) -> Any:
        live = layer.live()
        if not live:
            return layer.base(*args, **kwargs)
        folded = self.inference_weights(layer, live)
        if folded is None and self.trains_on_folded_weights(layer, live):
            folded = layer.folded_tensors(live, differentiable=True)
        if folded is not None:
            return layer.forward_with(folded, *args, **kwargs)
        return layer.run(live, *args, **kwargs)

    def for_inference(self, layer: AdaptedModule) -> bool:
        """Inference (no autograd, eval mode) on a layer within the policy's `fold_limit` and cache limit."""
        return self.admitted and not (torch.is_grad_enabled() or layer.training) and self.policy.small(layer)

    def inference_weights(self, layer: AdaptedModule, live: Live, wait: bool = True) -> dict[str, Tensor] | None:
        """Folded base tensors for these live adapters at these weights, from a small LRU cache keyed by
        everything they depend on; None when the low-rank path must run (autograd, training, a big layer, or,
        with `wait`, a live set used fewer than `cache_after` times in a row)."""
        if not self.for_inference(layer):
            return None
        tensors = [*layer.base.parameters(), *(p for n, _ in live for p in layer.adapters[n].parameters())]
        key = cache_key(live, tensors)
        if key is None:
            return None  # a tensor made in inference mode has no version counter: a cache could go stale
        if wait and key not in self.cache and self.policy.cache_after > 1:
            self._calls = self._calls + 1 if key == self._waiting else 1
            self._waiting = key
            if self._calls < self.policy.cache_after:
                return None

        def build() -> dict[str, Tensor]:
            with torch.no_grad():
                return layer.folded_tensors(live)

        return self.cache.get_or_build(key, build, self.policy.cache_budget * layer.base_bytes)

    def trains_on_folded_weights(self, layer: AdaptedModule, live: Live) -> bool:
        """While autograd records, on a small layer of a kind that opts in; not with a live dropout (each
        adapter must drop its own input)."""
        if not (self.policy.folded_training and layer.train_on_folded_weights and torch.is_grad_enabled()):
            return False
        if not self.policy.small(layer):
            return False
        return not (layer.training and any(isinstance(m, nn.Dropout) and m.p > 0
                                           for n, _ in live for m in layer.adapters[n].modules()))

    @property
    def cache_bytes(self) -> int:
        return self.cache.nbytes

    def invalidate(self) -> None:
        self.cache.clear()


class Routed:
    """Per-sample routing for one block: each sample runs its own adapter (at its weight), whatever the active
    set. Kinds whose op is compute-bound per sample (`route_per_group`, convs) run each sample group on its
    adapter's cached folded weights when the budget holds a copy per routed adapter; otherwise the kind's
    `run` with the route (a masked pass over the whole batch, or the kind's own grouping)."""

    def __init__(self, route: Route, inner: FoldedWeights | None) -> None:
        self.route, self.inner = route, inner

    def routed(self, layer: AdaptedModule) -> Live:
        """The routed adapters this layer holds, at their weights (the active set does not apply)."""
        return layer.held(self.route.names)

    def forward(self, layer: AdaptedModule, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        routed = self.routed(layer)
        inner = self.inner
        if (routed and inner is not None and layer.route_per_group and inner.for_inference(layer)
                and len(routed) <= inner.policy.cache_budget):
            folded = [inner.inference_weights(layer, [pair], wait=False) for pair in routed]
            if all(f is not None for f in folded):  # None: a tensor without a version counter, never cached
                return self._per_group(layer, routed, folded, x, *args, **kwargs)
        return layer.run(routed, x, *args, route=self.route, **kwargs)

    def _per_group(self, layer: AdaptedModule, routed: Live, folded: list[Any], x: Tensor, *args: Any,
                   **kwargs: Any) -> Tensor:
        """Each sample group runs the base op once, on its own adapter's folded weights (batch axis 0); samples
        with no adapter here run the bare base."""
        self.route.check_batch(x, 0)
        covered = torch.zeros(len(self.route.index), dtype=torch.bool, device=x.device)
        out = None
        for (name, _), weights in zip(routed, folded):  # a routed name always has samples (the route is made of them)
            rows = self.route.rows(name, x.device)
            part = layer.forward_with(weights, x.index_select(0, rows), *args, **kwargs)
            out = part.new_empty((len(covered), *part.shape[1:])) if out is None else out
            out.index_copy_(0, rows, part)
            covered[rows] = True
        rest = (~covered).nonzero().squeeze(1)
        if rest.numel():
            part = layer.base(x.index_select(0, rest), *args, **kwargs)
            out = part.new_empty((len(covered), *part.shape[1:])) if out is None else out
            out.index_copy_(0, rest, part)
        assert out is not None
        return out

    @property
    def cache_bytes(self) -> int:
        return self.inner.cache_bytes if self.inner is not None else 0

    def invalidate(self) -> None:
        if self.inner is not None:
            self.inner.invalidate()


class Compiled:
    """The fixed-shape path a compiled graph reads (`AdaptedModel.compile`): the kind's `static_forward` on
    buffers that `fill_static` refreshes when the live set changes. `inner` is the strategy to go back to."""

    def __init__(self, kind: Kind, inner: Any) -> None:
        self.kind, self.inner = kind, inner

    def forward(self, layer: AdaptedModule, *args: Any, **kwargs: Any) -> Any:
        return self.kind.static_forward(*args, **kwargs)  # type: ignore[attr-defined]

    @property
    def cache_bytes(self) -> int:
        return getattr(self.inner, "cache_bytes", 0)

    def invalidate(self) -> None:
        if self.inner is not None:
            self.inner.invalidate()


MergedWeights = FoldedWeights  # its older name
