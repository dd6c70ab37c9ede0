"""The kohya / A1111 LoRA layout: one safetensors file,

    <prefix>_<module path with '.' -> '_'>.lora_down.weight   (A)
    <prefix>_<...>.lora_up.weight                              (B)
    <prefix>_<...>.alpha                                       (scalar; scale = alpha / rank)

with `ss_network_dim` / `ss_network_alpha` in the header. kohya has no
rsLoRA: its alpha is written as alpha*sqrt(r) so the delta is identical.
Module names are recovered by matching against the target model's own names.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from adapterhub_lite import AdaptedModel, AdapterBundle, AdapterFileError, IncompatibleAdapterError
from adapterhub_lite_lora import LoraConfig

from .common import module_kinds, plain_lora, read_safetensors, shown

PREFIX = "lora_unet"
_KEY = re.compile(r"^(?P<flat>[A-Za-z0-9_]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")


def flat_name(module: str, prefix: str = PREFIX) -> str:
    return f"{prefix}_{module.replace('.', '_')}"


def _kohya_alpha(config: LoraConfig) -> float:
    """kohya has no rsLoRA: alpha*sqrt(r) gives the same scale alpha/sqrt(r) as alpha'/r."""
    return config.alpha * math.sqrt(config.rank) if config.rslora else config.alpha


def export(source: AdaptedModel, dest: Path, *, name: str | None = None, **options: Any) -> Path:
    modules = plain_lora(source, name, "kohya")
    flats = {flat_name(m): m for m in modules}
    if len(flats) != len(modules):
        raise IncompatibleAdapterError("two target modules flatten to the same kohya name ('.' -> '_')")
    state = source.adapter_state(name)
    tensors: dict[str, torch.Tensor] = {}
    for module, (config, _) in modules.items():
        flat = flat_name(module)
        alpha = _kohya_alpha(config)
        tensors[f"{flat}.lora_down.weight"] = state[f"{module}.lora_A"].contiguous()
        tensors[f"{flat}.lora_up.weight"] = state[f"{module}.lora_B"].contiguous()
        tensors[f"{flat}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    widest = max((c for c, _ in modules.values()), key=lambda c: c.rank)
    # the header repeats the widest module's alpha as its `.alpha` tensor holds it (alpha*sqrt(r) for rsLoRA)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(widest.rank),
                "ss_network_alpha": str(_kohya_alpha(widest)), "adapterhub_lite_base": str(source.base_id),
                "adapterhub_lite_modules": json.dumps(sorted(modules))}
    dest = dest / f"{name}.safetensors" if dest.is_dir() else dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata=metadata)
    return dest


def import_(src: Path, model: AdaptedModel, **options: Any) -> AdapterBundle:
    tensors, header = read_safetensors(src)
    kinds = module_kinds(model.model)
    by_flat: dict[str, str] = {}
    for module in kinds:
        by_flat.setdefault(flat_name(module), module)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise IncompatibleAdapterError(f"{src}: tensor {shown(key)} is not a kohya LoRA key "
                                           "(lora_down.weight, lora_up.weight, alpha); LoCon/LoHa/DoRA extras are "
                                           "not supported")
        parts.setdefault(match["flat"], {})[match["part"]] = tensor
    if not parts:
        raise AdapterFileError(f"{src} holds no kohya LoRA tensors")
    state, configs = {}, {}
    for flat, found in sorted(parts.items()):
        module = by_flat.get(flat)
        if module is None:
            raise IncompatibleAdapterError(f"{src}: {shown(flat)} names no module of this model "
                                           f"(expected {PREFIX}_<module path with '_'>)")
        if kinds[module] not in ("Linear", "Conv2d") or {"lora_down.weight", "lora_up.weight"} - set(found):
            raise IncompatibleAdapterError(f"{src}: {module!r} ({kinds[module]}) lacks lora_down/lora_up or is not "
                                           "a Linear or Conv2d")
        down = found["lora_down.weight"]
        rank = int(down.shape[0]) if down.dim() >= 2 else 0
        if rank < 1:
            raise IncompatibleAdapterError(f"{src}: {flat}.lora_down.weight has shape {tuple(down.shape)}, not a "
                                           "LoRA factor")
        if "alpha" in found and found["alpha"].numel() != 1:
            raise IncompatibleAdapterError(f"{src}: {flat}.alpha holds {found['alpha'].numel()} values; kohya's "
                                           "alpha is one number")
        alpha = float(found["alpha"]) if "alpha" in found else float(rank)  # kohya's default: alpha = rank
        state[f"{module}.lora_A"], state[f"{module}.lora_B"] = down, found["lora_up.weight"]
        configs[module] = LoraConfig(targets=[module], rank=rank, alpha=alpha)
    return AdapterBundle(name=Path(src).stem, family="lora", configs=configs, state=state,
                         base_model=header.get("adapterhub_lite_base"))
