"""PEFT's (IA)^3 folders: peft_type IA3, one `ia3_l` vector per module, shaped (out, 1) / (1, in) for a
Linear and (1, channels, 1, 1) for a conv; `feedforward_modules` says which modules scale their input.
The family comes from the registry (the IA3 plugin registers it)."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from adapterhub_lite import AdaptedModel, AdapterBundle, AdapterFileError, IncompatibleAdapterError, safe_pattern

from .common import shown

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.ia3_l(?:\.[A-Za-z0-9_-]+)?$")


def _peft_shape(base: nn.Module, feedforward: bool, size: int) -> tuple[int, ...]:
    if isinstance(base, nn.Conv2d):
        return (1, size, 1, 1)
    return (1, size) if feedforward else (size, 1)


def export(source: AdaptedModel, name: str, prefix: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    bundle = source.bundle(name)
    modules = sorted(bundle.configs)
    tensors = {}
    for module in modules:
        base = source.model.get_submodule(module).base
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise IncompatibleAdapterError(f"the peft format holds ia3 on Linear and Conv2d; {module!r} is a "
                                           f"{type(base).__name__}")
        vector = source.adapter_state(name)[f"{module}.ia3_l"]
        tensors[f"{prefix}{module}.ia3_l"] = vector.reshape(
            _peft_shape(base, bundle.configs[module].feedforward, vector.numel())).contiguous()
    feedforward = [m for m in modules if bundle.configs[m].feedforward]
    config = {"peft_type": "IA3", "task_type": None, "base_model_name_or_path": source.base_id,
              "target_modules": "^(" + "|".join(re.escape(m) for m in modules) + ")$",
              "feedforward_modules": "^(" + "|".join(re.escape(m) for m in feedforward) + ")$" if feedforward else [],
              "fan_in_fan_out": False, "modules_to_save": None, "init_ia3_weights": True, "inference_mode": True}
    return config, tensors


def _is_feedforward(config: dict[str, Any], module: str) -> bool:
    """PEFT's own test: a full match of a string pattern, else a name in the list that the module's name ends
    with."""
    wanted = config.get("feedforward_modules") or []
    if isinstance(wanted, str):
        return safe_pattern(wanted, "feedforward_modules").fullmatch(module) is not None
    return any(module.endswith(item) for item in wanted)


def import_bundle(folder: Any, config: dict[str, Any], tensors: dict[str, Tensor], model: AdaptedModel) -> AdapterBundle:
    try:
        config_class = model.registry.config_class("ia3")
    except Exception as exc:
        raise IncompatibleAdapterError(f"{folder} holds an ia3 adapter: install the plugin that provides it "
                                       "(pip install adapterhub-lite-ia3)") from exc
    if config.get("modules_to_save") or config.get("fan_in_fan_out"):
        raise IncompatibleAdapterError(f"{folder}: modules_to_save and fan_in_fan_out are not supported for ia3")
    state, configs = {}, {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise IncompatibleAdapterError(f"{folder}: tensor {shown(key)} is not an ia3 vector")
        module = match["module"]
        feedforward = _is_feedforward(config, module)
        try:
            base = model.model.get_submodule(module)
        except AttributeError:
            raise IncompatibleAdapterError(f"{folder}: {shown(module)} names no module of this model") from None
        expected = _peft_shape(base, feedforward, tensor.numel())
        if tuple(tensor.shape) != expected:
            raise IncompatibleAdapterError(f"{folder}: {module!r} has an ia3 vector of shape {tuple(tensor.shape)}, "
                                           f"not {expected} as a {'feed-forward' if feedforward else 'output'} scale")
        state[f"{module}.ia3_l"] = tensor.reshape(-1)
        configs[module] = config_class(targets=[module], feedforward=feedforward)
    if not configs:
        raise AdapterFileError(f"{folder} holds no ia3 vectors")
    return AdapterBundle(name=folder.name, family="ia3", configs=configs, state=state,
                         base_model=config.get("base_model_name_or_path"))
