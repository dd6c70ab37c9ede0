"""diffusers' LoRA file (`save_lora_weights`, `pytorch_lora_weights.safetensors`): PEFT state dicts of a
pipeline's parts in one safetensors file, each key under its part:

    unet.<module>.lora_A.weight, unet.<module>.lora_B.weight, text_encoder.<module>.lora_A.weight, ...

(`text_encoder_2.`, `transformer.` likewise). The header's `lora_adapter_metadata` (JSON, keys
`<part>.<LoraConfig field>`) holds each part's PEFT LoraConfig when the writer saved it; without it diffusers
loads every module at scale 1 (alpha = rank), and so do we, so the outputs are those diffusers gives. Each
part is read as a PEFT adapter (peft.py's rules and refusals), onto the part of the same name of a pipeline's
modules (the hf plugin's), or onto a bare model when the file holds only that one part. Writing this layout is
left to diffusers: export `kohya` (which diffusers reads) or `peft`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from adapterhub_lite import AdaptedModel, AdapterBundle, AdapterFileError, IncompatibleAdapterError, parse_json

from . import peft
from .common import read_safetensors, shown

WEIGHTS = "pytorch_lora_weights.safetensors"
METADATA = "lora_adapter_metadata"
PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_KEY = re.compile(r"^(?P<part>[a-z_0-9]+)\.(?P<module>.+)\.(?P<tensor>lora_[AB]\.weight|lora_magnitude_vector)$")


def _file(src: Path) -> Path:
    if src.is_dir():
        found = sorted(src.glob("*.safetensors"))
        if (src / WEIGHTS).is_file():
            return src / WEIGHTS
        if len(found) != 1:
            raise AdapterFileError(f"{src} holds {len(found)} safetensors files and no {WEIGHTS}: name the file")
        return found[0]
    return src


def _part_configs(header: dict[str, str], where: Path) -> dict[str, dict[str, Any]]:
    """Each part's LoraConfig fields from the header's metadata, if the writer saved them."""
    raw = header.get(METADATA)
    if raw is None:
        return {}
    try:
        packed = parse_json(raw)
    except ValueError as exc:  # malformed or past the limits of adapterhub_lite's bounded JSON
        raise AdapterFileError(f"{where}: its {METADATA} is not valid JSON ({shown(str(exc), 80)})") from exc
    if not isinstance(packed, dict):
        raise AdapterFileError(f"{where}: its {METADATA} is a JSON {type(packed).__name__}, not an object")
    configs: dict[str, dict[str, Any]] = {}
    for key, value in packed.items():
        part, _, field_name = str(key).partition(".")
        configs.setdefault(part, {})[field_name] = value
    return configs


def _owner(module: str, part: str, modules: set[str], pipeline: bool) -> str | None:
    """Our module for `module` of `part`: under the part of that name in a pipeline's modules, else the bare
    model's own; a CLIP text encoder saved with its `text_model.` level maps onto one without it."""
    for name in (module, module.removeprefix("text_model.")):
        ours = f"{part}.{name}" if pipeline else name
        if ours in modules:
            return ours
    return None


def import_(src: Path, model: AdaptedModel, **options: Any) -> AdapterBundle:
    path = _file(Path(src))
    tensors, header = read_safetensors(path)
    children = {name for name, _ in model.model.named_children()}
    pipeline = bool(children & set(PARTS))
    modules = set(model.base_modules())
    grouped: dict[str, dict[str, Any]] = {}
    for key, tensor in sorted(tensors.items()):
        match = _KEY.match(key)
        if match is None or match["part"] not in PARTS:
            old = any(marker in key for marker in (".processor.", "_lora.", "lora_linear_layer", "lora_down"))
            raise IncompatibleAdapterError(
                f"{path}: tensor {shown(key)} is not a diffusers LoRA key (<part>.<module>.lora_A.weight, part one "
                f"of {', '.join(PARTS)})" + ("; this is an older diffusers or kohya layout: load it in diffusers "
                                             "and save it again, or import it as kohya" if old else ""))
        part = match["part"]
        if pipeline and part not in children:
            raise IncompatibleAdapterError(f"{path}: {shown(key)} is for the pipeline's {part}, which this model "
                                           f"does not hold (it holds {', '.join(sorted(children))}); nothing was "
                                           "imported")
        ours = _owner(match["module"], part, modules, pipeline)
        if ours is None:
            raise IncompatibleAdapterError(f"{path}: {shown(part + '.' + match['module'])} names no module of this "
                                           "model; nothing was imported")
        grouped.setdefault(part, {})[f"{peft.PREFIX}{ours}.{match['tensor']}"] = tensor
    if not grouped:
        raise AdapterFileError(f"{path} holds no LoRA tensors")
    if not pipeline and len(grouped) > 1:
        raise IncompatibleAdapterError(f"{path} holds LoRAs for {', '.join(sorted(grouped))}; this model is one "
                                       "network: bring the pipeline's modules into the zoo (adapters zoo add-base "
                                       "NAME --from-pretrained PIPELINE_DIR) and import it there")
    saved = _part_configs(header, path)
    configs, state, families = {}, {}, set()
    for part, part_tensors in grouped.items():
        config = saved.get(part) or _scale_one(part_tensors)
        config = {"peft_type": "LORA", **config}
        bundle = peft.bundle_from(config, part_tensors, model, path)
        configs.update(bundle.configs)
        state.update(bundle.state)
        families.add(bundle.family)
    if len(families) > 1:
        raise IncompatibleAdapterError(f"{path} mixes {' and '.join(sorted(families))} parts; an adapter here holds "
                                       "one family")
    return AdapterBundle(name=path.stem, family=families.pop(), configs=configs, state=state)


def _scale_one(tensors: dict[str, Any]) -> dict[str, Any]:
    """The config diffusers makes when a file carries no metadata: every module at alpha = its rank."""
    ranks = {key.removeprefix(peft.PREFIX).removesuffix(".lora_A.weight"): int(t.shape[0])
             for key, t in tensors.items() if key.endswith(".lora_A.weight")}
    patterns = {peft.anchored(module): rank for module, rank in ranks.items()}
    use_dora = any(key.endswith(".lora_magnitude_vector") for key in tensors)
    return {"r": 8, "lora_alpha": 8, "rank_pattern": patterns, "alpha_pattern": patterns, "use_dora": use_dora}
