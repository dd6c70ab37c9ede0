"""LoRA on nn.Conv1d and nn.Conv2d: a conv into `rank` channels with the base's kernel, stride, padding,
dilation, padding mode and groups, then a size-1 conv back out; B starts at zero.

With groups g the adapter is rank r per group: A has g*r output channels and
B is a grouped size-1 conv, so the merged kernel is again a grouped kernel.

Under per-sample routing (a conv without groups, batched input) the routed samples
run as one conv with each sample's own A as its kernel, then one batched product
with each sample's B (`grouped_conv_low_rank`): two calls whatever the number of
adapters the batch names, each sample at its own adapter's rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import Route, grouped_conv_low_rank

from .config import LoraConfig
from .lowrank import LoraFactors, LowRankLayer, stack_key


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

    def conv_with_groups(self, x: Tensor, kernel: Tensor, groups: int) -> Tensor:
        """The base's conv geometry (stride, padding and its mode, dilation) with this kernel and groups, no bias."""
        base, padding = self.base, self.base.padding
        if base.padding_mode != "zeros":
            x, padding = F.pad(x, base._reversed_padding_repeated_twice, mode=base.padding_mode), 0
        return type(self).conv(x, kernel, None, base.stride, padding, base.dilation, groups)

    def _routed_gather(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                       route: Route, batch_dim: int) -> Tensor:
        """The routed samples in one conv, a kernel per sample (`grouped_conv_low_rank`), where the layer has no
        groups and the batch is first; each adapter on its own samples otherwise."""
        if self.groups != 1 or batch_dim != 0 or x.dim() != self.base.weight.dim():
            return super()._routed_gather(x, live, pairs, route, batch_dim)
        route.check_batch(x, batch_dim)
        down, up = self._conv_stacks(pairs)
        weights = (None if all(w == 1.0 for _, w in pairs)
                   else torch.tensor([w for _, w in pairs], dtype=x.dtype, device=x.device))
        return grouped_conv_low_rank(x, route.groups([n for n, _ in live]), down, up, weights, self.conv_with_groups)

    def _conv_stacks(self, pairs: list[tuple[LoraFactors, float]]) -> tuple[Tensor, Tensor]:
        """The adapters' A's (G, R, C, *kernel) and scaled B's (G, out, R), zero-padded to the largest rank R;
        kept for inference until a factor changes (the fused stack's key), fresh while autograd records."""
        recording = torch.is_grad_enabled() and any(p.requires_grad for f, _ in pairs for p in (f.lora_A, f.lora_B))
        inference = any(p.is_inference() for f, _ in pairs for p in (f.lora_A, f.lora_B))
        key = None if recording or inference else ("conv-grouped", stack_key([(f, 1.0) for f, _ in pairs]))
        hit = self._stacks.get("conv-grouped")
        if key is not None and hit is not None and hit[0] == key:
            return hit[1]
        rank = max(f.lora_A.shape[0] for f, _ in pairs)
        with torch.set_grad_enabled(recording):
            down = torch.stack([torch.cat([f.lora_A, f.lora_A.new_zeros(rank - f.lora_A.shape[0], *f.lora_A.shape[1:])])
                                for f, _ in pairs])
            up = torch.stack([torch.cat([f.lora_B.flatten(1) * f.scale,
                                         f.lora_B.new_zeros(f.lora_B.shape[0], rank - f.lora_B.shape[1])], 1)
                              for f, _ in pairs])
        if key is not None:
            self._stacks["conv-grouped"] = (key, (down, up))
        return down, up


class LoraConv2d(LoraConv):
    targets = (nn.Conv2d,)
    conv = staticmethod(F.conv2d)


class LoraConv1d(LoraConv):
    targets = (nn.Conv1d,)
    conv = staticmethod(F.conv1d)
