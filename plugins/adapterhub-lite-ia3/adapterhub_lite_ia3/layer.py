"""(IA)^3: a learned scale per feature, multiplying a layer's output (attention-style projections) or, with
`feedforward`, its input (feed-forward layers). Multiplicative, not additive:

- an adapter at weight w scales by 1 + w (l - 1): weight 0 is the base, weight 1 the learned scale;
- several (IA)^3 adapters on one layer multiply their scales, in any order (scales commute);
- merging folds the product into the weight: W' = diag(out) W diag(in), b' = out * b (an output scale scales
  the bias too, as the unmerged forward does);
- with other families on the same module, the scales wrap the whole layer (`composes = "wraps"`): they scale
  the base and the other adapters' deltas alike, W' = diag(out) (W + deltas) diag(in).

Under per-sample routing each sample runs one adapter, whose additive effect is exact: base(x) (l - 1) on the
output side, W ((l - 1) x) on the input side; a routed batch reads each sample's w (l - 1) off a table of the
adapters' scales, so it costs one product with W (for input-side adapters) and two multiplies, however many
adapters it names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adapterhub_lite import AdapterLayer, Route, RowPool

from .config import IA3Config


class IA3Layer(AdapterLayer):
    targets = (nn.Linear, nn.Conv2d)

    def create(self, name: str, config: IA3Config) -> nn.Module:
        weight = self.base.weight
        size = weight.shape[1] * (self.base.groups if isinstance(self.base, nn.Conv2d) else 1) \
            if config.feedforward else weight.shape[0]
        scales = nn.Module()
        scales.ia3_l = nn.Parameter(torch.ones(size, dtype=weight.dtype, device=weight.device))  # a no-op at first
        return scales

    # --- the scales ---------------------------------------------------------------------------------------
    def _scales(self, weighted: list[tuple[str, float]]) -> tuple[Tensor | None, Tensor | None]:
        """The product of 1 + w (l - 1) over the adapters, on the input side and on the output side, in float32
        at least (half-precision scales would round once per adapter)."""
        scales: dict[bool, Tensor | None] = {True: None, False: None}
        for name, weight in weighted:
            side = self.configs[name].feedforward
            scale = self.adapters[name].ia3_l
            factor = 1 + weight * (scale.to(torch.promote_types(scale.dtype, torch.float32)) - 1)
            scales[side] = factor if scales[side] is None else scales[side] * factor
        return scales[True], scales[False]

    def _shaped(self, scale: Tensor, like: Tensor) -> Tensor:
        """A feature scale broadcast over `like`: the last axis for a Linear, the channel axis for a conv."""
        if isinstance(self.base, nn.Conv2d):
            return scale.view(-1, 1, 1) if like.dim() == 3 else scale.view(1, -1, 1, 1)
        return scale

    # --- the forward: scales multiply, around everything inside the layer ----------------------------------
    composes = "wraps"  # with other families on one module: W' = D_out (W + their deltas) D_in

    def run(self, live: list[tuple[str, float]], x: Tensor, *args: Any, route: Route | None = None,
            **kwargs: Any) -> Tensor:
        if route is not None or not live:
            return super().run(live, x, *args, route=route, **kwargs)  # routed: each sample's additive effect
        return self.wrap_forward(live, x, *args, inner=self.base, **kwargs)

    def wrap_forward(self, live: list[tuple[str, float]], x: Tensor, *args: Any, inner: Any, **kwargs: Any) -> Tensor:
        ins, outs = self._scales(live)
        if ins is not None:
            x = x * self._shaped(ins.to(x.dtype), x)
        out = inner(x, *args, **kwargs)
        return out * self._shaped(outs.to(out.dtype), out) if outs is not None else out

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weights["weight"], weights.get("bias", self.base.bias))
        return nn.functional.linear(x, weights["weight"], weights.get("bias", self.base.bias))

    def folded_weights(self, weighted: list[tuple[str, float]], allocate: Any) -> dict[str, Tensor]:
        """The current tensors (with what is already merged) scaled by these adapters."""
        return self.wrap_weights(weighted, {path: p.detach() for path, p in self.base.named_parameters()})

    def wrap_weights(self, weighted: list[tuple[str, float]], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """W scaled row-wise by the output scales and column-wise by the input scales; the bias by the output
        scales (computed in float32, rounded once)."""
        ins, outs = self._scales(weighted)
        weight = tensors["weight"].float()
        extra = (1,) * (weight.dim() - 2)
        if outs is not None:
            weight = weight * outs.float().view(-1, 1, *extra)
        if ins is not None:
            groups = getattr(self.base, "groups", 1)
            per_group = ins.float().view(groups, -1)  # a grouped conv's kernel sees its own group's inputs
            weight = (weight.view(groups, -1, *weight.shape[1:]) * per_group.view(groups, 1, -1, *extra)
                      ).view(weight.shape)
        out = {"weight": weight.to(tensors["weight"].dtype)}
        if outs is not None and tensors.get("bias") is not None:
            out["bias"] = (tensors["bias"].float() * outs.float()).to(tensors["bias"].dtype)
        return out

    # --- one adapter's additive effect (per-sample routing), and its change to the weights --------------
    def delta(self, name: str, x: Tensor) -> Tensor:
        change = self.adapters[name].ia3_l - 1
        if self.configs[name].feedforward:
            weight = self.host.base_state()["weight"]
            return self.forward_with({"weight": weight, "bias": None}, x * self._shaped(change, x))
        out = self.base(x)
        return out * self._shaped(change, out)

    def add_deltas_routed(self, live: list[tuple[str, float]], x: Tensor, route: Route, batch_dim: int = 0,
                          out: Tensor | None = None) -> Tensor:
        """Each sample's additive effect at once: its w (l - 1) gathered from per-side tables (zero for the other
        side and for samples of no adapter), out * table_out[sample] + W (x * table_in[sample])."""
        if out is None or batch_dim != 0:
            return super().add_deltas_routed(live, x, route, batch_dim, out)
        route.check_batch(x, batch_dim)
        at = route.positions([name for name, _ in live], none=len(live)).to(x.device)  # the last row: zeros
        weights = torch.tensor([w for _, w in live] + [0.0], dtype=out.dtype, device=out.device).index_select(0, at)
        total = out
        for side, like in ((False, out), (True, x)):
            mine = [self.configs[name].feedforward is side for name, _ in live]
            if not any(mine):
                continue
            change = self._change_table(side, [name for name, _ in live], mine, like).index_select(0, at)  # (N, F)
            change = change * weights.to(change.dtype)[:, None]
            change = (change.view(len(at), -1, *(1,) * (like.dim() - 2)) if isinstance(self.base, nn.Conv2d)
                      else change.view(len(at), *(1,) * (like.dim() - 2), -1))
            if side:
                weight = self.host.base_state()["weight"]
                total = total + self.forward_with({"weight": weight, "bias": None}, x * change)
            else:
                total = total + out * change
        return total

    def _change_table(self, side: bool, names: list[str], mine: list[bool], like: Tensor) -> Tensor:
        """l - 1 of each adapter on this side (a row each; zeros for the other side's and for samples of none),
        from a pool of rows kept per adapter until its scales change; fresh while autograd records."""
        scales = {name: self.adapters[name].ia3_l for name, on in zip(names, mine) if on}
        if torch.is_grad_enabled() and any(s.requires_grad for s in scales.values()):
            zero = next(iter(scales.values())).new_zeros(next(iter(scales.values())).shape)
            return torch.stack([scales[n] - 1 if n in scales else zero for n in names] + [zero]).to(like.dtype)
        pool = self.__dict__.setdefault(f"_rows_{'in' if side else 'out'}", RowPool(rest=0.0))

        def key(scale: Tensor) -> object:
            return object() if scale.is_inference() else (scale.data_ptr(), scale._version)

        return pool.table([(self.adapters[n], key(scales[n]), lambda n=n: scales[n] - 1) if n in scales else None
                           for n in names], like)

    def kept_bytes(self) -> int:
        return sum(pool.nbytes for key, pool in self.__dict__.items() if key.startswith("_rows_"))

    def delta_weights(self, name: str) -> dict[str, Tensor]:
        original = self.host.base_state()
        return {path: tensor - original[path] for path, tensor in self.wrap_weights([(name, 1.0)], original).items()}

    def delta_weight(self, name: str) -> Tensor:
        return self.delta_weights(name)["weight"]

    def describe(self, name: str) -> dict[str, Any]:
        return {"feedforward": self.configs[name].feedforward}
