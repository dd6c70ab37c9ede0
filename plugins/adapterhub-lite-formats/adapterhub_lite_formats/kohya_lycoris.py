"""LoHa and LoKr in the kohya / LyCORIS layout: the factors under LyCORIS's own names, beside `alpha`.

    LoHa  hada_w1_a (out, r), hada_w1_b (r, in), hada_w2_a (out, r), hada_w2_b (r, in)
          or, Tucker (use_tucker), hada_t1/hada_t2 (r, r, kh, kw), hada_w*_a (r, out), hada_w*_b (r, in)
    LoKr  lokr_w1 (a, c) or lokr_w1_a (a, r) + lokr_w1_b (r, c);
          lokr_w2 (b, d[, kh, kw]) or lokr_w2_a (b, r) + lokr_w2_b (r, d[*kh*kw])
          or, Tucker, lokr_t2 (r, r, kh, kw) + lokr_w2_a (r, b) + lokr_w2_b (r, d)

with a conv's `in` its in_channels/groups*kh*kw when flattened (LyCORIS's default), scale alpha / r. One
rule of LyCORIS's differs from PEFT's: a LoKr whose two factors are both full has scale 1 whatever alpha says
(LyCORIS and ComfyUI both read it so). Export folds such an adapter's scale into w2; import reads it at scale 1.
The families come from the registry (the LyCORIS plugin registers them): no import of that plugin here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from adapterhub_lite import AdapterConfig, IncompatibleAdapterError

from .common import shown

FACTORS = {
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
}
TUCKER_CORES = {"hada_t1", "hada_t2", "lokr_t2"}


def export_tensors(flat: str, family: str, config: Any, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """One module's tensors under LyCORIS's names; `state` holds its factors by name."""
    tensors = {f"{flat}.{factor}": tensor.contiguous() for factor, tensor in state.items()}
    alpha = config.alpha
    if family == "lokr" and "lokr_w1" in state and "lokr_w2" in state:  # LyCORIS reads this at scale 1
        tensors[f"{flat}.lokr_w2"] = (state["lokr_w2"].float() * config.scale).to(state["lokr_w2"].dtype).contiguous()
        alpha = float(config.rank)
    tensors[f"{flat}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return tensors


def import_config(family: str, config_class: type[AdapterConfig], module: str, found: dict[str, Tensor],
                  weight_shape: tuple[int, ...], alpha: float | None, where: str) -> AdapterConfig:
    """The config that builds exactly `found`'s factors on a weight of `weight_shape` (alpha None: the file has
    none, or 0, which both LyCORIS and kohya read as alpha = rank)."""
    for factor, tensor in found.items():
        if tensor.dim() < 2:
            raise IncompatibleAdapterError(f"{where}: {factor} has shape {tuple(tensor.shape)}, not a {family} factor")
    if family == "loha":
        return _loha_config(config_class, module, found, weight_shape, alpha, where)
    return _lokr_config(config_class, module, found, weight_shape, alpha, where)


def _loha_config(config_class: type[AdapterConfig], module: str, found: dict[str, Tensor],
                 weight_shape: tuple[int, ...], alpha: float | None, where: str) -> AdapterConfig:
    """LoHa's rank from its factors (every b factor is (r, ...)), Tucker when the file has the cores; the config
    is then checked by building its shapes (`factor_shapes`)."""
    tucker = "hada_t1" in found or "hada_t2" in found
    needed = [f for f in FACTORS["loha"] if tucker or f not in TUCKER_CORES]
    missing = [f for f in needed if f not in found]
    if missing:
        raise IncompatibleAdapterError(f"{where}: LoHa needs {', '.join(needed)}; missing {', '.join(missing)}")
    ranks = {found["hada_w1_b"].shape[0], found["hada_w2_b"].shape[0]}
    if len(ranks) != 1:
        raise IncompatibleAdapterError(f"{where}: the LoHa factors disagree on the rank ({sorted(ranks)}); one "
                                       "rank per module is built here")
    rank = ranks.pop()
    config = config_class(targets=[module], rank=rank, alpha=float(rank) if alpha is None else alpha, tucker=tucker)
    wanted = {k: tuple(t.shape) for k, t in found.items()}
    if config.factor_shapes(tuple(weight_shape)) != wanted:
        raise IncompatibleAdapterError(
            f"{where}: LoHa factors {shown(wanted, 120)} are not a layout built here for a weight of shape "
            f"{tuple(weight_shape)} (LyCORIS's rules{', Tucker' if tucker else ''})")
    return config


def _lokr_config(config_class: type[AdapterConfig], module: str, found: dict[str, Tensor],
                 weight_shape: tuple[int, ...], alpha: float | None, where: str) -> AdapterConfig:
    """LoKr's config is more than rank and alpha: which factors are decomposed and how the sizes split are
    read back from the shapes, then checked by building them (`factor_shapes`)."""
    for side in ("w1", "w2"):
        full, pair = f"lokr_{side}" in found, {f"lokr_{side}_a", f"lokr_{side}_b"} <= set(found)
        if full == pair:
            raise IncompatibleAdapterError(f"{where}: LoKr needs lokr_{side}, or lokr_{side}_a with lokr_{side}_b "
                                           f"(found {sorted(k for k in found if k.startswith(f'lokr_{side}'))})")
    w1_full, w2_full = "lokr_w1" in found, "lokr_w2" in found
    a, c = found["lokr_w1"].shape[:2] if w1_full else (found["lokr_w1_a"].shape[0], found["lokr_w1_b"].shape[1])
    out, inp = weight_shape[0], weight_shape[1]
    if a < 1 or c < 1 or out % a or inp % c:
        raise IncompatibleAdapterError(f"{where}: a LoKr w1 of ({a}, {c}) does not divide the {out}x{inp} weight")
    b, d = out // a, inp // c
    # every decomposed side's b factor is (r, ...), Tucker or not
    ranks = {found[f"lokr_{side}_b"].shape[0] for side, full in (("w1", w1_full), ("w2", w2_full)) if not full}
    if len(ranks) > 1:
        raise IncompatibleAdapterError(f"{where}: the LoKr factors disagree on the rank ({sorted(ranks)})")
    # both full: any rank that keeps w2 whole will do; the scale is 1, as LyCORIS reads such a module
    rank = ranks.pop() if ranks else max(1, math.ceil(max(b, d) / 2))
    scale_one = w1_full and w2_full
    alpha = float(rank) if alpha is None or scale_one else alpha
    wanted = {k: tuple(t.shape) for k, t in found.items()}
    tries = [{"decompose_factor": f} for f in dict.fromkeys((-1, a, c, b, d))]  # LyCORIS's default split first
    for split in [*tries, {"w1_shape": (a, c)}]:  # else the split as the file has it (PEFT's rule lacks it)
        config = config_class(targets=[module], rank=rank, alpha=alpha, decompose_both=not w1_full,
                              tucker="lokr_t2" in found, **split)
        if config.factor_shapes(tuple(weight_shape)) == wanted:
            return config
    raise IncompatibleAdapterError(
        f"{where}: LoKr factors {shown(wanted, 120)} are not a layout built here for a weight of shape "
        f"{tuple(weight_shape)} (LyCORIS's rules)")
