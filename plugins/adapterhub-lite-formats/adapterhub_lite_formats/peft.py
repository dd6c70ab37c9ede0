"""PEFT's adapter folder: adapter_config.json + adapter_model.safetensors.

Keys are `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`
(`.lora_embedding_A` / `.lora_embedding_B` on an nn.Embedding); the scale is
`lora_alpha / r` (or `/ sqrt(r)` with `use_rslora`), with per-module
`rank_pattern` / `alpha_pattern`. Only what PEFT and we compute identically
is accepted: plain LoRA on Linear, transformers' Conv1D, Embedding,
nn.MultiheadAttention (PEFT's packed layout, peft_mha.py) and ungrouped
Conv1d/Conv2d with zero padding and no dilation (PEFT's A conv takes neither
the base's dilation nor its padding mode). Trained biases,
modules_to_save and pickled `.bin` weights are refused. `fan_in_fan_out` does
not change the math: PEFT sets it per module by the module's type.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from adapterhub_lite_lora import LoraConfig, LoraMultiheadAttention
from safetensors.torch import save_file
from torch import nn

from adapterhub_lite import (
    AdaptedModel,
    AdapterBundle,
    AdapterFileError,
    AdapterhubWarning,
    ConfigError,
    IncompatibleAdapterError,
    read_json,
    safe_pattern,
)

from . import peft_ia3, peft_lycoris, peft_mha
from .common import dora_modules, module_kinds, plain_lora, read_safetensors, shown

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
CONFIG_LIMIT = 4 << 20  # bytes of adapter_config.json: a real one, rank patterns for every module included, is KBs
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_EMBEDDING_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_embedding_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?$")
_MAGNITUDE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_magnitude_vector(?:\.[A-Za-z0-9_-]+)?$")
REFUSED = {  # config field -> (value that is fine, why anything else is refused)
    "bias": ("none", "it trains biases, which a LoRA adapter here does not hold"),
    "modules_to_save": (None, "it carries fully trained modules, not LoRA factors"),
    "layer_replication": (None, "layer replication changes the base model's structure"),
    "target_parameters": (None, "it adapts raw parameters, not modules"),
    "lora_bias": (False, "its lora_B carries a bias, which a LoRA adapter here does not hold"),
    "trainable_token_indices": (None, "it trains embedding rows for chosen tokens, not LoRA factors"),
    "alora_invocation_tokens": (None, "activated LoRA (aLoRA) applies only after its invocation tokens"),
    "use_qalora": (False, "QALoRA pools the input in groups before A, for quantized bases"),
    "use_bdlora": (None, "BD-LoRA's block-diagonal factors are another product than B @ A"),
    "arrow_config": (None, "Arrow routes among several LoRA experts per token"),
    "kasa_config": (None, "KaSA adds a singular-value term to the LoRA product"),
    "monteclora_config": (None, "MonteCLoRA adds variational Monte Carlo sampling on top of the factors"),
    "megatron_config": (None, "it was made for Megatron's parallel layers"),
}
# init_lora_weights values whose adapter is only right on a base PEFT changed at init (the residual W - B A, or a
# quantised W): PEFT converts them to a plain LoRA on save when given path_initial_model_for_weight_conversion
_MODIFIED_BASE_INITS = ("pissa", "olora", "corda", "loftq")


def export(source: AdaptedModel, dest: Path, *, name: str | None = None, **options: Any) -> Path:
    bundle = source.bundle(name)
    if bundle.family in peft_lycoris.PEFT_TYPES:
        config = peft_lycoris.export_config(source, bundle, anchored)
        return _write(dest, config, peft_lycoris.export_tensors(source, name, PREFIX))
    if bundle.family == "ia3":
        return _write(dest, *peft_ia3.export(source, name, PREFIX))
    if bundle.family not in ("lora", "dora"):
        raise IncompatibleAdapterError(f"the peft format holds lora, dora, {', '.join(peft_lycoris.PEFT_TYPES)} and "
                                       f"ia3 adapters; this one is {bundle.family!r} (export it as native)")
    dora = bundle.family == "dora"
    layers = source.layers()
    attention = {m for m in bundle.configs if isinstance(layers[m].layer_of(bundle.name), LoraMultiheadAttention)}
    modules = dora_modules(source, bundle, "peft") if dora else plain_lora(source, name, "peft", skip=attention)
    bases = {m: source.model.get_submodule(m).base for m in modules}
    for module, base in bases.items():
        _check_peft_computes_it(base, module, "this adapter")
    ranks = {m: c.rank for m, (c, _) in modules.items()}
    alphas = {m: c.alpha for m, (c, _) in modules.items()}
    attention_tensors = {}
    for module in sorted(attention):  # PEFT's packed layout, at its own rank and alpha (peft_mha.py)
        config = bundle.configs[module]
        attention_tensors[module], ranks[module], alphas[module] = peft_mha.export_module(source, name, module, config)
        modules[module] = (config, bundle.kinds[module])
    rslora = {c.rslora for c, _ in modules.values()}
    dropouts = {c.dropout for c, _ in modules.values()}
    if len(rslora) > 1:
        raise IncompatibleAdapterError("PEFT has one use_rslora per adapter; this adapter mixes both: "
                                       "combine it with method cat first")
    r, alpha = max(ranks.values()), alphas[max(ranks, key=ranks.get)]
    if len(dropouts) > 1:
        warnings.warn(f"modules use lora_dropout {sorted(dropouts)}; PEFT has one lora_dropout per adapter, "
                      f"written as {max(dropouts)} (it matters only when training further)", AdapterhubWarning,
                      stacklevel=2)
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": source.base_id,
        "r": r, "lora_alpha": alpha, "use_rslora": rslora.pop(), "lora_dropout": max(dropouts),
        "target_modules": "^(" + "|".join(re.escape(m) for m in sorted(modules)) + ")$",  # exact names only
        # PEFT reads each key as a regex matched against the end of a module name (`(.*\.)?(KEY)$`), so a bare
        # `lin0` would also set `block.lin0`: anchored, a key matches its own module only
        "rank_pattern": {anchored(m): ranks[m] for m in sorted(modules) if ranks[m] != r},
        "alpha_pattern": {anchored(m): alphas[m] for m in sorted(modules) if alphas[m] != alpha},
        "bias": "none", "use_dora": dora, "modules_to_save": None,
        # PEFT sets it per module by type anyway (warning when the config disagrees): true where Conv1D is
        "fan_in_fan_out": any(type(b).__name__ == "Conv1D" for b in bases.values()),
        "init_lora_weights": True, "inference_mode": True,
        "peft_version": peft_mha.FIXED_IN,  # what the file means: without it PEFT >= 0.22 doubles out_proj's B
    }
    tensors = {}
    for module, parts in attention_tensors.items():
        tensors.update({f"{PREFIX}{module}.{key}": t for key, t in parts.items()})
    for key, tensor in source.adapter_state(name).items():
        module, _, factor = key.rpartition(".")
        if module.rpartition(".")[0] in attention:
            continue  # written above
        if factor == "lora_magnitude":  # PEFT's shape: (out,) for a Linear, (1, out, 1, 1) for a conv
            conv = isinstance(source.model.get_submodule(module).base, nn.Conv2d)
            tensors[f"{PREFIX}{module}.lora_magnitude_vector"] = (tensor.view(1, -1, 1, 1) if conv else tensor
                                                                  ).detach().contiguous()
        elif isinstance(bases[module], nn.Embedding):  # PEFT's embedding factors are parameters, not modules
            tensors[f"{PREFIX}{module}.lora_embedding_{factor[-1]}"] = tensor.detach().contiguous()
        else:
            tensors[f"{PREFIX}{module}.{factor}.weight"] = tensor.detach().contiguous()
    return _write(dest, config, tensors)


PEFT_LORA_TYPES = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "MultiheadAttention")  # what PEFT's LoRA and ours both wrap


def _check_peft_computes_it(base: nn.Module, module: str, where: Any) -> None:
    """Refuse a module where PEFT's LoRA forward would compute something else than ours."""
    kind = type(base).__name__
    if kind not in PEFT_LORA_TYPES:
        raise IncompatibleAdapterError(f"{where}: {shown(module)} is a {kind} in this model; PEFT LoRA files hold "
                                       f"{', '.join(PEFT_LORA_TYPES)} modules")
    if isinstance(base, (nn.Conv1d, nn.Conv2d)):
        why = ("groups > 1" if base.groups != 1 else f"padding_mode={base.padding_mode!r}"
               if base.padding_mode != "zeros" else f"dilation {base.dilation}" if set(base.dilation) != {1} else "")
        if why:
            raise IncompatibleAdapterError(
                f"{where}: {shown(module)} is a {kind} with {why}, and PEFT's LoRA runs its A conv without it (other "
                "outputs than the merged weights); export it as native or merged")


