"""Per-sample routing: which adapter each sample of a batch runs.

A `Route` is data: `AdaptedModel.routing(names)` makes one for a block and
hands it to the routed forward strategy (`forward.py`), which passes it to
the layers' `run` and `combine_routed`. Nothing here knows a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import AdapterStateError


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

    def rows(self, name: str, device: torch.device | None = None) -> Tensor:
        """The batch positions of the samples that run `name`."""
        return (self.index.to(device) == self.names.index(name)).nonzero().squeeze(1)

    def check_batch(self, like: Tensor, batch_dim: int) -> None:
        if like.dim() <= batch_dim or like.shape[batch_dim] != len(self.index):
            raise AdapterStateError(f"the route names an adapter for {len(self.index)} samples, but this batch has "
                                    f"{like.shape[batch_dim] if like.dim() > batch_dim else 'no batch axis'}")
