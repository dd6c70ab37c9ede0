"""PEFT's LoHa and LoKr folders: peft_type LOHA / LOKR, keys `base_model.model.<module>.<factor>`, scale
alpha / r with per-module `rank_pattern` / `alpha_pattern`, LyCORIS's factor layouts with conv kernels
flattened, or as Tucker cores (`use_effective_conv2d`, one value per adapter: our `tucker`). The families come
from the registry (the LyCORIS plugin registers them): this format needs no import of that plugin, and says
what to install when it is missing.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from adapterhub_lite import AdaptedModel, AdapterBundle, AdapterFileError, IncompatibleAdapterError

from .common import shown

PEFT_TYPES = {"loha": "LOHA", "lokr": "LOKR"}
FAMILIES = {v: k for k, v in PEFT_TYPES.items()}
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<param>(?:hada|lokr)_[wt][12](?:_[ab])?)"
                  r"(?:\.[A-Za-z0-9_-]+)?$")
REFUSED = {  # config field -> (value that is fine, why anything else is refused)
    "modules_to_save": (None, "it carries fully trained modules, not factors"),
    "layer_replication": (None, "layer replication changes the base model's structure"),
}


def export_config(source: AdaptedModel, bundle: AdapterBundle, anchored: Any) -> dict[str, Any]:
    """The adapter_config.json of a LoHa or LoKr adapter (modules checked first)."""
    family, modules = bundle.family, sorted(bundle.configs)
    for module in modules:
        kind = type(source.model.get_submodule(module).base).__name__
        if kind not in ("Linear", "Conv2d"):
            raise IncompatibleAdapterError(f"the peft format holds {family} on Linear and Conv2d; {module!r} is a {kind}")
    ranks = {m: bundle.configs[m].rank for m in modules}
    alphas = {m: bundle.configs[m].alpha for m in modules}
    r, alpha = max(ranks.values()), alphas[max(ranks, key=ranks.get)]
    config: dict[str, Any] = {
        "peft_type": PEFT_TYPES[family], "task_type": None, "base_model_name_or_path": source.base_id,
        "r": r, "alpha": alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
        "use_effective_conv2d": _one_tucker(source, bundle, modules),
        "target_modules": "^(" + "|".join(re.escape(m) for m in modules) + ")$",
        "rank_pattern": {anchored(m): ranks[m] for m in modules if ranks[m] != r},
        "alpha_pattern": {anchored(m): alphas[m] for m in modules if alphas[m] != alpha},
        "modules_to_save": None, "init_weights": True, "inference_mode": True,
    }
    if family == "lokr":
        for module in modules:  # a split from a file, kept only when PEFT's one decompose_factor gives it too
            own, shape = bundle.configs[module], tuple(source.model.get_submodule(module).base.weight.shape)
            if own.w1_shape and own.factor_shapes(shape) != own.replace(w1_shape=()).factor_shapes(shape):
                raise IncompatibleAdapterError(
                    f"PEFT's LoKr splits sizes by decompose_factor; {module!r} has w1 of shape {own.w1_shape}, "
                    "which it does not give (export it as kohya or native)")
        for field_name in ("decompose_both", "decompose_factor"):
            values = {getattr(bundle.configs[m], field_name) for m in modules}
            if len(values) > 1:
                raise IncompatibleAdapterError(f"PEFT has one {field_name} per LoKr adapter; this one mixes {values}")
            config[field_name] = values.pop()
        config["rank_dropout_scale"] = False
    return config


def _one_tucker(source: AdaptedModel, bundle: AdapterBundle, modules: list[str]) -> bool:
    """PEFT's one use_effective_conv2d for the adapter: the `tucker` of every module it changes something on (a
    conv with a kernel bigger than 1x1), which must agree."""
    values = {bundle.configs[m].tucker for m in modules
              if any(k != 1 for k in source.model.get_submodule(m).base.weight.shape[2:])}
    if len(values) > 1:
        raise IncompatibleAdapterError("PEFT has one use_effective_conv2d per adapter; this one has Tucker conv "
                                       "kernels on some modules and flattened ones on others (export it as kohya "
                                       "or native)")
    return values.pop() if values else False


def export_tensors(source: AdaptedModel, name: str, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{key}": tensor.detach().contiguous() for key, tensor in source.adapter_state(name).items()}


def import_bundle(folder: Any, config: dict[str, Any], tensors: dict[str, Tensor], model: AdaptedModel,
                  pattern_value: Any) -> AdapterBundle:
    """A PEFT LoHa or LoKr folder as an adapter on `model`'s base."""
    family = FAMILIES[config["peft_type"]]
    try:
        config_class = model.registry.config_class(family)
    except Exception as exc:  # the family's plugin is not installed
        raise IncompatibleAdapterError(f"{folder} holds a {family} adapter: install the plugin that provides it "
                                       "(pip install adapterhub-lite-lycoris)") from exc
    for field_name, (fine, why) in REFUSED.items():
        value = config.get(field_name, fine)
        if value and value != fine:
            raise IncompatibleAdapterError(f"{folder}: {field_name}={shown(value)} is not supported: {why}")
    state: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise IncompatibleAdapterError(f"{folder}: tensor {shown(key)} is not a {family} factor this version "
                                           "builds (saved modules are refused)")
        state[f"{match['module']}.{match['param']}"] = tensor
    modules = sorted({key.rsplit(".", 1)[0] for key in state})
    if not modules:
        raise AdapterFileError(f"{folder} holds no {family} factors")
    extra = {k: config[k] for k in ("decompose_both", "decompose_factor") if family == "lokr" and k in config}
    extra["tucker"] = bool(config.get("use_effective_conv2d", False))  # PEFT keeps 1x1 convs flat, as we do
    configs = {m: config_class(targets=[m], rank=int(pattern_value(config.get("rank_pattern") or {}, m,
                                                                   config.get("r", 8))),
                               alpha=float(pattern_value(config.get("alpha_pattern") or {}, m,
                                                         config.get("alpha", 8))), **extra)
               for m in modules}
    return AdapterBundle(name=folder.name, family=family, configs=configs, state=state,
                         base_model=config.get("base_model_name_or_path"))
