"""LoKr (LyCORIS): delta W = kron(w1, w2) * alpha / r, each factor full or a rank-r product, on Linear and
Conv2d. Output and input sizes are split into two factors each (`factorization`, LyCORIS's rule), w1 takes
the first of each, w2 the second (and, for a conv, the kernel); which factors are decomposed follows PEFT's
rules, so an adapter built from the same config has the same parameters as PEFT's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import LokrConfig
from .weights import WeightDeltaLayer, parameter


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Two numbers whose product is `dimension`, the first <= the second, as close as `factor` allows (-1:
    near the square root); LyCORIS's rule."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


class LokrLayer(WeightDeltaLayer):
    def create(self, name: str, config: LokrConfig) -> nn.Module:
        weight = self.base.weight
        out, inp = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        (a, b), (c, d) = factorization(out, config.decompose_factor), factorization(inp, config.decompose_factor)
        r = config.rank
        full_w1 = not (config.decompose_both and r < max(a, c) / 2)
        full_w2 = (r >= max(b, d) / 2) if kernel else not (r < max(b, d) / 2)
        factors = nn.Module()
        if full_w1:  # w1: (a, c), zero at first (PEFT's init: one factor zero, so the adapter starts as a no-op)
            factors.lokr_w1 = parameter((a, c), weight, "zeros")
        else:
            factors.lokr_w1_a = parameter((a, r), weight, "zeros")
            factors.lokr_w1_b = parameter((r, c), weight, "kaiming")
        if full_w2:  # w2: (b, d, *kernel)
            factors.lokr_w2 = parameter((b, d, *kernel), weight, "kaiming")
        else:
            factors.lokr_w2_a = parameter((b, r), weight, "kaiming")
            factors.lokr_w2_b = parameter((r, d * int(torch.tensor(kernel).prod()) if kernel else d), weight,
                                          "kaiming")
        return factors

    def delta_weight(self, name: str) -> Tensor:
        f = self.adapters[name]
        w1 = f.lokr_w1 if hasattr(f, "lokr_w1") else f.lokr_w1_a @ f.lokr_w1_b
        w2 = f.lokr_w2 if hasattr(f, "lokr_w2") else f.lokr_w2_a @ f.lokr_w2_b
        if w2.dim() == 4:  # a full conv factor: (b, d, kh, kw); w1 gets unit kernel axes
            w1 = w1[:, :, None, None]
        return (torch.kron(w1, w2.contiguous()) * self.configs[name].scale).reshape(self.base.weight.shape)

    def describe(self, name: str) -> dict[str, Any]:
        config = self.configs[name]
        return {"rank": config.rank, "alpha": config.alpha}
