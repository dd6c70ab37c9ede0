"""DoRA layers: a LoRA pair and a magnitude per output channel.

delta(x) = (m / n - 1) * (W x) + (m / n) * s * B A x, with n = ||W + s B A|| per output channel, so that
base(x) + delta(x) = (m / n) (W + s B A) x + b: the bias is not rescaled. As in PEFT, n is detached when
autograd records (the paper's section 4.3: the norm is treated as a constant, so it gets no gradient), and
with a live dropout in training both terms see the dropped input. Several DoRA adapters on one layer add
their deltas, each taken against the base weight (PEFT instead feeds a second adapter the first one's output,
which makes its stack depend on the order).

Two guards PEFT lacks (its issue #2049: DoRA on Llama-3.1-8B's o_proj gives NaN at the first step): n and m / n
are computed in float32 at least and rounded to the weight's dtype once, so half-precision weights are not
rounded again in the sum W + s B A and its norm; and a channel whose W + s B A is exactly zero (a pruned or
zero-initialised row) has no direction, so it is taken as zero, W' = 0 there (as `F.normalize` does), instead
of 0 / 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adapterhub_lite import AdapterLayer, Route, RowPool
from adapterhub_lite_lora import LoraConfig, LoraConv2d, LoraFactors, LoraLinear


class _Dora:
    """What both DoRA layers add to their LoRA layer: the magnitude, and the delta built on it."""

    fast_fold = False  # W' is not W + B' A: the generic sum of delta weights

    def create(self, name: str, config: LoraConfig) -> LoraFactors:
        factors = super().create(name, config)  # type: ignore[misc]
        with torch.no_grad():  # B is zero: the norm of W + s B A is W's
            norm = self._norm(self.base.weight.detach().float(), torch.zeros((), device=self.base.weight.device))
        factors.lora_magnitude = nn.Parameter(norm.to(self.base.weight.dtype))
        return factors

    def _norm(self, weight: Tensor, delta: Tensor) -> Tensor:
        """||W + delta|| per output channel, flat (out,), in float32 at least."""
        wide = torch.promote_types(weight.dtype, torch.float32)
        return (weight.to(wide) + delta.to(wide)).flatten(1).norm(dim=1)

    def _ratio(self, name: str) -> Tensor:
        """m / n per output channel in the weight's dtype (n detached while autograd records, as PEFT does); 0
        where W + s B A is exactly zero, so that channel's W' is zero rather than 0 / 0."""
        factors = self.factors(name)  # type: ignore[attr-defined]
        weight = self.host.base_state()["weight"]
        norm = self._norm(weight, self.factor_weight(factors)).detach()  # type: ignore[attr-defined]
        magnitude = factors.lora_magnitude.to(norm.dtype)
        return (magnitude / norm.where(norm > 0, torch.inf)).to(weight.dtype)  # m / inf = 0

    def zero_channels(self, name: str) -> int:
        """How many output channels have W + s B A exactly zero (kept at their bias here; a reader that divides
        by their norm, as PEFT does, gives NaN there: exporters warn)."""
        weight = self.host.base_state()["weight"]
        lora = self.factor_weight(self.factors(name))  # type: ignore[attr-defined]
        return int((self._norm(weight, lora) == 0).sum())

    def delta(self, name: str, x: Tensor) -> Tensor:
        x = self.factors(name).dropout(x)  # type: ignore[attr-defined]
        return self._delta_on(name, x, self.forward_with({"weight": self.host.base_state()["weight"], "bias": None}, x))  # type: ignore[attr-defined]

    def _delta_on(self, name: str, x: Tensor, base: Tensor) -> Tensor:
        """The delta given W x (no bias) for this input: (m / n - 1) W x + (m / n) s B A x."""
        factors = self.factors(name)  # type: ignore[attr-defined]
        ratio = self._ratio(name)
        low_rank = self.up(self.down(x, factors.lora_A), factors.lora_B) * factors.scale  # type: ignore[attr-defined]
        if isinstance(self.base, nn.Conv2d):  # channels: axis 0 of an unbatched (C, H, W), else axis 1
            ratio = ratio.view(-1, 1, 1) if base.dim() == 3 else ratio.view(1, -1, 1, 1)
        return (ratio - 1) * base + ratio * low_rank

    def add_deltas(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        """Each adapter's delta; W x is read off the base output (minus its bias) instead of run again, unless a
        live dropout in training must feed it the dropped input (PEFT does the same)."""
        dropping = self.training and any(not isinstance(self.factors(n).dropout, nn.Identity)  # type: ignore[attr-defined]
                                         for n, _ in live)
        if out is None or dropping or self.host.folded:
            return AdapterLayer.add_deltas(self, live, x, out)  # type: ignore[arg-type]
        bias = self.base.bias  # type: ignore[attr-defined]
        if bias is not None:  # a conv's bias per channel: (C, 1, 1) lines up with (N, C, H, W) and (C, H, W) alike
            bias = bias.view(-1, 1, 1) if isinstance(self.base, nn.Conv2d) else bias  # type: ignore[attr-defined]
        base = out if bias is None else out - bias
        total = out
        for name, weight in live:
            total = total + self._delta_on(name, x, base) * weight
        return total

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                          out: Tensor | None = None) -> Tensor:
        """Each sample through its own adapter, as LoRA routes (grouped products on a Linear, each group on its
        own samples on a conv) for s B A x, then each sample's m / n and weight read off per-adapter tables:
        delta = w ((m / n - 1) W x + (m / n) s B A x), with W x read off the base output. m / n (a norm of
        W + s B A per channel: a weight-sized op) is kept per adapter, in a pool of rows, until a factor or the
        base changes. The core's sample-by-sample form where this cannot serve (no base output, a live dropout
        in training, a batch axis other than the first, folded base weights)."""
        dropping = self.training and any(not isinstance(self.factors(n).dropout, nn.Identity)  # type: ignore[attr-defined]
                                         for n, _ in live)
        if out is None or dropping or batch_dim != 0 or self.host.folded:
            return AdapterLayer.add_deltas_routed(self, live, x, route, batch_dim, out)  # type: ignore[arg-type]
        route.check_batch(x, batch_dim)
        low_rank = self.low_rank(x, [(name, 1.0) for name, _ in live], route=route)  # type: ignore[attr-defined]
        conv = isinstance(self.base, nn.Conv2d)
        bias = self.base.bias  # type: ignore[attr-defined]
        base = out if bias is None else out - (bias.view(-1, 1, 1) if conv else bias)
        ratios = self._ratio_table([name for name, _ in live], out)  # (G + 1, C): the last row all ones
        weights = torch.tensor([w for _, w in live] + [0.0], dtype=out.dtype, device=out.device)
        at = route.positions([name for name, _ in live], none=len(live)).to(out.device)
        ratio = ratios.index_select(0, at)  # (N, C)
        ratio = ratio.view(len(at), -1, 1, 1) if conv else ratio.view(len(at), *(1,) * (out.dim() - 2), -1)
        scale = weights.index_select(0, at).view(-1, *(1,) * (out.dim() - 1))
        return out + ((ratio - 1) * base + ratio * low_rank) * scale

    def _ratio_table(self, names: list[str], like: Tensor) -> Tensor:
        """m / n of each adapter, a row each, then a row of ones (samples of none): from a pool of rows kept per
        adapter while the adapter lives and no tensor its ratio reads changed (identity and version counter,
        the base weight included); computed fresh while autograd records through it."""
        weight = self.host.base_state()["weight"]
        factors = [self.factors(name) for name in names]  # type: ignore[attr-defined]
        tensors = [(f.lora_A, f.lora_B, f.lora_magnitude, weight) for f in factors]
        if torch.is_grad_enabled() and any(t.requires_grad for ts in tensors for t in ts):
            ratios = [self._ratio(name) for name in names]
            return torch.stack([*ratios, torch.ones_like(ratios[0])]).to(like.dtype)
        pool = self.__dict__.setdefault("_ratio_rows", RowPool(rest=1.0))

        def key(f: nn.Module, ts: tuple[Tensor, ...]) -> object:
            if any(t.is_inference() for t in ts):  # no version counter to key on: computed every call
                return object()
            return (f.scale, *((t.data_ptr(), t._version) for t in ts))

        return pool.table([(f, key(f, ts), lambda name=name: self._ratio(name))
                           for name, f, ts in zip(names, factors, tensors)], like)

    def kept_bytes(self) -> int:
        pool = self.__dict__.get("_ratio_rows")
        return super().kept_bytes() + (pool.nbytes if pool is not None else 0)  # type: ignore[misc]

    def delta_weight(self, name: str) -> Tensor:
        """(m / n) (W + s B A) - W, in float32 at least: a merge adds it to W and rounds once (in half precision,
        rounding W + s B A and the product first would cost several units in the last place). m / n is the
        forward's own, in the weight's dtype: a fresh adapter (m = ||W||, rounded) stays exactly a no-op."""
        weight = self.host.base_state()["weight"]
        wide = torch.promote_types(weight.dtype, torch.float32)
        lora = self.factor_weight(self.factors(name)).to(wide)  # type: ignore[attr-defined]
        ratio = self._ratio(name).to(wide).view(-1, *(1,) * (weight.dim() - 1))
        original = weight.to(wide)
        return ratio * (original + lora) - original

    def plain_pair_refusal(self) -> str | None:
        return "DoRA (a magnitude vector beside the LoRA pair)"

    def describe(self, name: str) -> dict[str, Any]:
        config = self.configs[name]  # type: ignore[attr-defined]
        return {"rank": config.rank, "alpha": config.alpha}


class DoraLinear(_Dora, LoraLinear):
    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return nn.functional.linear(x, weights["weight"], weights.get("bias", self.base.bias))


class DoraConv2d(_Dora, LoraConv2d):
    train_on_folded_weights = False  # the magnitude's gradient is taken through the delta, as PEFT does

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.base._conv_forward(x, weights["weight"], weights.get("bias", self.base.bias))
