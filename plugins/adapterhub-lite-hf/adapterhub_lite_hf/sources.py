"""Load and rebuild transformers, diffusers and timm models from local folders and configs.

Each source has three functions the core calls through `ModelSource`:
- `is_<source>(path)`: does this folder or JSON file look like this library's? (reads JSON only)
- `load_<source>(pretrained=DIR | None, config=FILE | None)`: the model, with the folder's weights (read from
  safetensors only: a pickled checkpoint is refused, never opened) or fresh from the config, and a JSON-able
  dict that rebuilds it;
- `build_<source>(**that dict)`: the same architecture, whose weights the zoo then loads.

`from_pretrained` always runs with `local_files_only=True` on a folder; a Hub id (`owner/name[@revision]`)
given with `--source` is first downloaded to the Hub cache (configs and safetensors weights only).

Folders, configs and cards are hostile input: no code from them ever runs (remote code is refused, classes come
only from each library's model classes, never a tokenizer, pipeline or trainer), no pickle is opened (checkpoint
paths in timm's arguments are refused), nothing reaches the network but a download the user asked for, a
declared size is checked before memory is taken (`build_within_budget`), and a folder's weights must fill the
model exactly: missing, unexpected or mis-shaped tensors and integer weights for float parameters are refused.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from adapterhub_lite import (
    AdapterFileError,
    ConfigError,
    HubError,
    MissingDependencyError,
    build_within_budget,
    check_declared_size,
    hub_snapshot,
    read_header,
    read_json,
)

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
PIPELINE_PARTS = ("unet", "transformer", "prior", "text_encoder", "text_encoder_2", "text_encoder_3")
SEED = 0  # a model built from a config starts from these random weights, so add-base is reproducible
CONFIG_LIMIT = 4 << 20  # bytes of a config.json / model_index.json: real ones are a few KB, id2label maps included


# --- what a path holds ------------------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path, CONFIG_LIMIT)
    except (OSError, ValueError):  # missing, malformed, not UTF-8, or past the limits of bounded JSON
        return None
    return data if isinstance(data, dict) else None


def _config_of(path: Path) -> dict[str, Any] | None:
    return _json(path / "config.json") if path.is_dir() else _json(path)


def is_transformers(path: Path) -> bool:
    config = _config_of(Path(path))
    return config is not None and "model_type" in config and "_class_name" not in config


def is_diffusers(path: Path) -> bool:
    path = Path(path)
    if path.is_dir() and (path / "model_index.json").is_file():
        return True
    config = _config_of(path)
    return config is not None and "_class_name" in config


def is_timm(path: Path) -> bool:
    config = _config_of(Path(path))
    return config is not None and "architecture" in config and "model_type" not in config


def _folder(path: Path) -> Path:
    """A checkpoint folder that exists and holds safetensors weights (a pickled one is refused, not opened)."""
    path = Path(path)
    if not path.exists():
        raise AdapterFileError(f"no model folder at {path}")
    if not path.is_dir():
        raise AdapterFileError(f"{path} is a file: --from-pretrained takes a model folder (config.json and "
                               "*.safetensors); a config file goes to --config")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED for p in path.glob(pattern))
        if pickled:
            raise AdapterFileError(f"{path} holds only pickled weights ({', '.join(pickled[:3])}), which are never "
                                   "unpickled here: convert them to safetensors (e.g. save_pretrained(..., "
                                   "safe_serialization=True) where you trust the file) and try again")
        raise AdapterFileError(f"{path} holds no *.safetensors weights")
    return path


def _checkpoint(pretrained: Path) -> Path:
    """A local checkpoint folder, or, for a path that is not there but reads as a Hub id (`owner/name`), the
    folder the Hub download gives: configs first, then only the safetensors weights the model needs (never a
    pickle, no fp16/bf16 variants). Tests never download; users with a network may."""
    path = Path(pretrained)
    if path.exists() or not _HUB_ID.fullmatch(str(pretrained)):
        return path
    return _download(str(pretrained))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
_VARIANTS = ["*.fp16.*", "*.bf16.*", "*non_ema*", "*.ema.*"]


def _download(repo: str) -> Path:
    """Through the core's guarded Hub download (repo, revision and every server answer checked)."""
    _need("huggingface_hub")
    repo, _, revision = repo.partition("@")
    try:
        with _online():
            local = hub_snapshot(repo, revision or None, allow_patterns=["*.json"])
            index = _json(local / "model_index.json")
            weights = ([f"{part}/*.safetensors" for part in PIPELINE_PARTS if part in index] if index is not None
                       else ["*.safetensors"])
            return hub_snapshot(repo, revision or None, allow_patterns=["*.json", *weights],
                                ignore_patterns=_VARIANTS)
    except HubError:
        raise
    except Exception as exc:
        offline = "HF_HUB_OFFLINE is set and it is not in the local cache" if os.environ.get("HF_HUB_OFFLINE") \
            not in (None, "", "0") else "check the name, the network and HF_TOKEN"
        raise HubError(f"could not download {repo} from the Hub: {offline}; or give a local folder "
                       f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from exc


def _config_file(path: Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise AdapterFileError(f"no config file at {path}")
    try:
        data = read_json(path, CONFIG_LIMIT)
    except ValueError as exc:  # malformed, not UTF-8, or past the limits of bounded JSON
        raise ConfigError(f"{path} is not a {what} config: {' '.join(str(exc).split())[:160]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object: not a {what} config")
    return data


def _seeded(build: Any) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def _rejected(library: str, path: Path, exc: Exception) -> ConfigError:
    text = " ".join(str(exc).split())
    return ConfigError(f"{library} rejects {path}: {type(exc).__name__}: {text[:300]}")


def _library_call(library: str, where: Path | str, call: Any) -> Any:
    """`call()`, whatever the library raises on this input turned into one line; our own refusals (the model
    budget's) pass through as they are."""
    try:
        return call()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
        raise _rejected(library, Path(str(where)), exc) from exc


def _refuse_custom_code(data: dict[str, Any], where: Path | str, library: str) -> None:
    """A config that names code to import (transformers' and diffusers' `auto_map`, a custom pipeline)."""
    found = [key for key in ("auto_map", "_custom_pipeline") if key in data]
    if found:
        raise ConfigError(f"{where} asks for custom code ({found[0]}): code from a model folder, config or card is "
                          f"never run here; use a model {library} ships")


def _dtype_name(model: Any) -> str:
    first = next(iter(model.parameters()), None)
    return str(first.dtype).removeprefix("torch.") if first is not None else "float32"


def _to_dtype(model: Any, dtype: str) -> Any:
    import torch

    wanted = getattr(torch, dtype, None)
    if not isinstance(wanted, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r} in the model's card")
    return model if _dtype_name(model) == dtype else model.to(wanted)


def _quietly(*libraries: str) -> Any:
    """Run the decorated function with `libraries` imported and their info logs and loading bars off."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            for library in libraries:
                _need(library)
            with _quiet():
                return fn(*args, **kwargs)

        return run

    return decorate


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The libraries' info logs and loading bars off while we load (errors still raise): the command prints
    its own one line."""
    loggers = [logging.getLogger(name) for name in ("transformers", "diffusers", "timm")]
    offline = _set_offline(True)  # a local load never reaches the network, whatever a config names
    levels = [lg.level for lg in loggers]
    hidden = []
    for module in ("transformers", "diffusers"):
        if module not in sys.modules:
            continue
        utils = importlib.import_module(f"{module}.utils.logging")
        if utils.is_progress_bar_enabled():
            utils.disable_progress_bar()
            hidden.append(utils)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        _set_offline(offline)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for utils in hidden:
            utils.enable_progress_bar()


def _set_offline(value: bool) -> bool:
    """Set huggingface_hub's offline switch (every request through its session then fails at once); returns
    the value it had."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        import huggingface_hub.constants as constants
    before = bool(constants.HF_HUB_OFFLINE)
    constants.HF_HUB_OFFLINE = value
    return before


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """The user's own offline setting back, for a download they asked for."""
    before = _set_offline(os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"})
    try:
        yield
    finally:
        _set_offline(before)


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"this model needs {module}: pip install {module} ({exc})") from exc


# --- transformers -------------------------------------------------------------------------------------------------
def _transformers_class(config: dict[str, Any], where: Path | str) -> Any:
    """The model class `architectures` names (AutoModel when none), if it is one: a `PreTrainedModel` or an
    AutoModel class. A tokenizer, pipeline, trainer or any other name is refused: none of them is a base."""
    transformers = _need("transformers")
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else "AutoModel"
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    auto = importlib.import_module("transformers.models.auto.auto_factory")._BaseAutoModelClass
    if not (isinstance(cls, type) and issubclass(cls, (transformers.PreTrainedModel, auto))):
        raise ConfigError(f"{where}: transformers has no model class {name[:80]!r} (architectures in config.json; "
                          "tokenizers, pipelines and trainers are not models)")
    return cls


def _transformers_config(data: dict[str, Any], path: Path | str) -> Any:
    """The config object, for a model type transformers itself ships; custom code (`auto_map`) is refused."""
    transformers = _need("transformers")
    _refuse_custom_code(data, path, "transformers")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise ConfigError(f"{path}: transformers knows no model_type {str(model_type)[:80]!r}")
    try:
        config_class = transformers.CONFIG_MAPPING[model_type]
        return config_class.from_dict({k: v for k, v in data.items() if k != "transformers_version"})
    except Exception as exc:
        raise _rejected("transformers", path, exc) from exc


def _from_config(cls: Any, config: Any) -> Any:
    if hasattr(cls, "_from_config"):  # a PreTrainedModel
        return cls(config)
    return cls.from_config(config, trust_remote_code=False)  # an AutoModel class: the type it maps, never code


@_quietly("transformers")
def load_transformers(pretrained: Path | None = None, config: Path | None = None) -> tuple[Any, dict[str, Any]]:
    if pretrained is not None:
        folder = _folder(_checkpoint(pretrained))
        data = _config_file(folder, "transformers")
        _transformers_config(data, folder / "config.json")  # refuses custom code and unknown types first
        cls = _transformers_class(data, folder / "config.json")
        weights = _weights_files(folder)
        model, info = _library_call("transformers", folder, lambda: build_within_budget(
            lambda: cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                        trust_remote_code=False, output_loading_info=True,
                                        ignore_mismatched_sizes=True),  # mis-shaped tensors reported, then refused
            str(folder), preflight=False))  # the files' size was checked: no second load on the meta device
        _check_filled(folder, info, model, weights)
    else:
        data = _config_file(config, "transformers")  # type: ignore[arg-type]
        built = _transformers_config(data, Path(config))  # type: ignore[arg-type]
        cls = _transformers_class(data, Path(config))  # type: ignore[arg-type]
        model = _library_call("transformers", config, lambda: build_within_budget(  # type: ignore[arg-type]
            lambda: _seeded(lambda: _from_config(cls, built)), str(config)))
    spec = {"class": type(model).__name__, "config": model.config.to_dict(), "dtype": _dtype_name(model)}
    return model.eval(), spec


@_quietly("transformers")
def build_transformers(**spec: Any) -> Any:
    data = spec.get("config")
    if not isinstance(data, dict):
        raise ConfigError("the card's transformers config is not an object")
    config = _transformers_config(data, "the card")
    cls = _transformers_class({"architectures": [spec.get("class")]}, "the card")
    return _to_dtype(build_within_budget(lambda: _from_config(cls, config), "the card"),
                     spec.get("dtype", "float32")).eval()


# --- what a folder's weights hold ----------------------------------------------------------------------------------
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _weights_files(folder: Path) -> dict[Path, Any]:
    """Each safetensors file in the folder with its header (read and checked, no tensor loaded), their total
    size checked against the model budget; a sharded index naming a file outside the folder is refused."""
    for index in folder.glob("*.safetensors.index.json"):
        data = _config_file(index, "safetensors index")
        names = set((data.get("weight_map") or {}).values()) if isinstance(data.get("weight_map"), dict) else set()
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n.startswith(".")]
        if bad:
            raise AdapterFileError(f"{index} names weights outside its folder ({str(bad[0])[:80]!r}): refusing it")
    files = {path: read_header(path) for path in sorted(folder.glob("*.safetensors"))}
    check_declared_size(str(folder), sum(path.stat().st_size for path in files))
    return files


