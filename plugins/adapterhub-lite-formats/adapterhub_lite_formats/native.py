"""The core's own safetensors file, as a format (so export/import treat every format alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterhub_lite import AdaptedModel, AdapterBundle, read_adapter_file, save_adapter


def export(source: AdaptedModel, dest: Path, *, name: str | None = None, **options: Any) -> Path:
    dest = dest / f"{name}.safetensors" if dest.is_dir() else dest
    return save_adapter(source, name, dest)


def import_(src: Path, model: AdaptedModel, **options: Any) -> AdapterBundle:
    return read_adapter_file(src).bundle(model.registry)
