"""What LoHa and LoKr layers share: a delta that is a whole weight, built from factors, applied by the base op.

Neither is a low-rank product of the base's rank r (a Hadamard or Kronecker product of low-rank factors has a
larger rank), so the delta is built as a weight and run through the base module's own op: a Linear's
`F.linear`, a Conv2d's conv with its stride, padding, dilation and groups. Under per-sample routing a kind
that can write its delta as one pair of matrices (`low_rank_form`: LoHa's is of rank r * r) runs grouped
products, like LoRA; otherwise each adapter's delta runs on its own samples (the core's form). A Conv2d's
kernel is handled flattened (out, in/groups*kh*kw), as PEFT's and LyCORIS's default layout is, or as a Tucker
core (`tucker_rebuild`) where the config says so.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterhub_lite import AdapterLayer, Route, groupable, grouped_low_rank, padded_width


def kaiming_(tensor: Tensor) -> Tensor:
    """nn.Linear's own init, as LyCORIS and PEFT use for these factors."""
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def parameter(shape: tuple[int, ...], like: Tensor, init: str) -> nn.Parameter:
    """A factor in float32 first (the same draw for every dtype), then in the base weight's dtype."""
    t = torch.empty(shape, dtype=torch.float32, device=like.device)
    kaiming_(t) if init == "kaiming" else nn.init.zeros_(t)
    return nn.Parameter(t.to(like.dtype))


def tucker_rebuild(core: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """A Tucker-decomposed kernel: core (r, r, kh, kw) with factor matrices wa (r, out) and wb (r, in) gives
    (out, in, kh, kw), W[p, q] = sum_ij core[i, j] wa[i, p] wb[j, q] (LyCORIS's and PEFT's rebuild)."""
    return torch.einsum("ij...,ip,jq->pq...", core, wa, wb)


class WeightDeltaLayer(AdapterLayer):
    """Base for kinds whose delta is a whole weight: subclasses give `create` and `delta_weight`."""

    targets = (nn.Linear, nn.Conv2d)

    @property
    def flat_shape(self) -> tuple[int, int]:
        """The base weight as a matrix: (out, in) for Linear, (out, in/groups*kh*kw) for Conv2d."""
        weight = self.base.weight
        return weight.shape[0], weight[0].numel()

    def delta(self, name: str, x: Tensor) -> Tensor:
        return self.apply_weight(self.delta_weight(name), x)

    def add_deltas(self, live: list[tuple[str, float]], x: Tensor, out: Tensor | None = None) -> Tensor:
        """A stack in one op: the weighted delta weights summed first (each is a whole weight), then one base op,
        instead of one op per adapter."""
        if len(live) == 1:
            name, weight = live[0]
            term = self.delta(name, x) * weight
        else:
            term = self.apply_weight(sum(self.delta_weight(n) * w for n, w in live), x)
        return term if out is None else out + term

    def low_rank_form(self, name: str) -> tuple[Tensor, Tensor] | None:
        """The delta as one pair, down (R, in) and up (out, R) with the scale in up, so that delta(x) = up down x:
        what routed batches run as grouped products; None (the default): the kind has none here."""
        return None

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                          out: Tensor | None = None) -> Tensor:
        """Grouped products over every adapter's `low_rank_form` where all have one and nothing is recorded for
        autograd (`groupable`); each adapter's delta on its own samples otherwise."""
        params = [p for name, _ in live for p in self.adapters[name].parameters()]
        if isinstance(self.base, nn.Linear) and groupable(x, batch_dim, params):
            stacked = self._grouped_forms(live, x)
            if stacked is not None:
                route.check_batch(x, batch_dim)
                weights = (None if all(w == 1.0 for _, w in live) else
                           torch.tensor([w for _, w in live], dtype=x.dtype, device=x.device))
                plan = route.groups([name for name, _ in live])
                return grouped_low_rank(x, plan, *stacked, weights, self.base.weight.shape[0], out)
        return super().add_deltas_routed(live, x, route, batch_dim, out)

    def _grouped_forms(self, live: list[tuple[str, float]], x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The live adapters' forms as `grouped_low_rank` takes them: down^T (G, in', R'), up^T (G, R', out'),
        zero-padded. Each adapter's form is kept while the adapter lives and its factors do not change (identity
        and version counter), so a batch naming a new mix of them stacks kept forms instead of computing them."""
        kept = self.__dict__.setdefault("_forms", weakref.WeakKeyDictionary())  # adapter module -> its form
        out, inp = self.base.weight.shape
        forms = []
        for name, _ in live:
            module = self.adapters[name]
            params = list(module.parameters())
            key = (x.dtype, x.device, self.configs[name].scale, tuple((p.data_ptr(), p._version) for p in params))
            hit = kept.get(module)
            if hit is None or hit[0] != key:
                with torch.no_grad():
                    form = self.low_rank_form(name)
                if form is None:
                    return None
                down, up = (t.to(x.dtype) for t in form)
                rank = padded_width(down.shape[0], x.dtype)
                down_t = x.new_zeros(padded_width(inp, x.dtype), rank)
                up_t = x.new_zeros(rank, padded_width(out, x.dtype))
                down_t[:inp, :down.shape[0]] = down.t()
                up_t[:up.shape[1], :out] = up.t()
                hit = (key, down_t, up_t)
                if not any(p.is_inference() for p in params):  # no version counter to key on: not kept
                    kept[module] = hit
            forms.append(hit[1:])
        rank = max(down_t.shape[1] for down_t, _ in forms)
        with torch.no_grad():
            downs = torch.stack([down_t if down_t.shape[1] == rank else F.pad(down_t, (0, rank - down_t.shape[1]))
                                 for down_t, _ in forms])
            ups = torch.stack([up_t if up_t.shape[0] == rank else F.pad(up_t, (0, 0, 0, rank - up_t.shape[0]))
                               for _, up_t in forms])
        return downs, ups

    def kept_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, *kept in self.__dict__.get("_forms", {}).values() for t in kept)

    def apply_weight(self, weight: Tensor, x: Tensor) -> Tensor:
        """The base op with `weight` and no bias."""
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weight, None)
        return F.linear(x, weight)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weights["weight"], self.base.bias)
        return F.linear(x, weights["weight"], self.base.bias)
