"""LoRA on nn.MultiheadAttention: a factor pair on any of the q, k, v and out projections.

torch's attention reads its projection weights directly, so with a live
adapter this layer runs the attention itself: each projection is the base
projection plus the (fused) low-rank term, with the adapter's dropout on its
own input. Cross-attention (kdim/vdim != embed_dim), both batch_first
settings, unbatched input, attention and key-padding masks are supported.
With no live adapter it calls the base module untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import Route, UnsupportedModuleError

from .config import LoraConfig

from .lowrank import LoraFactors, LowRankLayer, addmm_up

QKV = ("q", "k", "v")


class LoraMultiheadAttention(LowRankLayer):
    targets = (nn.MultiheadAttention,)
    fast_fold = False

    def __init__(self, base: nn.MultiheadAttention) -> None:
        if base.bias_k is not None or base.add_zero_attn:
            raise UnsupportedModuleError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported by LoRA; "
                "target its projections in a custom attention module instead"
            )
        super().__init__(base)

    def plain_pair_refusal(self) -> str | None:
        return "attention (one pair per q/k/v/out projection, not one on a weight)"

    def _weight(self, slot: str) -> Tensor:
        mha = self.base
        if slot == "out":
            return mha.out_proj.weight
        if mha._qkv_same_embed_dim:
            return mha.in_proj_weight.chunk(3)[QKV.index(slot)]  # (E, E) view
        return getattr(mha, f"{slot}_proj_weight")  # (E, kdim) / (E, vdim)

    def create(self, name: str, config: LoraConfig) -> nn.ModuleDict:
        pairs = {}
        for slot in config.attention_projections:
            out_features, in_features = self._weight(slot).shape
            pairs[slot] = LoraFactors((config.rank, in_features), (out_features, config.rank), config,
                                      like=self._weight(slot))
        return nn.ModuleDict(pairs)

    def down(self, x: Tensor, a: Tensor) -> Tensor:
        return F.linear(x, a)

    def up(self, h: Tensor, b: Tensor) -> Tensor:
        return F.linear(h, b)

    up_add = staticmethod(addmm_up)
    routed_grouped = LowRankLayer.grouped_products  # each projection: samples grouped by adapter

    def describe(self, name: str) -> dict[str, object]:
        return {**super().describe(name), "projections": list(self.adapters[name])}

    def delta_weights(self, name: str) -> dict[str, Tensor]:
        deltas = {slot: self.factor_weight(f) for slot, f in self.adapters[name].items()}
        out: dict[str, Tensor] = {}
        if any(s in deltas for s in QKV):
            if self.base._qkv_same_embed_dim:
                parts = [deltas.get(s, torch.zeros_like(self._weight(s))) for s in QKV]
                out["in_proj_weight"] = torch.cat(parts)
            else:
                out.update({f"{s}_proj_weight": deltas[s] for s in QKV if s in deltas})
        if "out" in deltas:
            out["out_proj.weight"] = deltas["out"]
        return out

    def _project(self, x: Tensor, slot: str, bias: Tensor | None, live: list[tuple[str, float]],
                 route: Route | None, batch_dim: int) -> Tensor:
        """One projection (plus its adapters) in the caller's own layout: no transposed copy goes into a GEMM."""
        y = F.linear(x, self._weight(slot), bias)
        mine = [(n, w) for n, w in live if slot in self.adapters[n]]
        return self.low_rank(x, mine, slot, route=route, batch_dim=batch_dim, out=y) if mine else y

    def run(self, live: list[tuple[str, float]], query: Tensor, key: Tensor, value: Tensor,
            key_padding_mask: Tensor | None = None, need_weights: bool = True, attn_mask: Tensor | None = None,
            average_attn_weights: bool = True, is_causal: bool = False, *,
            route: Route | None = None) -> tuple[Tensor, Tensor | None]:
        """The attention with each projection's adapters added in (the strategy in front serves small layers
        at inference on merged projections, torch's own attention)."""
        if not live:
            return self.base(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                             attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        mha = self.base
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (L, 1, E)
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        batch_dim = 0 if batched and mha.batch_first else 1  # (N, L, E) or (L, N, E)
        N, L, S, H = query.shape[batch_dim], query.shape[1 - batch_dim], key.shape[1 - batch_dim], mha.num_heads
        head_dim = mha.embed_dim // H
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)

        def split_heads(t: Tensor) -> Tensor:  # -> (N, H, length, hd), contiguous for the attention kernels
            t = t.unflatten(-1, (H, head_dim))
            return (t.transpose(1, 2) if batch_dim == 0 else t.permute(1, 2, 0, 3)).contiguous()

        q, k, v = (split_heads(self._project(t, slot, bias, live, route, batch_dim))
                   for t, slot, bias in zip((query, key, value), QKV, biases))
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, N, L, S, q.dtype, q.device)
        dropout = mha.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the attention matrix is asked for: build it
            scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
            attn = (scores if mask is None else scores + mask).softmax(dim=-1)  # (N, H, L, S)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            weights = weights.squeeze(0) if not batched else weights
            heads = (F.dropout(attn, p=dropout) if dropout else attn) @ v
        else:  # torch's fused kernel: no (N, H, L, S) score tensor
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        heads = heads.transpose(1, 2) if batch_dim == 0 else heads.permute(2, 0, 1, 3)  # back to the input layout
        out = self._project(heads.flatten(-2), "out", mha.out_proj.bias, live, route, batch_dim)
        return (out.squeeze(1) if not batched else out), weights

    def _additive_mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool,
                       N: int, L: int, S: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """attn_mask and key_padding_mask as one float mask that broadcasts over (N, H, L, S); True means
        'masked'."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=device).triu(1)
        mask = None
        if attn_mask is not None:  # (L, S) or (N*H, L, S)
            shape = (1, 1, L, S) if attn_mask.dim() == 2 else (-1, self.base.num_heads, L, S)
            mask = _as_float(attn_mask, dtype).reshape(shape)
        if key_padding_mask is not None:
            pad = _as_float(key_padding_mask, dtype).reshape(N, 1, 1, S)
            mask = pad if mask is None else mask + pad
        return mask


def _as_float(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