def _check_filled(folder: Path, info: dict[str, Any], model: Any, files: dict[Path, Any]) -> None:
    """The folder's tensors fill the model exactly (the library's own loading report, which knows tied and
    ignorable keys), and no integer tensor was cast into a float weight."""
    for label, key in (("lack", "missing_keys"), ("hold unexpected", "unexpected_keys"),
                       ("hold mis-shaped", "mismatched_keys")):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(key) or []))
        if keys:
            raise AdapterFileError(f"{folder}: its weights {label} tensors for this model ({len(keys)}: "
                                   f"{', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}): the base would not "
                                   "be what the folder holds; check the folder and its config.json")
    _check_float(folder, model, files)


def _check_float(folder: Path, model: Any, files: dict[Path, Any]) -> None:
    """No integer tensor in the files lands in a float weight (libraries cast silently). A file's key may carry
    or lack the model's prefix (`transformer.h.0...` for `h.0...`), as the libraries allow."""
    floating = {name for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    for path, header in files.items():
        for name, tensor in header.tensors.items():
            if tensor.dtype in _FLOAT_DTYPES:
                continue
            if {name, name.partition(".")[2], f"{prefix}.{name}"} & floating:
                raise AdapterFileError(f"{path}: tensor {name[:80]} is {tensor.dtype}, where the model has "
                                       "floating-point weights: refusing to cast it")


# --- diffusers ---------------------------------------------------------------------------------------------------
class PipelineModules(nn.Module):
    """A pipeline's adaptable modules as one model: `unet`, `text_encoder`, ... as its children, so one zoo base
    and one adapter cover them all, under the module names diffusers and kohya use (`unet.down_blocks...`,
    `text_encoder.text_model...`). It has no forward of its own: call its parts."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a pipeline's modules have no forward of their own: call one of them "
                        f"({', '.join(n for n, _ in self.named_children())})")


def _diffusers_class(name: Any, where: Path | str) -> Any:
    """The model class `_class_name` names, if it is one (a `ModelMixin`): pipelines, schedulers and anything
    else are refused."""
    diffusers = _need("diffusers")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ConfigError(f"{where}: diffusers has no model class {str(name)[:80]!r} (_class_name; pipelines and "
                          "schedulers are not models)")
    return cls


def _diffusers_from_config(cls: Any, data: dict[str, Any], where: Path | str) -> Any:
    _refuse_custom_code(data, where, "diffusers")
    return _library_call("diffusers", where, lambda: build_within_budget(
        lambda: _seeded(lambda: cls.from_config(data)), str(where)))


def _diffusers_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    data = _config_file(folder, "diffusers")
    cls = _diffusers_class(data.get("_class_name"), folder)
    _refuse_custom_code(data, folder / "config.json", "diffusers")
    weights = _weights_files(folder)
    model, info = _library_call("diffusers", folder, lambda: build_within_budget(
        lambda: cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                    output_loading_info=True, ignore_mismatched_sizes=True),
        str(folder), preflight=False))  # the files' size was checked: no second load on the meta device
    _check_filled(folder, info, model, weights)
    return model, _diffusers_spec(model)


def _diffusers_spec(model: Any) -> dict[str, Any]:
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return {"library": "diffusers", "class": type(model).__name__, "config": json.loads(json.dumps(config)),
            "dtype": _dtype_name(model)}


def _pipeline(folder: Path) -> tuple[Any, dict[str, Any]]:
    index = _config_file(folder / "model_index.json", "diffusers pipeline")
    parts, specs = {}, {}
    for name in PIPELINE_PARTS:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0]):
            continue
        library, _cls = entry
        sub = folder / name
        if library == "diffusers":
            parts[name], specs[name] = _diffusers_model(_folder(sub))
        elif library == "transformers":
            parts[name], spec = load_transformers(pretrained=sub)
            specs[name] = {"library": "transformers", **spec}
    if not parts:
        raise ConfigError(f"{folder}/model_index.json names none of the modules adapters adapt "
                          f"({', '.join(PIPELINE_PARTS)})")
    return PipelineModules(parts), {"pipeline": specs}


@_quietly("diffusers", "transformers")
def load_diffusers(pretrained: Path | None = None, config: Path | None = None) -> tuple[Any, dict[str, Any]]:
    if pretrained is not None:
        path = _checkpoint(pretrained)
        if (path / "model_index.json").is_file():
            model, spec = _pipeline(path)
        else:
            model, spec = _diffusers_model(_folder(path))
        return model.eval(), spec
    data = _config_file(config, "diffusers")  # type: ignore[arg-type]
    cls = _diffusers_class(data.get("_class_name"), Path(config))  # type: ignore[arg-type]
    model = _diffusers_from_config(cls, data, Path(config))  # type: ignore[arg-type]
    return model.eval(), _diffusers_spec(model)


def _build_part(spec: dict[str, Any]) -> Any:
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise ConfigError("the card's model config is not an object")
    if spec.get("library") == "transformers":
        return build_transformers(**{k: v for k, v in spec.items() if k != "library"})
    cls = _diffusers_class(spec.get("class"), "the card")
    return _to_dtype(_diffusers_from_config(cls, spec["config"], "the card"), spec.get("dtype", "float32"))


@_quietly("diffusers", "transformers")
def build_diffusers(**spec: Any) -> Any:
    if "pipeline" in spec:
        parts = spec["pipeline"]
        if not isinstance(parts, dict) or not set(parts) <= set(PIPELINE_PARTS):
            raise ConfigError(f"the card's pipeline names parts other than {', '.join(PIPELINE_PARTS)}")
        return PipelineModules({name: _build_part(part) for name, part in parts.items()}).eval()
    return _build_part(spec).eval()


# --- timm ----------------------------------------------------------------------------------------------------
# Model arguments that make timm load or fetch something (a checkpoint it would torch.load, a Hub config): a base
# is built here with random weights and filled from safetensors only, so none of them is ever passed on. Matched
# on whole words of the name, so `drop_path_rate` (a regularisation rate) stays allowed.
_TIMM_LOADING = ("pretrained", "checkpoint", "cache", "url", "hub")
_TIMM_LOADING_ENDS = ("_path", "_file", "_dir", "_url")


def _loads_something(key: Any) -> bool:
    key = str(key).lower()
    return any(word in key.split("_") for word in _TIMM_LOADING) or key.endswith(_TIMM_LOADING_ENDS) or \
        key in ("path", "file", "url")


def _timm_create(spec: dict[str, Any], where: Path | str) -> Any:
    timm = _need("timm")
    architecture, kwargs = spec.get("architecture"), spec.get("kwargs", {})
    if not (isinstance(architecture, str) and ":" not in architecture and timm.is_model(architecture)):
        raise ConfigError(f"{where}: timm has no model {str(architecture)[:80]!r} (architecture; Hub and local "
                          "references such as hf-hub:... are not followed)")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: model_args is not an object")
    loading = sorted(str(k) for k in kwargs if _loads_something(k))
    if loading:
        raise ConfigError(f"{where}: model_args {', '.join(repr(k[:40]) for k in loading[:3])} would make timm load "
                          "a checkpoint or reach the network; a base takes its weights from safetensors only: "
                          "remove them")
    return _library_call("timm", where, lambda: build_within_budget(
        lambda: timm.create_model(architecture, pretrained=False, **kwargs), str(where)))


def _timm_spec(data: dict[str, Any]) -> dict[str, Any]:
    kwargs = data.get("model_args") or {}
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else kwargs
    if "num_classes" in data and isinstance(kwargs, dict):
        kwargs.setdefault("num_classes", data["num_classes"])
    return {"architecture": data.get("architecture"), "kwargs": kwargs}


@_quietly("timm")
def load_timm(pretrained: Path | None = None, config: Path | None = None) -> tuple[Any, dict[str, Any]]:
    from safetensors.torch import load_file

    if pretrained is not None:
        folder = _folder(_checkpoint(pretrained))
        spec = _timm_spec(_config_file(folder, "timm"))
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise AdapterFileError(f"{folder} holds no model.safetensors (timm's weights file)")
        headers = _weights_files(folder)
        model = _timm_create(spec, folder)
        _check_float(folder, model, {weights: headers[weights]})
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as exc:
            raise _rejected("timm", weights, exc) from exc
    else:
        spec = _timm_spec(_config_file(config, "timm"))  # type: ignore[arg-type]
        model = _seeded(lambda: _timm_create(spec, Path(config)))  # type: ignore[arg-type]
    return model.eval(), {**spec, "dtype": _dtype_name(model)}


@_quietly("timm")
def build_timm(**spec: Any) -> Any:
    return _to_dtype(_timm_create(spec, "the card"), spec.get("dtype", "float32")).eval()
