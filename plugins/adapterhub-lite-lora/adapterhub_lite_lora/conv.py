"""LoRA on nn.Conv1d and nn.Conv2d: a conv into `rank` channels with the base's kernel, stride, padding,
dilation, padding mode and groups, then a size-1 conv back out; B starts at zero.

With groups g the adapter is rank r per group: A has g*r output channels and
B is a grouped size-1 conv, so the merged kernel is again a grouped kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .config import LoraConfig

from .lowrank import LoraFactors, LowRankLayer


class LoraConv(LowRankLayer):
    """What LoRA on a convolution of any dimension needs; subclasses name the module type and the conv op."""

    rank_axis = 1
    route_per_group = True
    # Small convs train through W + delta built inside autograd: the adapter's rank-channel activations cost
    # more (time and memory) than the base weight's gradient (docs/benchmarks.md, training step).
    train_on_folded_weights = True
    conv: ClassVar[Callable[..., Tensor]]

    def __init__(self, base: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base)
        self.groups = base.groups

    def create(self, name: str, config: LoraConfig) -> LoraFactors:
        out_channels, in_per_group, *kernel = self.base.weight.shape
        # A: (g*r, in/g, *kernel)  B: (out, r, 1, ...)
        a_shape = (self.groups * config.rank, in_per_group, *kernel)
        return LoraFactors(a_shape, (out_channels, config.rank, *(1,) * len(kernel)), config, like=self.base.weight)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.base._conv_forward(x, weights["weight"], self.base.bias)

    def down(self, x: Tensor, a: Tensor) -> Tensor:
        return self.base._conv_forward(x, a, None)  # exactly the base's geometry and padding mode

    def up(self, h: Tensor, b: Tensor) -> Tensor:
        return type(self).conv(h, b, groups=self.groups)


class LoraConv2d(LoraConv):
    targets = (nn.Conv2d,)
    conv = staticmethod(F.conv2d)


class LoraConv1d(LoraConv):
    targets = (nn.Conv1d,)
    conv = staticmethod(F.conv1d)