def _write(dest: Path, config: dict[str, Any], tensors: dict[str, Any]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    return dest


def anchored(module: str) -> str:
    """A rank_pattern / alpha_pattern key that PEFT matches to exactly this module name."""
    return "^" + re.escape(module)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's lookup: the first pattern key that matches the end of the module name."""
    for key, value in patterns.items():
        safe_pattern(key, "a rank_pattern / alpha_pattern key")  # bounded work, or one line (cached)
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {  # adapter_config.json field -> accepted JSON types
    "peft_type": (str,), "r": (int,), "lora_alpha": (int, float), "alpha": (int, float), "use_rslora": (bool,),
    "decompose_both": (bool,), "decompose_factor": (int,), "use_effective_conv2d": (bool,),
    "feedforward_modules": (str, list, type(None)),
    "lora_dropout": (int, float, type(None)), "rank_pattern": (dict, type(None)),
    "alpha_pattern": (dict, type(None)), "target_modules": (str, list, type(None)),
    "base_model_name_or_path": (str, type(None)), "peft_version": (str, type(None)),
}


def _check_config(config: Any, where: Path) -> dict[str, Any]:
    """Refuse a config whose fields have the wrong JSON types (before any of them is used)."""
    if not isinstance(config, dict):
        raise AdapterFileError(f"{where} holds a JSON {type(config).__name__}, not an object: not a PEFT config")
    for key, types in _CONFIG_TYPES.items():
        value = config.get(key)
        if key in config and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise AdapterFileError(f"{where}: {key} is {shown(value)}, expected "
                                   f"{' or '.join('null' if t is type(None) else t.__name__ for t in types)}")
    for field_name in ("rank_pattern", "alpha_pattern"):
        for key, value in (config.get(field_name) or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AdapterFileError(f"{where}: {field_name}[{shown(key)}] is {shown(value)}, not a number")
            try:
                safe_pattern(key, f"{where}: {field_name} key")
            except ConfigError as exc:
                raise AdapterFileError(str(exc)) from None
    return config


def import_(src: Path, model: AdaptedModel, **options: Any) -> AdapterBundle:
    folder = src if src.is_dir() else src.parent
    if not (folder / CONFIG).is_file():
        raise AdapterFileError(f"{folder} has no {CONFIG}: not a PEFT adapter folder")
    if not (folder / WEIGHTS).is_file():
        found = "adapter_model.bin (a pickle, which is never loaded here)" if (folder / "adapter_model.bin").exists() \
            else "no weights"
        raise AdapterFileError(f"{folder} has {found}; re-save it with safe_serialization=True to get {WEIGHTS}")
    try:
        config = read_json(folder / CONFIG, CONFIG_LIMIT)
    except ValueError as exc:  # malformed, not UTF-8, or past the limits of adapterhub_lite's bounded JSON
        raise AdapterFileError(f"{folder / CONFIG} is not valid JSON ({shown(str(exc), 80)})") from exc
    return bundle_from(config, read_safetensors(folder / WEIGHTS)[0], model, folder)


def bundle_from(config: Any, tensors: dict[str, Any], model: AdaptedModel, folder: Path) -> AdapterBundle:
    """The adapter a PEFT config and its tensors (keyed `base_model.model.<module>...`) describe on `model`;
    `folder` names where they came from in messages. Also used by readers of files that hold PEFT state dicts
    (diffusers' LoRA files)."""
    config = _check_config(config, folder / CONFIG)
    if config.get("peft_type") == "IA3":
        return peft_ia3.import_bundle(folder, config, tensors, model)
    if config.get("peft_type") in peft_lycoris.FAMILIES:
        return peft_lycoris.import_bundle(folder, config, tensors, model, _pattern_value)
    if config.get("peft_type") != "LORA":
        raise IncompatibleAdapterError(f"{folder} holds a {shown(config.get('peft_type'))} adapter; LORA, "
                                       f"{', '.join(peft_lycoris.FAMILIES)} import")
    for field_name, (fine, why) in REFUSED.items():
        value = config.get(field_name, fine)
        sub_config = fine is None and isinstance(value, dict)  # PEFT turns a sub-config on even when it is {}
        if (value or sub_config) and value != fine:  # absent, empty, False, None or the fine value pass
            raise IncompatibleAdapterError(f"{folder}: {field_name}={shown(value)} is not supported: {why}")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_MODIFIED_BASE_INITS):
        raise IncompatibleAdapterError(
            f"{folder}: init_lora_weights={shown(init)}: the adapter is only right on the base PEFT modified when "
            "it initialised it, not on the original; save it with path_initial_model_for_weight_conversion (a plain "
            "LoRA on the original base) and import that")
    dora = bool(config.get("use_dora"))
    family = "dora" if dora else "lora"
    config_class = LoraConfig
    if dora:
        try:
            config_class = model.registry.config_class("dora")
        except Exception as exc:  # the DoRA plugin is not installed
            raise IncompatibleAdapterError(f"{folder} holds a DoRA adapter (use_dora=True): install the plugin that "
                                           "provides it (pip install adapterhub-lite-dora)") from exc
    state, configs = {}, {}
    modules = model.base_modules()
    kinds = module_kinds(model)
    attention: dict[str, dict[str, dict[str, Any]]] = {}  # module -> "in"/"out" -> "A"/"B" -> tensor
    for key, tensor in tensors.items():
        magnitude = _MAGNITUDE.match(key)
        if magnitude is not None and dora:
            state[f"{magnitude['module']}.lora_magnitude"] = tensor.reshape(-1)
            continue
        match = _KEY.match(key) or _EMBEDDING_KEY.match(key)
        if match is None:
            raise IncompatibleAdapterError(f"{folder / WEIGHTS}: tensor {shown(key)} is not a LoRA factor "
                                           "(a DoRA magnitude without use_dora, a bias or a saved module?)")
        module = match["module"]
        owner = module.removesuffix(peft_mha.OUT_PROJ)
        if isinstance(modules.get(owner), nn.MultiheadAttention) and match.re is _KEY:  # peft_mha.py
            attention.setdefault(owner, {}).setdefault("out" if owner != module else "in", {})[match["ab"]] = tensor
            continue
        if module not in modules:
            raise IncompatibleAdapterError(f"{folder}: {shown(module)} is a missing module in this model")
        if (kinds[module] == "Embedding") != (match.re is _EMBEDDING_KEY):
            raise IncompatibleAdapterError(f"{folder / WEIGHTS}: {shown(key)} is laid out for "
                                           f"{'an Embedding' if match.re is _EMBEDDING_KEY else 'a Linear or conv'}, "
                                           f"but {shown(module)} is a {kinds[module]} in this model")
        _check_peft_computes_it(modules[module], module, folder)
        state[f"{module}.lora_{match['ab']}"] = tensor
    def module_config(module: str, rank: int, **extra: Any) -> Any:
        return config_class(
            targets=[module], rank=rank, rslora=bool(config.get("use_rslora", False)),
            alpha=float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))),
            dropout=float(config.get("lora_dropout") or 0.0), **extra)

    for key, tensor in state.items():
        if key.endswith(".lora_A"):
            module = key[: -len(".lora_A")]
            configs[module] = module_config(module, int(tensor.shape[0]))
    for module, pairs in attention.items():
        if dora:
            raise IncompatibleAdapterError(f"{folder}: DoRA on nn.MultiheadAttention ({shown(module)}) is not supported")
        _check_peft_computes_it(modules[module], module, folder)
        parts, projections, rank = peft_mha.import_module(module, pairs, modules[module], folder,
                                                          doubled=peft_mha.out_proj_doubled(config))
        state.update(parts)
        configs[module] = module_config(module, rank, attention_projections=projections)
    if not configs:
        raise AdapterFileError(f"{folder / WEIGHTS} holds no LoRA factors")
    missing = sorted(m for m in configs if dora and f"{m}.lora_magnitude" not in state)
    if missing:
        raise IncompatibleAdapterError(f"{folder}: use_dora=True, but DoRA module {missing[0]!r} has no "
                                       "lora_magnitude_vector: the file is incomplete")
    return AdapterBundle(name=folder.name, family=family, configs=configs, state=state,
                         base_model=config.get("base_model_name_or_path"))
