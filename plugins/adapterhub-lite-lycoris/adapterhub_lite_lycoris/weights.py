"""What LoHa and LoKr layers share: a delta that is a whole weight, built from factors, applied by the base op.

Neither is a low-rank product (a Hadamard or Kronecker product of low-rank factors has full rank), so the
delta is built as a weight and run through the base module's own op: a Linear's `F.linear`, a Conv2d's conv
with its stride, padding, dilation and groups. A Conv2d's kernel is handled flattened (out, in/groups*kh*kw),
as PEFT's and LyCORIS's default layout is, or as a Tucker core (`tucker_rebuild`) where the config says so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import AdapterLayer


def kaiming_(tensor: Tensor) -> Tensor:
    """nn.Linear's own init, as LyCORIS and PEFT use for these factors."""
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def parameter(shape: tuple[int, ...], like: Tensor, init: str) -> nn.Parameter:
    """A factor in float32 first (the same draw for every dtype), then in the base weight's dtype."""
    t = torch.empty(shape, dtype=torch.float32, device=like.device)
    kaiming_(t) if init == "kaiming" else nn.init.zeros_(t)
    return nn.Parameter(t.to(like.dtype))


def tucker_rebuild(core: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """A Tucker-decomposed kernel: core (r, r, kh, kw) with factor matrices wa (r, out) and wb (r, in) gives
    (out, in, kh, kw), W[p, q] = sum_ij core[i, j] wa[i, p] wb[j, q] (LyCORIS's and PEFT's rebuild)."""
    return torch.einsum("ij...,ip,jq->pq...", core, wa, wb)


class WeightDeltaLayer(AdapterLayer):
    """Base for kinds whose delta is a whole weight: subclasses give `create` and `delta_weight`."""

    targets = (nn.Linear, nn.Conv2d)

    @property
    def flat_shape(self) -> tuple[int, int]:
        """The base weight as a matrix: (out, in) for Linear, (out, in/groups*kh*kw) for Conv2d."""
        weight = self.base.weight
        return weight.shape[0], weight[0].numel()

    def delta(self, name: str, x: Tensor) -> Tensor:
        return self.apply_weight(self.delta_weight(name), x)

    def add_deltas(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        """A stack in one op: the weighted delta weights summed first (each is a whole weight), then one base op,
        instead of one op per adapter."""
        if len(live) == 1:
            name, weight = live[0]
            term = self.delta(name, x) * weight
        else:
            term = self.apply_weight(sum(self.delta_weight(n) * w for n, w in live), x)
        return term if out is None else out + term

    def apply_weight(self, weight: Tensor, x: Tensor) -> Tensor:
        """The base op with `weight` and no bias."""
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weight, None)
        return F.linear(x, weight)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weights["weight"], self.base.bias)
        return F.linear(x, weights["weight"], self.base.bias)
