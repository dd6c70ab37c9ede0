"""PEFT's LoRA on nn.MultiheadAttention: one pair on the packed in_proj (A shared by q, k and v; B stacked
(3E, r)) and one on out_proj (`<module>.base_layer.out_proj.lora_A/B`), both at the module's r and lora_alpha.

Ours holds one pair per projection. Importing gives q, k and v the same A and
each its third of B: the same deltas. Exporting stacks our A's (A = [A_q; A_k;
A_v] with B block-diagonal) unless the three already share one A, pads the
out pair with zeros to that rank, and raises the module's lora_alpha with the
rank so the scale stays: exact either way.

PEFT before 0.22 added the out_proj delta twice when it ran or merged the
adapter (huggingface/peft#3774). PEFT 0.22 fixed that and, to keep an older
file's outputs, doubles its out_proj lora_B on load when the config's
peft_version is missing or older (`out_proj_doubled`, PEFT's own rule). We
read such files the same way, and write `peft_version` 0.22.0 (FIXED_IN): the
delta once, as PEFT's get_delta_weight defines it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor, nn

from adapterhub_lite import AdaptedModel, IncompatibleAdapterError

QKV = ("q", "k", "v")
OUT_PROJ = ".base_layer.out_proj"
FIXED_IN = "0.22.0"  # the first PEFT release that adds the out_proj delta once


def out_proj_doubled(config: dict[str, Any]) -> bool:
    """Whether the file's out_proj pair ran twice in the PEFT that wrote it, so its outputs need lora_B doubled:
    PEFT 0.22's rule (no peft_version, a release before 0.21.1, or a release that is not a dev build before
    0.22.0). A null peft_version is PEFT's own (it fills in the running version); one that does not parse counts
    as missing."""
    if "peft_version" not in config:
        return True
    version = config["peft_version"]
    if version is None:
        return False
    if not isinstance(version, str):
        return True
    text = version.partition("@")[0].strip().lower()
    match = re.match(r"v?(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?", text)  # bounded: int() of a huge run raises
    if match is None:
        return True
    release = tuple(int(part or 0) for part in match.groups())
    return release < (0, 21, 1) or ("dev" not in text[match.end():] and release < (0, 22, 0))


def check(base: nn.Module, module: str, where: Any) -> None:
    if not base._qkv_same_embed_dim:
        raise IncompatibleAdapterError(f"{where}: {module!r} is a cross-attention (kdim/vdim differ from embed_dim); "
                                       "PEFT's LoRA on nn.MultiheadAttention needs one packed in_proj")


def export_module(am: AdaptedModel, name: str, module: str, config: Any) -> tuple[dict[str, Tensor], int, float]:
    """PEFT tensors for one attention module (keys below `<module>`), its PEFT rank and its lora_alpha."""
    check(am.model.get_submodule(module).base, module, "this adapter")
    state = am.adapter_state(name)
    embed = am.model.get_submodule(module).base.embed_dim
    pair = {s: (state[f"{module}.{s}.lora_A"], state[f"{module}.{s}.lora_B"])
            for s in (*QKV, "out") if f"{module}.{s}.lora_A" in state}
    present = [s for s in QKV if s in pair]
    rank = config.rank
    if len(present) == 3 and all(torch.equal(pair[s][0], pair["q"][0]) for s in QKV):
        a, b = pair["q"][0], torch.cat([pair[s][1] for s in QKV])  # one shared A already: PEFT's own layout
    else:
        a = torch.cat([pair[s][0] for s in present]) if present else torch.zeros(rank, embed)
        b = torch.zeros(3 * embed, a.shape[0], dtype=a.dtype)
        for i, s in enumerate(present):  # block-diagonal: each projection reads its own rows of A
            b[QKV.index(s) * embed:(QKV.index(s) + 1) * embed, i * rank:(i + 1) * rank] = pair[s][1]
    peft_rank = a.shape[0]
    out_a, out_b = torch.zeros(peft_rank, embed, dtype=a.dtype), torch.zeros(embed, peft_rank, dtype=a.dtype)
    if "out" in pair:
        out_a[:rank], out_b[:, :rank] = pair["out"]
    alpha = config.scale * (math.sqrt(peft_rank) if config.rslora else peft_rank)  # the same alpha/r (or /sqrt r)
    tensors = {"lora_A.weight": a, "lora_B.weight": b,
               f"{OUT_PROJ[1:]}.lora_A.weight": out_a, f"{OUT_PROJ[1:]}.lora_B.weight": out_b}
    return {k: v.detach().contiguous() for k, v in tensors.items()}, peft_rank, alpha


def import_module(module: str, pairs: dict[str, dict[str, Tensor]], base: nn.Module, where: Any,
                  doubled: bool = False) -> tuple[dict[str, Tensor], tuple[str, ...], int]:
    """Our state for one attention module from PEFT's in_proj pair (`pairs["in"]`) and out_proj pair
    (`pairs["out"]`, its lora_B doubled when `doubled`: `out_proj_doubled`): the tensors, the projections they
    adapt and the rank."""
    check(base, module, where)
    if "in" not in pairs or set(pairs["in"]) != {"A", "B"}:
        raise IncompatibleAdapterError(f"{where}: attention {module!r} has no complete in_proj pair (lora_A and "
                                       "lora_B)")
    a, b = pairs["in"]["A"], pairs["in"]["B"]
    rank, embed = a.shape[0], base.embed_dim
    if a.shape != (rank, embed) or b.shape != (3 * embed, rank):
        raise IncompatibleAdapterError(f"{where}: attention {module!r} in_proj factors are {tuple(a.shape)} and "
                                       f"{tuple(b.shape)}; this model needs ({rank}, {embed}) and ({3 * embed}, {rank})")
    state = {}
    for slot, part in zip(QKV, b.chunk(3)):
        state[f"{module}.{slot}.lora_A"], state[f"{module}.{slot}.lora_B"] = a, part
    projections: tuple[str, ...] = QKV
    out = pairs.get("out", {})
    if out:
        if set(out) != {"A", "B"} or out["A"].shape != (rank, embed) or out["B"].shape != (embed, rank):
            raise IncompatibleAdapterError(f"{where}: attention {module!r} out_proj pair does not match its in_proj "
                                           f"pair of rank {rank} (PEFT gives both one r)")
        if torch.count_nonzero(out["B"]) and torch.count_nonzero(out["A"]):  # a zero factor: no delta
            state[f"{module}.out.lora_A"], state[f"{module}.out.lora_B"] = out["A"], 2 * out["B"] if doubled else out["B"]
            projections = (*QKV, "out")
    return state, projections, rank
