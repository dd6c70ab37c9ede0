"""Load and rebuild transformers, diffusers and timm models from local folders and configs.

Each source has three functions the core calls through `ModelSource`:
- `is_<source>(path)`: does this folder or JSON file look like this library's? (reads JSON only)
- `load_<source>(pretrained=DIR | None, config=FILE | None)`: the model, with the folder's weights (read from
  safetensors only: a pickled checkpoint is refused, never opened) or fresh from the config, and a JSON-able
  dict that rebuilds it;
- `build_<source>(**that dict)`: the same architecture, whose weights the zoo then loads.

`from_pretrained` always runs with `local_files_only=True` on a folder; a Hub id (`owner/name[@revision]`)
given with `--source` is first downloaded to the Hub cache (configs and safetensors weights only).
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

from adapterhub_lite import AdapterFileError, ConfigError, HubError, MissingDependencyError

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
PIPELINE_PARTS = ("unet", "transformer", "prior", "text_encoder", "text_encoder_2", "text_encoder_3")
SEED = 0  # a model built from a config starts from these random weights, so add-base is reproducible


# --- what a path holds ------------------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
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
    hub = _need("huggingface_hub")
    repo, _, revision = repo.partition("@")
    try:
        local = Path(hub.snapshot_download(repo, revision=revision or None, allow_patterns=["*.json"]))
        index = _json(local / "model_index.json")
        weights = ([f"{part}/*.safetensors" for part in PIPELINE_PARTS if part in index] if index is not None
                   else ["*.safetensors"])
        return Path(hub.snapshot_download(repo, revision=revision or None, allow_patterns=["*.json", *weights],
                                          ignore_patterns=_VARIANTS))
    except Exception as exc:  # noqa: BLE001 - network, token, offline mode, a missing repo: one line each
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
    data = _json(path)
    if data is None:
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
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for utils in hidden:
            utils.enable_progress_bar()


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"this model needs {module}: pip install {module} ({exc})") from exc


# --- transformers -------------------------------------------------------------------------------------------------
def _transformers_class(config: dict[str, Any]) -> Any:
    transformers = _need("transformers")
    names = config.get("architectures") or []
    name = names[0] if names and isinstance(names[0], str) else "AutoModel"
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ConfigError(f"transformers has no model class {name!r} (architectures in config.json)")
    return cls


def _transformers_config(data: dict[str, Any], path: Path) -> Any:
    transformers = _need("transformers")
    model_type = data.get("model_type")
    try:
        config_class = transformers.AutoConfig.for_model(model_type).__class__
        return config_class.from_dict({k: v for k, v in data.items() if k != "transformers_version"})
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
        raise _rejected("transformers", path, exc) from exc


def _from_config(cls: Any, config: Any) -> Any:
    transformers = _need("transformers")
    return (transformers.AutoModel.from_config(config) if cls is transformers.AutoModel else cls(config))


@_quietly("transformers")
def load_transformers(pretrained: Path | None = None, config: Path | None = None) -> tuple[Any, dict[str, Any]]:
    if pretrained is not None:
        folder = _folder(_checkpoint(pretrained))
        data = _config_file(folder, "transformers")
        cls = _transformers_class(data)
        try:
            loader = cls if cls.__name__ != "AutoModel" else _need("transformers").AutoModel
            model = loader.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                           trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
            raise _rejected("transformers", folder, exc) from exc
    else:
        data = _config_file(config, "transformers")  # type: ignore[arg-type]
        cls = _transformers_class(data)
        built = _transformers_config(data, Path(config))  # type: ignore[arg-type]
        try:
            model = _seeded(lambda: _from_config(cls, built))
        except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
            raise _rejected("transformers", Path(config), exc) from exc  # type: ignore[arg-type]
    spec = {"class": type(model).__name__, "config": model.config.to_dict(), "dtype": _dtype_name(model)}
    return model.eval(), spec


@_quietly("transformers")
def build_transformers(**spec: Any) -> Any:
    transformers = _need("transformers")
    config = _transformers_config(spec["config"], Path("the card"))
    cls = getattr(transformers, spec["class"])
    return _to_dtype(_from_config(cls, config), spec.get("dtype", "float32")).eval()


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


def _diffusers_class(name: Any, where: Path) -> Any:
    diffusers = _need("diffusers")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(f"{where}: diffusers has no model class {name!r} (_class_name)")
    return cls


def _diffusers_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    data = _config_file(folder, "diffusers")
    cls = _diffusers_class(data.get("_class_name"), folder)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
        raise _rejected("diffusers", folder, exc) from exc
    return model, _diffusers_spec(model)


def _diffusers_spec(model: Any) -> dict[str, Any]:
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return {"library": "diffusers", "class": type(model).__name__, "config": json.loads(json.dumps(config)),
            "dtype": _dtype_name(model)}


def _pipeline(folder: Path) -> tuple[Any, dict[str, Any]]:
    index = _json(folder / "model_index.json") or {}
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
    try:
        model = _seeded(lambda: cls.from_config(data))
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
        raise _rejected("diffusers", Path(config), exc) from exc  # type: ignore[arg-type]
    return model.eval(), _diffusers_spec(model)


def _build_part(spec: dict[str, Any]) -> Any:
    if spec.get("library") == "transformers":
        return build_transformers(**{k: v for k, v in spec.items() if k != "library"})
    cls = _diffusers_class(spec["class"], Path("the card"))
    return _to_dtype(cls.from_config(spec["config"]), spec.get("dtype", "float32"))


@_quietly("diffusers", "transformers")
def build_diffusers(**spec: Any) -> Any:
    if "pipeline" in spec:
        return PipelineModules({name: _build_part(part) for name, part in spec["pipeline"].items()}).eval()
    return _build_part(spec).eval()


# --- timm ----------------------------------------------------------------------------------------------------
def _timm_create(spec: dict[str, Any], where: Path) -> Any:
    timm = _need("timm")
    try:
        return timm.create_model(spec["architecture"], pretrained=False, **spec.get("kwargs", {}))
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on this input: one line
        raise _rejected("timm", where, exc) from exc


def _timm_spec(data: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(data.get("model_args") or {})
    if "num_classes" in data:
        kwargs.setdefault("num_classes", data["num_classes"])
    return {"architecture": data["architecture"], "kwargs": kwargs}


@_quietly("timm")
def load_timm(pretrained: Path | None = None, config: Path | None = None) -> tuple[Any, dict[str, Any]]:
    from safetensors.torch import load_file

    if pretrained is not None:
        folder = _folder(_checkpoint(pretrained))
        spec = _timm_spec(_config_file(folder, "timm"))
        model = _timm_create(spec, folder)
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise AdapterFileError(f"{folder} holds no model.safetensors (timm's weights file)")
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
    return _to_dtype(_timm_create(spec, Path("the card")), spec.get("dtype", "float32")).eval()
