"""LoHa (FedPara / LyCORIS): delta W = (w1a @ w1b) * (w2a @ w2b) * alpha / r, on Linear and Conv2d."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .config import LohaConfig
from .weights import WeightDeltaLayer, parameter


class LohaLayer(WeightDeltaLayer):
    def create(self, name: str, config: LohaConfig) -> nn.Module:
        out, inp = self.flat_shape
        like = self.base.weight
        factors = nn.Module()
        # w1a, w2a: (out, r)  w1b, w2b: (r, in); w2b starts at zero, so the product does (PEFT's init)
        factors.hada_w1_a = parameter((out, config.rank), like, "kaiming")
        factors.hada_w1_b = parameter((config.rank, inp), like, "kaiming")
        factors.hada_w2_a = parameter((out, config.rank), like, "kaiming")
        factors.hada_w2_b = parameter((config.rank, inp), like, "zeros")
        return factors

    def delta_weight(self, name: str) -> Tensor:
        f = self.adapters[name]
        delta = (f.hada_w1_a @ f.hada_w1_b) * (f.hada_w2_a @ f.hada_w2_b) * self.configs[name].scale
        return delta.reshape(self.base.weight.shape)

    def describe(self, name: str) -> dict[str, Any]:
        config = self.configs[name]
        return {"rank": config.rank, "alpha": config.alpha}
