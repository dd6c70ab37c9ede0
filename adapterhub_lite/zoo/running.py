"""Run a stacked model on tensors from a file (`adapters apply REFS --inputs FILE --out FILE`): works for any
model, with or without a task, e.g. a GPT-2 brought in with `zoo add-base` on its token ids."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import publish
from ..errors import ConfigError, UnknownNameError
from ..tensorfile import load_tensors, untied


def run_on_file(model: nn.Module, inputs: Path, out: Path, module_path: str | None = None) -> dict[str, list[int]]:
    """Call `model` (or its submodule `module_path`) with the tensors of `inputs` as keyword arguments and
    write every tensor of its output to `out`; returns each output's shape."""
    tensors, _ = load_tensors(inputs)
    target = model
    if module_path:
        names = dict(model.named_modules())
        if module_path not in names:
            raise UnknownNameError("module", module_path, [n for n, _ in model.named_children()])
        target = names[module_path]
    try:
        with torch.no_grad():
            output = target(**tensors)
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        what = f"module {module_path!r}" if module_path else type(model).__name__
        raise ConfigError(f"{what} could not run on {inputs} (tensors: {', '.join(sorted(tensors)) or 'none'}): "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
    found = dict(_tensors_in(output))
    if not found:
        raise ConfigError(f"the model returned no tensors for {inputs}")
    publish(out, lambda target: save_file(untied(found), str(target), metadata={"format": "pt"}))
    return {name: list(t.shape) for name, t in found.items()}


def _tensors_in(value: Any, name: str = "output") -> Any:
    """(dotted name, tensor) for every tensor in a model's output: a tensor, a mapping (ModelOutput), a
    tuple or list, nested."""
    if isinstance(value, Tensor):
        yield name, value.detach()
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors_in(item, str(key) if name == "output" else f"{name}.{key}")
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _tensors_in(item, f"{name}.{index}")
