"""What the LoRA file layouts share: reading safetensors safely and checking what fits them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from adapterhub_lite import (AdaptedModel, AdapterFileError, AdapterhubWarning, IncompatibleAdapterError,
                            load_tensors)
from adapterhub_lite_lora import LoraConfig, LowRankLayer


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata, the header checked before anything is mapped; never unpickles anything."""
    if not path.is_file():
        raise AdapterFileError(f"no file at {path}")
    return load_tensors(path)


def shown(value: Any, limit: int = 60) -> str:
    """A value from a file, cut for a message (a hostile file's field can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def plain_lora(am: AdaptedModel, name: str, fmt: str, skip: frozenset[str] | set[str] = frozenset()
               ) -> dict[str, tuple[LoraConfig, str]]:
    """Per target module: its config and kind, refusing what the format cannot hold exactly. The layer says
    whether it holds one (A, B) pair on one weight (the LoRA plugin's `plain_pair_refusal`), so a new kind is
    judged by what it is, not by its name. Modules in `skip` are left out."""
    bundle = am.bundle(name)
    layers = am.layers()
    out = {}
    for module, config in bundle.configs.items():
        if module in skip:  # the caller handles these itself
            continue
        kind, layer = bundle.kinds[module], layers[module].layer_of(name)
        if not isinstance(config, LoraConfig) or not isinstance(layer, LowRankLayer):
            raise IncompatibleAdapterError(
                f"the {fmt} format holds LoRA factor pairs; {module!r} has a {kind!r} adapter of family "
                f"{bundle.family!r} (export it as native, or fuse it into the base: --format merged)")
        refusal = layer.plain_pair_refusal()
        if refusal is not None:
            raise IncompatibleAdapterError(
                f"the {fmt} format holds one LoRA pair per weight; {module!r} is {refusal} (export it as native, "
                "or fuse it into the base: --format merged)")
        out[module] = (config, kind)
    return out


def dora_modules(am: AdaptedModel, bundle: Any, fmt: str) -> dict[str, tuple[Any, str]]:
    """DoRA's modules as files hold them (a LoRA pair and a magnitude on Linear or ungrouped Conv2d): per
    module, its config and kind. Warns when a channel's W + s B A is exactly zero: the file is exact, but a
    reader that divides by that norm gives NaN there."""
    out = {}
    zero: dict[str, int] = {}
    layers = am.layers()
    for module, config in bundle.configs.items():
        base = am.model.get_submodule(module).base
        if not isinstance(base, (nn.Linear, nn.Conv2d)) or getattr(base, "groups", 1) != 1:
            raise IncompatibleAdapterError(f"the {fmt} format holds DoRA on Linear and ungrouped Conv2d; {module!r} "
                                           "is not one")
        out[module] = (config, bundle.kinds[module])
        count = getattr(layers[module].layer_of(bundle.name), "zero_channels", None)  # the DoRA layer's
        if count is not None and (channels := count(bundle.name)):
            zero[module] = channels
    if zero:
        shown_zero = ", ".join(f"{m} ({n})" for m, n in sorted(zero.items()))
        warnings.warn(f"DoRA channels whose W + s B A is exactly zero, in {shown_zero}: they stay at their bias "
                      f"here, but PEFT (0.21) divides by their norm and gives NaN there: keep the native format, "
                      f"or leave those modules out of the adapter, for readers of this {fmt} file", AdapterhubWarning,
                      stacklevel=3)
    return out


def module_kinds(am: AdaptedModel) -> dict[str, str]:
    """Module name -> class name of the model's own module (seen through adapter layers), for messages and
    lookups."""
    return {n: type(m).__name__ for n, m in am.base_modules().items()}
