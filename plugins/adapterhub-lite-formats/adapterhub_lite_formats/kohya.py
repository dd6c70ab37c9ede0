"""The kohya / LyCORIS layout: one safetensors file, each adapted module's tensors under

    <prefix>_<module path with '.' -> '_'>.<tensor>

    LoRA   lora_down.weight (A), lora_up.weight (B), alpha        scale = alpha / rank
    DoRA   the three above and dora_scale (the magnitude, (out, 1[, 1, 1]), LyCORIS's `dora_wd`)
    LoHa   hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha      (kohya_lycoris.py)
    LoKr   lokr_w1 | lokr_w1_a + lokr_w1_b, lokr_w2 | lokr_w2_a + lokr_w2_b, alpha

with `ss_network_*` fields in the header. Export writes the prefix `lora_unet` (kohya's sd-scripts and
LyCORIS's kohya network write it; A1111 and ComfyUI read it); on a pipeline's modules (children `unet`,
`text_encoder`, ...) each part gets Stable Diffusion's prefix (`prefixes`); import also takes `lycoris`
(LyCORIS's own wrapper). A missing or zero alpha means alpha = rank, as both write it. kohya has no rsLoRA: its alpha is
written as alpha*sqrt(r), which gives the same delta. Module names are recovered by matching against the
target model's own names. What this layout holds beyond these (Tucker/CP conv kernels, LyCORIS's IA3, OFT,
full or norm modules) is refused by name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from adapterhub_lite import AdaptedModel, AdapterBundle, AdapterFileError, IncompatibleAdapterError
from adapterhub_lite_lora import LoraConfig

from . import kohya_lycoris
from .common import dora_modules, plain_lora, read_safetensors, shown

PREFIX = "lora_unet"
PREFIXES = (PREFIX, "lycoris")
_KEY = re.compile(r"^(?P<flat>[A-Za-z0-9_]+)\.(?P<part>lora_(?:down|up|mid)\.weight|alpha|dora_scale|"
                  r"(?:hada|lokr)_[wt][12](?:_[ab])?)$")
_TUCKER = {"lora_mid.weight", "lokr_t1"}  # LoCon's Tucker core, and a w1 core LyCORIS never writes
_ALLOWED = {"lora": {"lora_down.weight", "lora_up.weight", "alpha"},
            "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
            **{family: {*factors, "alpha"} for family, factors in kohya_lycoris.FACTORS.items()}}
_PLUGINS = {"dora": "adapterhub-lite-dora", "loha": "adapterhub-lite-lycoris", "lokr": "adapterhub-lite-lycoris"}


# kohya's prefixes for the parts of a Stable Diffusion pipeline (sd-scripts' LORA_PREFIX_UNET and
# LORA_PREFIX_TEXT_ENCODER; SDXL's two text encoders are lora_te1 and lora_te2; a DiT's transformer is written
# under lora_unet as kohya does for Flux and SD3)
PIPELINE_PREFIXES = {"unet": PREFIX, "transformer": PREFIX, "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def prefixes(model: nn.Module) -> dict[str, list[str]]:
    """Module-path prefix -> the kohya prefixes of that part, the first one written, all read.

    A model whose children are a pipeline's parts (`unet`, `text_encoder`, ...: the hf plugin's pipeline
    modules) is named as kohya names that pipeline, each part under its own prefix (`unet.down_blocks.0...` ->
    `lora_unet_down_blocks_0...`). kohya's text-encoder names follow CLIPTextModel's layout with its
    `text_model` module (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`); transformers 5 dropped that
    level from CLIPTextModel, so a text encoder without it gets `text_model` back in its kohya names (and a file
    without it is read too). Any other model is one network under `lora_unet`.
    """
    children = dict(model.named_children())
    if not children.keys() & PIPELINE_PREFIXES.keys():
        return {"": [PREFIX]}
    found = {}
    for part, prefix in PIPELINE_PREFIXES.items():
        if part not in children:
            continue
        if part == "text_encoder" and "text_encoder_2" in children:
            prefix = "lora_te1"
        sub = {name for name, _ in children[part].named_children()}
        flat_clip = part.startswith("text_encoder") and "text_model" not in sub and "encoder" in sub
        found[f"{part}."] = [f"{prefix}_text_model", prefix] if flat_clip else [prefix]
    return found


def flat_name(module: str, prefix: str | dict[str, list[str]] = PREFIX, alternative: int = 0) -> str:
    """The kohya name of `module`: its path under the prefix that owns it, '.' -> '_'."""
    if isinstance(prefix, dict):
        owner = next((p for p in prefix if module.startswith(p)), None)
        if owner is None:
            raise IncompatibleAdapterError(f"{module!r} is not in a part of the pipeline kohya names "
                                           f"({', '.join(p.rstrip('.') for p in prefix)})")
        module, prefix = module[len(owner):], prefix[owner][min(alternative, len(prefix[owner]) - 1)]
    return f"{prefix}_{module.replace('.', '_')}"


def _kohya_alpha(config: LoraConfig) -> float:
    """kohya has no rsLoRA: alpha*sqrt(r) gives the same scale alpha/sqrt(r) as alpha'/r."""
    return config.alpha * math.sqrt(config.rank) if config.rslora else config.alpha


# --- export ---------------------------------------------------------------------------------------------------
def export(source: AdaptedModel, dest: Path, *, name: str | None = None, **options: Any) -> Path:
    bundle = source.bundle(name)
    family = bundle.family
    if family in ("lora", "dora"):
        modules = {m: c for m, (c, _) in (dora_modules(source, bundle, "kohya") if family == "dora"
                                           else plain_lora(source, name, "kohya")).items()}
    elif family in kohya_lycoris.FACTORS:
        modules = dict(bundle.configs)
        for module in modules:
            kind = type(source.model.get_submodule(module).base).__name__
            if kind not in ("Linear", "Conv2d"):
                raise IncompatibleAdapterError(f"the kohya format holds {family} on Linear and Conv2d; {module!r} "
                                               f"is a {kind}")
    else:
        raise IncompatibleAdapterError(f"the kohya format holds lora, dora, loha and lokr adapters; this one is "
                                       f"{family!r} (export it as peft or native)")
    named = prefixes(source.model)
    flats = {flat_name(m, named): m for m in modules}
    if len(flats) != len(modules):
        raise IncompatibleAdapterError("two target modules flatten to the same kohya name ('.' -> '_')")
    state = source.adapter_state(name)
    tensors: dict[str, Tensor] = {}
    for module, config in modules.items():
        flat = flat_name(module, named)
        own = {key[len(module) + 1:]: t for key, t in state.items() if key.rpartition(".")[0] == module}
        if family in kohya_lycoris.FACTORS:
            tensors.update(kohya_lycoris.export_tensors(flat, family, config, own))
            continue
        tensors[f"{flat}.lora_down.weight"] = own["lora_A"].contiguous()
        tensors[f"{flat}.lora_up.weight"] = own["lora_B"].contiguous()
        tensors[f"{flat}.alpha"] = torch.tensor(_kohya_alpha(config), dtype=torch.float32)
        if family == "dora":  # LyCORIS's shape: one value per output channel, with unit axes after it
            magnitude = own["lora_magnitude"]
            tensors[f"{flat}.dora_scale"] = magnitude.reshape(-1, *(1,) * (own["lora_A"].dim() - 1)).contiguous()
    widest = max(modules.values(), key=lambda c: c.rank)
    # the header repeats the widest module's alpha as its `.alpha` tensor holds it (alpha*sqrt(r) for rsLoRA)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(widest.rank),
                "ss_network_alpha": str(_kohya_alpha(widest) if family in ("lora", "dora") else widest.alpha),
                "adapterhub_lite_base": str(source.base_id), "adapterhub_lite_family": family,
                "adapterhub_lite_modules": json.dumps(sorted(modules))}
    if family != "lora":  # what LyCORIS's kohya network records for its algorithms
        args = {"algo": "lora", "dora_wd": "True"} if family == "dora" else {"algo": family}
        if any(getattr(config, "tucker", False) for config in modules.values()):
            args["use_tucker"] = "True"
        metadata.update({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)})
    dest = dest / f"{name}.safetensors" if dest.is_dir() else dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata=metadata)
    return dest


# --- import ---------------------------------------------------------------------------------------------------
def _family(flat: str, parts: set[str], where: Path) -> str:
    """Which family a module's tensors are, from their names (as LyCORIS tells its algorithms apart)."""
    tucker = sorted(parts & _TUCKER)
    if tucker:
        raise IncompatibleAdapterError(f"{where}: {flat} has {tucker[0]}, a Tucker/CP-decomposed conv kernel this "
                                       "version does not build (LoHa's hada_t1/t2 and LoKr's lokr_t2 it does)")
    if any(p.startswith("hada_") for p in parts):
        family = "loha"
    elif any(p.startswith("lokr_") for p in parts):
        family = "lokr"
    elif {"lora_down.weight", "lora_up.weight"} <= parts:
        family = "dora" if "dora_scale" in parts else "lora"
    else:
        raise IncompatibleAdapterError(f"{where}: {flat} has only {sorted(parts)}: lora_down and lora_up, or LoHa "
                                       "or LoKr factors, are needed")
    if family in kohya_lycoris.FACTORS and "dora_scale" in parts:
        raise IncompatibleAdapterError(f"{where}: {flat} is {family} with DoRA's weight decomposition (dora_scale); "
                                       "only LoRA with dora_scale (DoRA) imports")
    stray = sorted(parts - _ALLOWED[family])
    if stray:
        raise IncompatibleAdapterError(f"{where}: {flat} mixes {family} tensors with {stray[0]}")
    return family


def _alpha(found: dict[str, Tensor], where: str) -> float | None:
    """The file's alpha, None when it has none or 0 (both LyCORIS and kohya then use alpha = rank)."""
    if "alpha" not in found:
        return None
    if found["alpha"].numel() != 1:
        raise IncompatibleAdapterError(f"{where}.alpha holds {found['alpha'].numel()} values; alpha is one number")
    alpha = float(found["alpha"])
    if not math.isfinite(alpha) or alpha < 0:
        raise IncompatibleAdapterError(f"{where}.alpha is {alpha}; alpha is a positive number")
    return alpha or None


def import_(src: Path, model: AdaptedModel, **options: Any) -> AdapterBundle:
    tensors, header = read_safetensors(src)
    modules = {n: m for n, m in model.base_modules().items() if n}  # under any adapter layers already there
    by_flat: dict[str, str] = {}
    named = prefixes(model.model)
    for module in modules:
        if any(module.startswith(p) for p in named):
            for alternative in range(max(len(v) for v in named.values())):
                by_flat.setdefault(flat_name(module, named, alternative), module)
        for prefix in PREFIXES:
            by_flat.setdefault(flat_name(module, prefix), module)
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise IncompatibleAdapterError(f"{src}: tensor {shown(key)} is not a key of the kohya/LyCORIS layouts "
                                           "read here (LoRA lora_down/lora_up, DoRA dora_scale, LoHa hada_w*, LoKr "
                                           "lokr_w*, alpha)")
        parts.setdefault(match["flat"], {})[match["part"]] = tensor
    if not parts:
        raise AdapterFileError(f"{src} holds no kohya LoRA tensors")
    families = {flat: _family(flat, set(found), src) for flat, found in parts.items()}
    if len(set(families.values())) > 1:
        one, other = sorted(set(families.values()))[:2]
        raise IncompatibleAdapterError(
            f"{src} mixes families ({one} on {next(f for f, x in families.items() if x == one)}, {other} on "
            f"{next(f for f, x in families.items() if x == other)}); an adapter here holds one family: split the file")
    family = next(iter(families.values()))
    config_class: Any = LoraConfig
    if family != "lora":
        try:
            config_class = model.registry.config_class(family)
        except Exception as exc:  # the family's plugin is not installed
            raise IncompatibleAdapterError(f"{src} holds a {family} adapter: install the plugin that provides it "
                                           f"(pip install {_PLUGINS[family]})") from exc
    state, configs = {}, {}
    for flat, found in sorted(parts.items()):
        module = by_flat.get(flat)
        if module is None:
            expected = sorted({*(p for v in named.values() for p in v), *PREFIXES})
            raise IncompatibleAdapterError(f"{src}: {shown(flat)} names no module of this model (expected "
                                           f"{' or '.join(expected)}_<module path with '_'>); nothing was imported")
        base = modules[module]
        if model.registry.kind_for(base, family) is None:
            raise IncompatibleAdapterError(f"{src}: {module!r} is a {type(base).__name__}, which no installed "
                                           f"{family} kind wraps")
        alpha = _alpha(found, f"{src}: {flat}")
        if family in kohya_lycoris.FACTORS:
            factors = {k: v for k, v in found.items() if k != "alpha"}
            configs[module] = kohya_lycoris.import_config(family, config_class, module, factors,
                                                          tuple(base.weight.shape), alpha, f"{src}: {flat}")
            state.update({f"{module}.{k}": v for k, v in factors.items()})
            continue
        if getattr(base, "groups", 1) != 1:
            raise IncompatibleAdapterError(
                f"{src}: {module!r} is a grouped conv (groups={base.groups}); LyCORIS's {family} there is one "
                "low-rank delta over the grouped kernel, which the grouped LoRA layout here (one pair per group) "
                "does not hold")
        down, up = found["lora_down.weight"], found["lora_up.weight"]
        rank = int(down.shape[0]) if down.dim() >= 2 else 0
        if rank < 1:
            raise IncompatibleAdapterError(f"{src}: {flat}.lora_down.weight has shape {tuple(down.shape)}, not a "
                                           "LoRA factor")
        state[f"{module}.lora_A"], state[f"{module}.lora_B"] = down, up
        if family == "dora":
            scale = found["dora_scale"]
            if scale.numel() != base.weight.shape[0] or scale.shape[0] != base.weight.shape[0]:
                raise IncompatibleAdapterError(
                    f"{src}: {flat}.dora_scale has shape {tuple(scale.shape)}; one value per output channel "
                    f"({base.weight.shape[0]}) is DoRA as PEFT and LyCORIS compute it (wd_on_output=False is not)")
            state[f"{module}.lora_magnitude"] = scale.reshape(-1)
        configs[module] = config_class(targets=[module], rank=rank, alpha=float(rank) if alpha is None else alpha)
    return AdapterBundle(name=Path(src).stem, family=family, configs=configs, state=state,
                         base_model=header.get("adapterhub_lite_base"))
