"""LoRA on nn.Linear: y = W x + b + scale * B (A dropout(x))."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import Route

from .config import LoraConfig
from .lowrank import LoraFactors, LowRankLayer, addmm_up, stack_key
from .pool import FactorPool

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what grouped_mm runs on the CPU


class LoraLinear(LowRankLayer):
    targets = (nn.Linear,)
    _pool: FactorPool | None = None  # made on the first routed call

    def create(self, name: str, config: LoraConfig) -> LoraFactors:
        out_features, in_features = self.base.weight.shape
        # A: (r, in)  B: (out, r)
        return LoraFactors((config.rank, in_features), (out_features, config.rank), config, like=self.base.weight)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return F.linear(x, weights["weight"], self.base.bias)

    def down(self, x: Tensor, a: Tensor) -> Tensor:
        if x.dim() == 2 and not torch.is_grad_enabled():
            # A (x^T), read back transposed: the same product, but BLAS runs this thin GEMM ~1.5-2x faster
            return torch.mm(a, x.t()).t()
        return F.linear(x, a)

    def up(self, h: Tensor, b: Tensor) -> Tensor:
        return F.linear(h, b)

    def routed_grouped(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                       route: Route, batch_dim: int, out: Tensor | None = None) -> Tensor | None:
        """`out` (None: zeros) plus the routed delta, added in place. Samples grouped by adapter (the route's
        grouping, shared by every layer), each through its own adapter's A and B only, at that adapter's rank
        (factors zero-padded to the largest), so the adapter cost does not grow with the number of adapters in
        the batch (the masked stack runs every sample at the summed rank). Groups of about equal size run as two
        batched GEMMs over a (G, widest) layout; uneven ones as two grouped GEMMs (torch's `grouped_mm`), which
        loop over the groups. None while autograd records (neither has a CPU backward here), for a batch axis
        other than the first, or where torch has no grouped_mm; samples of no live adapter get no delta."""
        grouped_mm = getattr(F, "grouped_mm", None)
        if (grouped_mm is None or batch_dim != 0 or x.dim() < 2 or x.dtype not in _GROUPED_DTYPES
                or (torch.is_grad_enabled() and (x.requires_grad or any(
                    f.lora_A.requires_grad or f.lora_B.requires_grad for f, _ in pairs)))):
            return None
        route.check_batch(x, batch_dim)
        plan = route.groups([name for name, _ in live])
        out_features, in_features = pairs[0][0].lora_B.shape[0], x.shape[-1]
        total = x.new_zeros(*x.shape[:-1], out_features) if out is None else out
        if not len(plan.order):
            return total
        unit = 16 // x.element_size()  # grouped_mm wants every row stride a multiple of 16 bytes: pad with zeros

        def padded(n: int) -> int:
            return -(-n // unit) * unit

        a, b, weights = self._grouped_factors(pairs, x, padded)
        order = plan.order.to(x.device)
        tokens = x[0].numel() // in_features  # per sample
        rows = x.index_select(0, order).reshape(len(order), tokens, in_features)
        if padded(in_features) != in_features:
            rows = F.pad(rows, (0, padded(in_features) - in_features))
        if plan.padded_rows <= 4 * len(order):  # equal enough: batched GEMMs over the (G, widest) layout
            equal = plan.padded_rows == len(order)  # groups all of one size: the sorted rows are the layout
            slot = plan.slot.to(x.device)
            layout = rows if equal else rows.new_zeros(plan.padded_rows, tokens, rows.shape[-1]).index_copy_(
                0, slot, rows)
            h = torch.bmm(layout.view(len(pairs), -1, rows.shape[-1]), a)
            product = torch.bmm(h if weights is None else h * weights.view(-1, 1, 1), b)
            if not equal:
                product = product.view(plan.padded_rows, tokens, -1).index_select(0, slot)
        else:  # a few large groups beside small ones: grouped GEMMs, which loop over the groups
            offsets = (torch.cumsum(plan.counts, 0) * tokens).to(torch.int32)
            if weights is not None:
                b = b * weights.view(-1, 1, 1)
            product = grouped_mm(grouped_mm(rows.reshape(-1, rows.shape[-1]), a, offs=offsets), b, offs=offsets)
        return total.index_add_(0, order, product[..., :out_features].reshape(len(order), *x.shape[1:-1],
                                                                             out_features))

    def _grouped_factors(self, pairs: list[tuple[LoraFactors, float]], x: Tensor,
                         padded: Callable[[int], int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The live adapters' A^T (G, in, r), scaled B^T (G, r, out), zero-padded, and weights (None: all 1):
        gathered from the layer's pool of routed factors, and kept until a factor, a weight or the live set
        changes (the same key as the fused stack's)."""
        key = ("grouped", x.dtype, x.device, stack_key(pairs))
        hit = self._stacks.get("grouped")
        if hit is not None and hit[0] == key:
            return hit[1]
        if self._pool is None:
            self._pool = FactorPool()
        gathered = self._pool.gather(pairs, x, padded)
        if not any(f.lora_A.is_inference() or f.lora_B.is_inference() for f, _ in pairs):
            self._stacks["grouped"] = (key, gathered)  # made under inference_mode: no version counter to key on
        return gathered

    def kept_bytes(self) -> int:
        return super().kept_bytes() + (self._pool.nbytes if self._pool is not None else 0)

    up_add = staticmethod(addmm_up)
