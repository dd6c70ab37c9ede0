"""Per-sample routing: which adapter each sample of a batch runs.

A `Route` is data: `AdaptedModel.routing(names)` makes one for a block and
hands it to the routed forward strategy (`forward.py`), which passes it to
the layers' `run` and `combine_routed`. Nothing here knows a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import AdapterStateError


@dataclass(frozen=True)
class Groups:
    """The samples of a batch grouped by the adapter they run, for grouped products: computed once per route
    and live set, so every layer with those adapters shares it (a layer only moves rows by it)."""

    order: Tensor  # (K,) the samples that run a live adapter, sorted by it (stable)
    counts: Tensor  # (G,) samples per live adapter, in live order (zero for one no sample runs)
    slot: Tensor  # (K,) where order[k] sits in a (G, widest) layout: group * widest + its place in the group
    widest: int  # the largest group

    @property
    def padded_rows(self) -> int:
        """Rows of the (G, widest) layout: the work a batched product over equal groups does."""
        return len(self.counts) * self.widest


@dataclass(frozen=True)
class Route:
    """Per-sample adapter choice for one batch: sample i runs `names[index[i]]` only (-1: the bare base)."""

    names: tuple[str, ...]
    index: Tensor  # (N,) long
    _groups: dict = field(default_factory=dict, compare=False, repr=False)  # live names -> Groups

    @classmethod
    def of(cls, per_sample: Sequence[str | None]) -> Route:
        names = tuple(sorted({n for n in per_sample if n}))  # sorted: the same set, the same kept stacks
        index = torch.tensor([names.index(n) if n else -1 for n in per_sample], dtype=torch.long)
        return cls(names, index)

    def sample_mask(self, name: str, like: Tensor, batch_dim: int = 0) -> Tensor:
        """1.0 for the samples that run `name`, shaped to broadcast over `like` along its batch axis."""
        self.check_batch(like, batch_dim)
        mask = (self.index == self.names.index(name)).to(device=like.device, dtype=like.dtype)
        shape = [1] * like.dim()
        shape[batch_dim] = -1
        return mask.view(shape)

    def rows(self, name: str, device: torch.device | None = None) -> Tensor:
        """The batch positions of the samples that run `name`."""
        return (self.index.to(device) == self.names.index(name)).nonzero().squeeze(1)

    def groups(self, live: Sequence[str]) -> Groups:
        """The batch grouped by the adapters in `live` (in that order); samples of none of them are left out."""
        key = tuple(live)
        hit = self._groups.get(key)
        if hit is not None:
            return hit
        position = torch.full((len(self.names) + 1,), -1, dtype=torch.long)  # route index -1 reads the last
        for i, name in enumerate(key):
            if name in self.names:
                position[self.names.index(name)] = i
        group = position[self.index]
        kept = (group >= 0).nonzero().squeeze(1)
        order = kept[torch.argsort(group[kept], stable=True)]
        counts = torch.bincount(group[order], minlength=len(key))
        widest = int(counts.max()) if len(order) else 0
        sorted_group = group[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = sorted_group * widest + torch.arange(len(order)) - starts[sorted_group]
        self._groups[key] = plan = Groups(order, counts, slot, widest)
        return plan

    def check_batch(self, like: Tensor, batch_dim: int) -> None:
        if like.dim() <= batch_dim or like.shape[batch_dim] != len(self.index):
            raise AdapterStateError(f"the route names an adapter for {len(self.index)} samples, but this batch has "
                                    f"{like.shape[batch_dim] if like.dim() > batch_dim else 'no batch axis'}")
