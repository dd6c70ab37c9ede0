"""Per-sample routing: in one forward, sample i of a batch runs only the adapter named for it.

`AdaptedModel.routing(names)` sets a `Route` on every adapter layer for the
duration of a block; a layer with a route calls `forward_routed` here instead
of its ordinary forward. Layers whose op is compute-bound per sample (convs:
`route_per_group`) run each sample group separately, on its adapter's cached
merged weights when the cache budget holds a copy per routed adapter;
otherwise the layer's `combine_routed` masks each sample to its own adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import AdapterStateError

if TYPE_CHECKING:
    from .layer import AdapterLayer


@dataclass(frozen=True)
class Route:
    """Per-sample adapter choice for one batch: sample i runs `names[index[i]]` only (-1: the bare base)."""

    names: tuple[str, ...]
    index: Tensor  # (N,) long

    @classmethod
    def of(cls, per_sample: Sequence[str | None]) -> Route:
        names = tuple(dict.fromkeys(n for n in per_sample if n))
        index = torch.tensor([names.index(n) if n else -1 for n in per_sample], dtype=torch.long)
        return cls(names, index)

    def sample_mask(self, name: str, like: Tensor, batch_dim: int = 0) -> Tensor:
        """1.0 for the samples that run `name`, shaped to broadcast over `like` along its batch axis."""
        self.check_batch(like, batch_dim)
        mask = (self.index == self.names.index(name)).to(device=like.device, dtype=like.dtype)
        shape = [1] * like.dim()
        shape[batch_dim] = -1
        return mask.view(shape)

    def check_batch(self, like: Tensor, batch_dim: int) -> None:
        if like.dim() <= batch_dim or like.shape[batch_dim] != len(self.index):
            raise AdapterStateError(f"the route names an adapter for {len(self.index)} samples, but this batch has "
                                    f"{like.shape[batch_dim] if like.dim() > batch_dim else 'no batch axis'}")


def routed_adapters(layer: AdapterLayer) -> list[tuple[str, float]]:
    """The routed adapters this layer holds, at their weights (the active set does not apply under a route)."""
    assert layer.route is not None
    return [(n, layer.weight(n)) for n in layer.route.names if n in layer.adapters and layer.weight(n) != 0.0]


def forward_routed(layer: AdapterLayer, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    routed = routed_adapters(layer)
    if (routed and layer.route_per_group and layer.small_for_inference()
            and len(routed) <= layer.inference_cache_budget):
        return _per_group_on_merged_weights(layer, routed, x, *args, **kwargs)
    out = layer.base(x, *args, **kwargs)
    return layer.combine_routed(routed, x, out=out) if routed else out


def _per_group_on_merged_weights(layer: AdapterLayer, routed: list[tuple[str, float]], x: Tensor, *args: Any,
                                 **kwargs: Any) -> Tensor:
    """Each sample group runs the base op once, on its own adapter's merged weights (batch axis 0); samples
    with no adapter here run the bare base."""
    route = layer.route
    assert route is not None
    route.check_batch(x, 0)
    index = route.index.to(x.device)
    covered = torch.zeros(len(index), dtype=torch.bool, device=x.device)
    out = None
    for name, weight in routed:  # a routed name always has samples: the route is built from them
        rows = (index == route.names.index(name)).nonzero().squeeze(1)
        merged = layer.inference_weights([(name, weight)])
        assert merged is not None  # forward_routed checked the layer is small and in inference
        part = layer.forward_with(merged, x.index_select(0, rows), *args, **kwargs)
        if out is None:
            out = part.new_empty((len(index), *part.shape[1:]))
        out.index_copy_(0, rows, part)
        covered[rows] = True
    rest = (~covered).nonzero().squeeze(1)
    if rest.numel():
        part = layer.base(x.index_select(0, rest), *args, **kwargs)
        if out is None:
            out = part.new_empty((len(index), *part.shape[1:]))
        out.index_copy_(0, rest, part)
    assert out is not None
    return out
