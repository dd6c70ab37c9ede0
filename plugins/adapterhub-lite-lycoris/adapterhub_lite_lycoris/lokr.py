"""LoKr (LyCORIS): delta W = kron(w1, w2) * alpha / r, each factor full or a rank-r product, on Linear and
Conv2d. The factors' shapes come from the config (`LokrConfig.factor_shapes`, PEFT's and LyCORIS's layout),
so an adapter built from the same config has the same parameters as PEFT's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import LokrConfig
from .weights import WeightDeltaLayer, parameter, tucker_rebuild


class LokrLayer(WeightDeltaLayer):
    # PEFT's init: the small factor starts at zero (w1, or w1_a when w1 is decomposed), so the adapter starts as
    # a no-op; every other factor as nn.Linear's init. Drawn in the order the factors are listed.
    ZERO_AT_FIRST = ("lokr_w1", "lokr_w1_a")

    def create(self, name: str, config: LokrConfig) -> nn.Module:
        factors = nn.Module()
        for factor, shape in config.factor_shapes(tuple(self.base.weight.shape)).items():
            init = "zeros" if factor in self.ZERO_AT_FIRST else "kaiming"
            setattr(factors, factor, parameter(shape, self.base.weight, init))
        return factors

    def delta_weight(self, name: str) -> Tensor:
        f = self.adapters[name]
        w1 = f.lokr_w1 if hasattr(f, "lokr_w1") else f.lokr_w1_a @ f.lokr_w1_b
        if hasattr(f, "lokr_w2"):
            w2 = f.lokr_w2
        elif hasattr(f, "lokr_t2"):  # a Tucker kernel: (b, d, kh, kw) from its core
            w2 = tucker_rebuild(f.lokr_t2, f.lokr_w2_a, f.lokr_w2_b)
        else:
            w2 = f.lokr_w2_a @ f.lokr_w2_b
        if w2.dim() == 4:  # a full conv factor: (b, d, kh, kw); w1 gets unit kernel axes
            w1 = w1[:, :, None, None]
        return (torch.kron(w1, w2.contiguous()) * self.configs[name].scale).reshape(self.base.weight.shape)

    def describe(self, name: str) -> dict[str, Any]:
        config = self.configs[name]
        return {"rank": config.rank, "alpha": config.alpha, **({"tucker": True} if config.tucker else {})}
