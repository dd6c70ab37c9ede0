"""What every LoRA layer shares: the factor pair and the fused stack.

N live adapters on one layer run as one pair of products: their A's are
concatenated along the rank axis, their B's (each pre-scaled by
weight * alpha/r) side by side, so (B1 s1 w1) A1 x + (B2 s2 w2) A2 x + ...
= [B1 s1 w1 | B2 s2 w2 | ...] [A1; A2; ...] x. Grouped convolutions stack
per group. The stack is cached for inference until the active set, a weight
or a parameter changes; while autograd records it is rebuilt every call, so
training never sees a stale copy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import (AdapterLayer, AdapterStateError, Route, UnsupportedModuleError, groupable,
                             grouped_low_rank, padded_width)

from .config import LoraConfig
from .pool import FactorPool


class LoraFactors(nn.Module):
    """One adapter's pair on one weight: down-projection A, up-projection B (zero at start).

    `zero="A"` is the embedding layout's init (PEFT's and the LoRA paper's): A zero, B normal, because A is read
    by index, one row per token, and a zero B would leave A without gradient."""

    def __init__(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...], config: LoraConfig, like: Tensor,
                 zero: str = "B") -> None:
        super().__init__()
        a = torch.empty(a_shape, dtype=torch.float32, device=like.device)  # init in fp32: same draw for every dtype
        b = torch.zeros(b_shape, dtype=torch.float32, device=like.device)
        if zero == "A":
            a.zero_()
            nn.init.normal_(b)
        elif config.init == "kaiming":
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's own init
        else:
            nn.init.normal_(a, std=1.0 / config.rank)
        self.lora_A = nn.Parameter(a.to(like.dtype))
        self.lora_B = nn.Parameter(b.to(like.dtype))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scale = config.scale


def _stack(pairs: list[tuple[LoraFactors, float]], groups: int) -> tuple[Tensor, Tensor, float]:
    """Concatenate factors on the rank axis (per group), B's pre-scaled by weight * scale. One adapter is
    returned as it is, with its factor (`alpha`) apart: no scaled copy of B, and no op on it to backprop."""
    if len(pairs) == 1:
        f, w = pairs[0]
        return f.lora_A, f.lora_B, f.scale * w
    a = torch.cat([f.lora_A.unflatten(0, (groups, -1)) for f, _ in pairs], dim=1).flatten(0, 1)
    b = torch.cat([(f.lora_B * (f.scale * w)).unflatten(0, (groups, -1)) for f, w in pairs], dim=2).flatten(0, 1)
    return a, b, 1.0  # a: (groups*R, ...)  b: (out, R, ...) with R the summed rank


def stack_key(pairs: list[tuple[LoraFactors, float]]) -> tuple:
    """What a stack built from these factors at these weights depends on (identity, version counter and dtype of
    every factor): a kept stack is reused only while it is equal."""
    return (torch.is_inference_mode_enabled(), tuple(w for _, w in pairs),
            tuple((a.data_ptr(), a._version, a.dtype, b.data_ptr(), b._version, b.dtype)
                  for a, b in ((f.lora_A, f.lora_B) for f, _ in pairs)))


def addmm_up(out: Tensor | None, h: Tensor, b: Tensor, alpha: float) -> Tensor:
    """out + alpha * h B^T for Linear-like up-projections, as one addmm when the shapes allow: the add and
    the scaling ride inside the GEMM (no delta-sized temporary, no extra pass over the output)."""
    if out is None or not out.is_contiguous():
        delta = F.linear(h, b if alpha == 1.0 else b * alpha)
        return delta if out is None else out + delta
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=alpha)
    return flat.view(out.shape)


class LowRankLayer(AdapterLayer):
    """Base for LoRA layers: subclasses give the shapes (`create`) and the two products."""

    groups = 1
    rank_axis = -1  # where the rank lives in down(x, A): last for Linear, 1 (channels) for Conv2d
    fast_fold = True  # one weight, W + B A: merge with addmm (attention, with several weights, opts out)
    # the base keeps its weight as (in, out), the transpose of B @ A: transformers' Conv1D, nn.Embedding
    weight_transposed = False

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base)
        self._stacks: dict[Any, tuple[tuple, tuple]] = {}  # key, then the stack (or grouped factors)
        self._pools: dict[str | None, FactorPool] = {}  # per weight: routed factors (`grouped_products`)

    def down(self, x: Tensor, a: Tensor) -> Tensor:
        raise NotImplementedError

    def up(self, h: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def up_add(self, out: Tensor | None, h: Tensor, b: Tensor, alpha: float) -> Tensor:
        """out + alpha * up(h, b) (out None: the product alone); Linear-like kinds fuse it (`addmm_up`)."""
        delta = self.up(h, b if alpha == 1.0 else b * alpha)  # B is smaller than the output: scale it
        return delta if out is None else out + delta

    def plain_pair_refusal(self) -> str | None:
        """Why this layer's adapters are not one (A, B) pair on one weight, as PEFT and kohya files hold
        LoRA, or None when they are (Linear, and Conv2d without groups)."""
        return "a grouped convolution (groups > 1)" if self.groups != 1 else None

    def factors(self, name: str, slot: str | None = None) -> LoraFactors:
        module = self.adapters[name]
        return module if slot is None else module[slot]

    def factor_delta(self, f: LoraFactors, x: Tensor) -> Tensor:
        return self.up(self.down(f.dropout(x), f.lora_A), f.lora_B) * f.scale

    def factor_weight(self, f: LoraFactors) -> Tensor:
        """scale * B @ A, per group, reshaped like the base weight."""
        a = f.lora_A.unflatten(0, (self.groups, -1)).flatten(2)  # (g, r, in/g * k...)
        b = f.lora_B.flatten(1).unflatten(0, (self.groups, -1))  # (g, out/g, r)
        delta = (b @ a).reshape(b.shape[0] * b.shape[1], *f.lora_A.shape[1:]) * f.scale
        return delta.t() if self.weight_transposed else delta

    def delta(self, name: str, x: Tensor) -> Tensor:
        return self.factor_delta(self.factors(name), x)

    def delta_weight(self, name: str) -> Tensor:
        return self.factor_weight(self.factors(name))

    def add_deltas(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        return self.low_rank(x, live, out=out)

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                       out: Tensor | None = None) -> Tensor:
        return self.low_rank(x, live, route=route, batch_dim=batch_dim, out=out)

    def folded_weights(self, weighted: list[tuple[str, float]], allocate: Any) -> dict[str, Tensor] | None:
        """W + B' A in one addmm (B' = B x weight x scale, stacked), written into the tensor the core hands over
        (fresh, or a kept buffer): no full-size temporaries in float32; a half-precision weight is summed in one
        float32 copy and rounded once (not one float32 delta per adapter)."""
        weight = getattr(self.base, "weight", None)
        if (not self.fast_fold or self.groups != 1 or weight is None
                or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16)):
            return None
        with torch.no_grad():
            a, b, alpha = _stack([(self.factors(n), w) for n, w in weighted], 1)
            flat = weight.data.reshape(weight.shape[0], -1)
            out = allocate("weight", weight.data).view(flat.shape)
            b, a = b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1)
            if self.weight_transposed:  # W^T + B A  <=>  W + A^T B^T
                b, a = a.t(), b.t()
            if weight.dtype == torch.float32:
                torch.addmm(flat, b, a, alpha=alpha, out=out)
            else:
                out.copy_(torch.addmm(flat.float(), b.float(), a.float(), alpha=alpha))
        return {"weight": out.view(weight.shape)}

    # --- compiled serving (AdaptedModel.compile): fixed-shape buffers, refilled eagerly on every change ---------
    def prepare_static(self, max_rank: int, fold_limit: int) -> None:
        """Small layers (within `fold_limit`, the policy's) keep one merged weight buffer, W + the live deltas,
        and run the base op on it (the base's own cost, as the eager path's cache does); bigger ones keep the
        live stack in zero-padded factor buffers of rank `max_rank` (the low-rank path, no weight-sized copy)."""
        if type(self).add_deltas is not LowRankLayer.add_deltas or type(self).run is not AdapterLayer.run:
            raise UnsupportedModuleError(f"{type(self).__name__} is not a plain low-rank sum; it has no fixed-shape "
                                         "path for compiled hot-swap")
        weight = self.base.weight
        if self.host.base_numel <= fold_limit:
            self.register_buffer("static_W", torch.empty_like(weight.detach()), persistent=False)
        else:
            probe = self.create("static", LoraConfig(targets=("*",), rank=max_rank))
            self.register_buffer("static_A", torch.zeros_like(probe.lora_A.detach()), persistent=False)
            self.register_buffer("static_B", torch.zeros_like(probe.lora_B.detach()), persistent=False)
        self.max_rank, self._static_key = max_rank, None

    def fill_static(self) -> None:
        live = self.host.live()
        params = [*self.base.parameters(), *(p for n, _ in live for p in self.adapters[n].parameters())]
        key = (tuple(live), tuple((p.data_ptr(), p._version) for p in params))
        if key == self._static_key:
            return
        rank = sum(self.factors(n).lora_B.shape[1] for n, _ in live)
        if rank > self.max_rank:
            raise AdapterStateError(f"the live adapters {[n for n, _ in live]} have total rank {rank} on a layer "
                                    f"compiled for at most {self.max_rank}: compile with a larger max_rank")
        with torch.no_grad():
            if "static_W" in self._buffers:
                merged = self.host.folded_tensors(live, lambda path, current: self.static_W) if live else {}
                weight = merged.get("weight", self.base.weight)
                if weight.data_ptr() != self.static_W.data_ptr():  # the generic sum, or no live adapter
                    self.static_W.copy_(weight)
            else:
                self.static_A.zero_()
                self.static_B.zero_()
                if live:
                    a, b, alpha = _stack([(self.factors(n), w) for n, w in live], self.groups)
                    g = self.groups  # per group: the first `rank` rows of A and columns of B, the rest stay zero
                    self.static_A.unflatten(0, (g, -1))[:, :rank].copy_(a.unflatten(0, (g, -1)))
                    self.static_B[:, :rank].copy_(b * alpha)
        self._static_key = key

    def static_forward(self, x: Tensor) -> Tensor:
        if "static_W" in self._buffers:
            return self.forward_with({"weight": self.static_W}, x)
        return self.up_add(self.base(x), self.down(x, self.static_A), self.static_B, 1.0)

    def release_static(self) -> None:
        for name in ("static_W", "static_A", "static_B"):
            self._buffers.pop(name, None)

    def describe(self, name: str) -> dict[str, object]:
        config = self.configs[name]
        return {"rank": config.rank, "alpha": config.alpha}

    def invalidate(self) -> None:
        super().invalidate()
        self._stacks.clear()

    def kept_bytes(self) -> int:
        """The kept stacks' copies (a single adapter's stack is its own parameters: not a copy) and the routed
        factor pools."""
        kept = sum(t.numel() * t.element_size() for _, stacked in self._stacks.values() for t in stacked
                   if isinstance(t, Tensor) and not isinstance(t, nn.Parameter))
        return kept + sum(pool.nbytes for pool in self._pools.values())

    def low_rank(self, x: Tensor, live: list[tuple[str, float]], slot: str | None = None,
                 route: Route | None = None, batch_dim: int = 0, out: Tensor | None = None) -> Tensor:
        """`out` plus the sum of weight * delta over `live` (on one slot of a multi-weight layer), fused.
        Under a `route` (batch axis `batch_dim`), each sample keeps only its own adapter's rank columns."""
        pairs = [(self.factors(n, slot), w) for n, w in live]
        if self.training and any(not isinstance(f.dropout, nn.Identity) for f, _ in pairs):
            # each adapter drops its own input: the A products cannot share one x
            total = out
            for (name, _), (f, w) in zip(live, pairs):
                term = self.factor_delta(f, x) * w
                if route is not None:
                    term = term * route.sample_mask(name, term, batch_dim)
                total = term if total is None else total + term
            return total
        if route is not None and self.route_per_group:
            delta = self._routed_gather(x, live, pairs, route, batch_dim)
            return delta if out is None else out + delta
        if route is not None:
            routed = self.routed_grouped(x, live, pairs, route, batch_dim, out, slot)
            if routed is not None:
                return routed
        a, b, alpha = self._stacked(pairs, slot)
        h = self.down(x, a)
        if route is not None:
            h = h * self._rank_mask(live, pairs, h, route, batch_dim)
        return self.up_add(out, h, b, alpha)

    def routed_grouped(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                       route: Route, batch_dim: int, out: Tensor | None = None,
                       slot: str | None = None) -> Tensor | None:
        """`out` plus the routed delta with each sample through its own adapter's factors only (added in place:
        it runs only where autograd records nothing), or None: the masked stack runs instead. Linear-like kinds
        give it (`grouped_products`; the embedding: each adapter on its own samples)."""
        return None

    def grouped_products(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                         route: Route, batch_dim: int, out: Tensor | None = None,
                         slot: str | None = None) -> Tensor | None:
        """`routed_grouped` for Linear-like products (x A^T B^T): samples grouped by adapter (the route's
        grouping, shared by every layer), each through its own adapter's A and B only, at that adapter's rank
        (`grouped_low_rank`), so the adapter cost does not grow with the number of adapters in the batch (the
        masked stack runs every sample at the summed rank). A batch on the second axis (attention's (L, N, E))
        is moved first for the products. None where they cannot serve (`groupable`: autograd recording)."""
        if batch_dim not in (0, 1) or x.dim() < 2 + batch_dim or not groupable(
                x, 0, (t for f, _ in pairs for t in (f.lora_A, f.lora_B))):
            return None
        route.check_batch(x, batch_dim)
        plan = route.groups([name for name, _ in live])
        a, b, weights = self._grouped_factors(pairs, x, slot)
        out_features = pairs[0][0].lora_B.shape[0]
        if batch_dim == 0:
            return grouped_low_rank(x, plan, a, b, weights, out_features, out)
        delta = grouped_low_rank(x.transpose(0, 1), plan, a, b, weights, out_features).transpose(0, 1)
        return delta if out is None else out.add_(delta)

    def _grouped_factors(self, pairs: list[tuple[LoraFactors, float]], x: Tensor,
                         slot: str | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The live adapters' A^T (G, in, r), scaled B^T (G, r, out), zero-padded, and weights (None: all 1):
        gathered from the layer's pool of routed factors (one per weight: attention has four), and kept until a
        factor, a weight or the live set changes (the same key as the fused stack's)."""
        key = ("grouped", x.dtype, x.device, stack_key(pairs))
        hit = self._stacks.get(("grouped", slot))
        if hit is not None and hit[0] == key:
            return hit[1]
        pool = self._pools.get(slot)
        if pool is None:
            pool = self._pools[slot] = FactorPool()
        gathered = pool.gather(pairs, x, lambda n: padded_width(n, x.dtype))
        if not any(f.lora_A.is_inference() or f.lora_B.is_inference() for f, _ in pairs):
            self._stacks[("grouped", slot)] = (key, gathered)  # made under inference_mode: no version counter
        return gathered

    @property
    def _pool(self) -> FactorPool | None:
        """The pool of a one-weight layer."""
        return self._pools.get(None)

    def _routed_gather(self, x: Tensor, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]],
                       route: Route, batch_dim: int) -> Tensor:
        """Each adapter on its own samples only, scattered back (the core's routed form): for convs and
        embeddings, where a product over every sample at the summed rank would cost more than the base layer
        itself. LoraConv overrides it with one conv for all groups."""
        return AdapterLayer.add_deltas_routed(self, live, x, route, batch_dim)

    def _rank_mask(self, live: list[tuple[str, float]], pairs: list[tuple[LoraFactors, float]], h: Tensor,
                   route: Route, batch_dim: int) -> Tensor:
        """(batch x stacked rank) 0/1 mask: sample i keeps the rank columns of its routed adapter only."""
        route.check_batch(h, batch_dim)
        owner = [route.names.index(name) for (name, _), (f, _) in zip(live, pairs)
                 for _ in range(f.lora_B.shape[1])] * self.groups
        owner_t = torch.tensor(owner, device=h.device)
        mask = (route.index.to(h.device)[:, None] == owner_t[None, :]).to(h.dtype)  # (N, R)
        shape = [1] * h.dim()
        shape[batch_dim], shape[self.rank_axis] = mask.shape
        if batch_dim > self.rank_axis % h.dim():
            mask = mask.T
        return mask.reshape(shape)

    def _stacked(self, pairs: list[tuple[LoraFactors, float]], slot: str | None) -> tuple[Tensor, Tensor, float]:
        params = [p for f, _ in pairs for p in (f.lora_A, f.lora_B)]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return _stack(pairs, self.groups)  # autograd is recording: fresh every call, never stale
        if any(p.is_inference() for p in params):  # made under inference_mode: no version counter to key on
            with torch.no_grad():
                return _stack(pairs, self.groups)
        key = stack_key(pairs)
        hit = self._stacks.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            stacked = _stack(pairs, self.groups)
        self._stacks[slot] = (key, stacked)
        return stacked
