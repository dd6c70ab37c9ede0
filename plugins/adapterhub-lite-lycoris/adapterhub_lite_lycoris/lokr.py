"""LoKr (LyCORIS): delta W = kron(w1, w2) * alpha / r, each factor full or a rank-r product, on Linear and
Conv2d. The factors' shapes come from the config (`LokrConfig.factor_shapes`, PEFT's and LyCORIS's layout),
so an adapter built from the same config has the same parameters as PEFT's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adapterhub_lite import Groups, Route, groupable

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

    def delta(self, name: str, x: Tensor) -> Tensor:
        """On a Linear, kron(w1, w2) x without the weight: with x split as (c, d) (X), the delta is w1 X w2^T
        flattened, each sample a few small products (kron(w1, w2)[(p, q), (i, j)] = w1[p, i] w2[q, j]); what
        routed batches run on each adapter's samples. A conv builds the weight."""
        f = self.adapters[name]
        if not isinstance(self.base, nn.Linear):
            return super().delta(name, x)
        w1 = self._w1(f)  # (a, c)
        rows = x.unflatten(-1, (w1.shape[1], -1))  # (..., c, d)
        h = rows @ f.lokr_w2.t() if hasattr(f, "lokr_w2") else (rows @ f.lokr_w2_b.t()) @ f.lokr_w2_a.t()
        return (w1 @ h).flatten(-2) * self.configs[name].scale  # (..., a, b) -> (..., a * b)

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                          out: Tensor | None = None) -> Tensor:
        """On a Linear, every group at once: the samples laid out by adapter (G groups of the widest group's
        size), each adapter's w1 (scaled by its weight and alpha / r) and w2 stacked, and w1 X w2^T as two
        batched products. Where the factors' shapes differ between the adapters, the groups are very uneven, or
        autograd records, each adapter's delta runs on its own samples."""
        params = [p for name, _ in live for p in self.adapters[name].parameters()]
        if isinstance(self.base, nn.Linear) and groupable(x, batch_dim, params):
            plan = route.groups([name for name, _ in live])
            factors = [self._kron_factors(name) for name, _ in live]
            if len({(w1.shape, w2.shape) for w1, w2 in factors}) == 1 and plan.padded_rows <= 4 * len(plan.order):
                route.check_batch(x, batch_dim)
                return self._grouped_kron(x, plan, live, factors, out)
        return super().add_deltas_routed(live, x, route, batch_dim, out)

    @staticmethod
    def _w1(f: nn.Module) -> Tensor:
        """The small factor (a, c), the product of its pair where it is decomposed."""
        return f.lokr_w1 if hasattr(f, "lokr_w1") else f.lokr_w1_a @ f.lokr_w1_b

    def _kron_factors(self, name: str) -> tuple[Tensor, Tensor]:
        """w1 (a, c) and w2 (b, d) of a Linear's adapter, products of decomposed factors taken."""
        f = self.adapters[name]
        return self._w1(f), (f.lokr_w2 if hasattr(f, "lokr_w2") else f.lokr_w2_a @ f.lokr_w2_b)

    def _grouped_kron(self, x: Tensor, plan: Groups, live: list[tuple[str, float]],
                      factors: list[tuple[Tensor, Tensor]], out: Tensor | None) -> Tensor:
        total = x.new_zeros(*x.shape[:-1], self.base.weight.shape[0]) if out is None else out
        if not len(plan.order):
            return total
        order, slot = plan.order.to(x.device), plan.slot.to(x.device)
        (a, c), (b, d) = factors[0][0].shape, factors[0][1].shape
        w1 = torch.stack([w1 * (self.configs[name].scale * weight) for (name, weight), (w1, _) in zip(live, factors)])
        w2 = torch.stack([w2 for _, w2 in factors]).to(x.dtype)
        rows = x.index_select(0, order).reshape(len(order), -1, c, d)  # (K, tokens, c, d)
        layout = rows.new_zeros(plan.padded_rows, *rows.shape[1:]).index_copy_(0, slot, rows)
        layout = layout.view(len(live), -1, c, d)  # (G, widest * tokens, c, d)
        product = w1.to(x.dtype)[:, None] @ (layout @ w2.transpose(1, 2)[:, None])  # (G, widest * tokens, a, b)
        product = product.view(plan.padded_rows, -1, a * b).index_select(0, slot)
        return total.index_add_(0, order, product.view(len(order), *x.shape[1:-1], a * b))

    def delta_weight(self, name: str) -> Tensor:
        f = self.adapters[name]
        w1 = self._w1(f)
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
