"""What the LoRA file layouts share: reading safetensors safely and checking what fits them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from adapterhub_lite import AdaptedModel, AdapterFileError, IncompatibleAdapterError, LoraConfig


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata; never unpickles anything."""
    if not path.is_file():
        raise AdapterFileError(f"no file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{path} is not a readable safetensors file: {exc}") from exc


def plain_lora(am: AdaptedModel, name: str, fmt: str) -> dict[str, tuple[LoraConfig, str]]:
    """Per target module: its config and kind, refusing what the format cannot hold exactly."""
    bundle = am.bundle(name)
    out = {}
    for module, config in bundle.configs.items():
        kind = bundle.kinds[module]
        if not isinstance(config, LoraConfig) or kind not in ("lora-linear", "lora-conv2d"):
            raise IncompatibleAdapterError(
                f"the {fmt} format holds LoRA on Linear and Conv2d layers; {module!r} has a {kind!r} adapter "
                "(export it as native, or merge it into the base and export the merged model)")
        if getattr(am.model.get_submodule(module).base, "groups", 1) != 1:
            raise IncompatibleAdapterError(f"the {fmt} format has no grouped-conv LoRA; {module!r} has groups > 1")
        out[module] = (config, kind)
    return out


def module_kinds(model: Any) -> dict[str, str]:
    """Module name -> class name, for messages and lookups."""
    return {n: type(m).__name__ for n, m in model.named_modules() if n}
