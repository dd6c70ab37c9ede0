"""LoRA on nn.Embedding: y = W[x] + scale * A^T[x] B^T, laid out as PEFT does.

A is (r, num_embeddings) and is read by index like the table itself (with the
base's padding_idx, so the padding row gets no gradient); B is
(embedding_dim, r). A starts at zero and B random (the LoRA paper's choice for
embeddings). Dropout does not apply: the input is indices, not features.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import Route, UnsupportedModuleError

from .config import LoraConfig
from .lowrank import LoraFactors, LowRankLayer, addmm_up


class LoraEmbedding(LowRankLayer):
    targets = (nn.Embedding,)
    weight_transposed = True  # the table is (num_embeddings, dim): the transpose of B @ A

    def __init__(self, base: nn.Embedding) -> None:
        if base.max_norm is not None:
            raise UnsupportedModuleError(
                "LoRA on an nn.Embedding with max_norm is not supported: the lookup renormalises the rows it reads "
                "in place, so the adapted table would differ from the table plus its delta")
        super().__init__(base)

    def create(self, name: str, config: LoraConfig) -> LoraFactors:
        num, dim = self.base.weight.shape
        factors = LoraFactors((config.rank, num), (dim, config.rank), config, like=self.base.weight, zero="A")
        factors.dropout = nn.Identity()
        return factors

    def _lookup(self, x: Tensor, table: Tensor) -> Tensor:
        base = self.base
        return F.embedding(x, table, base.padding_idx, None, base.norm_type, base.scale_grad_by_freq, base.sparse)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return self._lookup(x, weights["weight"])

    def down(self, x: Tensor, a: Tensor) -> Tensor:
        return self._lookup(x, a.t())

    def up(self, h: Tensor, b: Tensor) -> Tensor:
        return F.linear(h, b)

    up_add = staticmethod(addmm_up)

    def routed_grouped(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                       route: Route, batch_dim: int, out: Tensor | None = None,
                       slot: str | None = None) -> Tensor | None:
        """Each adapter's rows looked up for its own samples only (a lookup reads what it needs: no stack of every
        adapter's table), then added in."""
        delta = self._routed_gather(x, live, pairs, route, batch_dim)
        return delta if out is None else out + delta
