"""LoHa (FedPara / LyCORIS): delta W = (w1a @ w1b) * (w2a @ w2b) * alpha / r, on Linear and Conv2d (a conv's
kernel flattened, or each product a Tucker core between two factor matrices: `LohaConfig.tucker`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .config import LohaConfig
from .weights import WeightDeltaLayer, parameter, tucker_rebuild


class LohaLayer(WeightDeltaLayer):
    def create(self, name: str, config: LohaConfig) -> nn.Module:
        factors = nn.Module()
        # w2b starts at zero, so the product does (PEFT's init); the others as nn.Linear's
        for factor, shape in config.factor_shapes(tuple(self.base.weight.shape)).items():
            init = "zeros" if factor == "hada_w2_b" else "kaiming"
            setattr(factors, factor, parameter(shape, self.base.weight, init))
        return factors

    def delta_weight(self, name: str) -> Tensor:
        f = self.adapters[name]
        if hasattr(f, "hada_t1"):  # Tucker kernels: each product rebuilt from its core
            first = tucker_rebuild(f.hada_t1, f.hada_w1_a, f.hada_w1_b)
            delta = first * tucker_rebuild(f.hada_t2, f.hada_w2_a, f.hada_w2_b) * self.configs[name].scale
        else:
            delta = (f.hada_w1_a @ f.hada_w1_b) * (f.hada_w2_a @ f.hada_w2_b) * self.configs[name].scale
        return delta.reshape(self.base.weight.shape)

    def low_rank_form(self, name: str) -> tuple[Tensor, Tensor] | None:
        """On a Linear, (w1a w1b) * (w2a w2b) as one pair of rank r * r (the face-splitting product): up[:, (i,
        j)] = w1a[:, i] w2a[:, j], down[(i, j)] = w1b[i] w2b[j], so up @ down is the Hadamard product, entry for
        entry; routed batches run it as grouped products, each sample at r * r instead of a whole weight."""
        f = self.adapters[name]
        if not isinstance(self.base, nn.Linear):
            return None
        up = (f.hada_w1_a[:, :, None] * f.hada_w2_a[:, None, :]).flatten(1) * self.configs[name].scale
        return (f.hada_w1_b[:, None, :] * f.hada_w2_b[None, :, :]).flatten(0, 1), up

    def describe(self, name: str) -> dict[str, Any]:
        config = self.configs[name]
        return {"rank": config.rank, "alpha": config.alpha, **({"tucker": True} if config.tucker else {})}
