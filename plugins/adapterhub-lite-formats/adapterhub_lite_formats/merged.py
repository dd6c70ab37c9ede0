"""The base with adapters fused in, as a plain safetensors state dict: `model.load_state_dict(load_file(p))`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from .common import read_safetensors


def export(source: Mapping[str, Tensor], dest: Path, *, name: str | None = None, **options: Any) -> Path:
    dest = dest / "model.safetensors" if dest.is_dir() else dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in source.items()}, str(dest), metadata={"format": "pt"})
    return dest


def import_(src: Path, model: Any, **options: Any) -> dict[str, Tensor]:
    return read_safetensors(src)[0]
