"""What the LoRA file layouts share: reading safetensors safely and checking what fits them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from adapterhub_lite import AdaptedModel, AdapterFileError, IncompatibleAdapterError, LoraConfig, load_tensors


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata, the header checked before anything is mapped; never unpickles anything."""
    if not path.is_file():
        raise AdapterFileError(f"no file at {path}")
    return load_tensors(path)


def shown(value: Any, limit: int = 60) -> str:
    """A value from a file, cut for a message (a hostile file's field can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
