"""The native adapter file: one safetensors file, metadata as JSON in its header.

Tensor keys are `<module>.<param>` by original module name (`fc1.lora_A`,
`attn.q.lora_B`). The header holds a JSON document under "adapterhub_lite"
(kind per target, config, base model id, base fingerprints, library version,
creation time) and repeats family, rank, alpha and the base fingerprint as
flat strings so a lone file shared SD-style still describes itself.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .atomic import publish
from .bounded_json import parse_json
from .errors import AdapterFileError, IncompatibleAdapterError, UnknownNameError, shorten
from .specs import AdapterBundle
from .tensorfile import Header, load_tensors, read_header

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .host import AdaptedModule
    from .registry import Registry


class ModelHandle(Protocol):
    """What reading and writing adapter files (here and in exporting.py) needs of `model.AdaptedModel`: named
    by what it is, not imported (the handle's `save_adapter`, `load_adapter` and `export` come here, so an
    import back would be a cycle)."""

    model: nn.Module
    base_id: str
    registry: Registry
    adapters: dict[str, Any]

    @property
    def folded(self) -> tuple[str, ...]: ...
    def layers(self) -> dict[str, AdaptedModule]: ...
    def kind_of(self, module: str, name: str) -> str: ...
    def adapter_state(self, name: str) -> dict[str, Tensor]: ...
    def add_bundle(self, bundle: AdapterBundle, name: str | None = None, *, activate: bool = True) -> str: ...
    def base_fingerprints(self, module_names: Any, *, recheck: bool = True) -> dict[str, str]: ...
    def fold(self, names: Any = None) -> None: ...
    def unfold(self) -> None: ...
    def release_buffers(self) -> None: ...

FORMAT = "adapterhub_lite/adapter"
FORMAT_VERSION = 1
HEADER_KEY = "adapterhub_lite"
METADATA_LIMIT = 4 << 20  # characters of the metadata document; a 1,000-module adapter needs about 300 KB
KNOWN_FIELDS = {
    "format", "format_version", "name", "family", "config", "targets", "base_model",
    "base_fingerprint", "base_module_fingerprints", "library_version", "created",
}


@dataclass
class AdapterFile:
    """A parsed adapter file: metadata plus a way to read its tensors."""

    path: Path
    meta: dict[str, Any]
    keys: list[str]
    unknown: dict[str, Any] = field(default_factory=dict)
    header: Header | None = field(default=None, repr=False)  # as read_header checked it, so reads skip that
    _by_module: dict[str, list[str]] | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    def tensors(self) -> dict[str, Tensor]:
        return load_tensors(self.path, self.keys)[0]

    def unknown_config_fields(self, registry: Registry) -> list[str]:
        known = registry.config_class(self.meta["family"]).field_names() | {"kind"}
        return sorted(set(self.meta["config"]) - known)

    def module_keys(self, modules: Collection[str]) -> list[str]:
        """The tensor keys of these target modules: a key belongs to the longest target module it starts with
        (a module's own tensors may sit under sub-names, e.g. `attn.q.lora_A`)."""
        if self._by_module is None:
            targets = self.meta["targets"]
            self._by_module = {}
            for key in self.keys:
                parts = key.split(".")
                owner = next((m for m in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if m in targets),
                             None)
                self._by_module.setdefault(owner, []).append(key)
        return [k for m in dict.fromkeys(modules) for k in self._by_module.get(m, [])]

    def bundle(self, registry: Registry, name: str | None = None,
               modules: Collection[str] | None = None) -> AdapterBundle:
        """The file's adapter with one config per target module (the file's overrides applied); with `modules`,
        only those modules and only their tensors read (a streamed fuse reads a big file module by module)."""
        meta = self.meta
        targets = {m: t for m, t in meta["targets"].items() if modules is None or m in modules}
        config = registry.config_class(meta["family"]).from_dict(meta["config"], ignore_unknown=True)
        configs = {m: config.replace(**t["config"]) if t.get("config") else config for m, t in sorted(targets.items())}
        kinds = {m: t["kind"] for m, t in targets.items()}
        unknown = dict(self.unknown)
        if self.unknown_config_fields(registry):
            unknown["config"] = {k: meta["config"][k] for k in self.unknown_config_fields(registry)}
        state = self.tensors() if modules is None else load_tensors(self.path, self.module_keys(targets),
                                                                    self.header)[0]
        fingerprints = {m: f for m, f in (meta.get("base_module_fingerprints") or {}).items()
                        if modules is None or m in targets}
        return AdapterBundle(name=name or self.name, family=meta["family"], configs=configs, state=state,
                             kinds=kinds, config=config, base_model=meta.get("base_model"),
                             base_fingerprints=fingerprints, metadata=unknown)


def build_metadata(am: ModelHandle, name: str, recheck_base: bool = True) -> dict[str, Any]:
    from .version import __version__

    info = am.adapters[name]
    base_config = info.config.to_dict()
    targets = {}
    for module, layer in am.layers().items():
        if name not in layer.adapters:
            continue
        config = layer.configs[name].to_dict()
        overrides = {k: v for k, v in config.items() if base_config.get(k) != v}
        targets[module] = {"kind": am.kind_of(module, name), **layer.describe(name),
                           **({"config": overrides} if overrides else {})}
    from .fingerprint import combine_fingerprints

    per_module = am.base_fingerprints(sorted(targets), recheck=recheck_base)
    return {
        **info.metadata,  # fields from a newer version are kept, not dropped
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "family": info.config.family,
        "config": base_config,
        "targets": targets,
        "base_model": am.base_id,
        "base_fingerprint": combine_fingerprints(per_module),
        "base_module_fingerprints": per_module,
        "library_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_adapter(am: ModelHandle, name: str, path: str | Path, *, recheck_base: bool = True) -> Path:
    """Write one adapter atomically (temp file, then rename). `recheck_base=False`: the base fingerprints it
    records are read again only for modules whose tensors changed storage or version since the last check
    (many saves in a row from one base; an edit through `.data` goes unseen)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = build_metadata(am, name, recheck_base)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in am.adapter_state(name).items()}
    header = {HEADER_KEY: json.dumps(meta), "format": FORMAT, "family": meta["family"],
              "base_fingerprint": meta["base_fingerprint"]}
    for key in am.adapters[name].config.header_fields:  # the family says which of its fields (LoRA: rank, alpha)
        if key in meta["config"]:
            header[key] = str(meta["config"][key])
    return publish(path, lambda target: save_file(tensors, str(target), metadata=header))


def read_adapter_file(path: str | Path) -> AdapterFile:
    """Parse the header without loading tensors; warn once about fields this version does not know."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"no adapter file at {path}")
    found = read_header(path)
    keys, header = list(found.tensors), found.metadata
    if HEADER_KEY not in header:
        raise AdapterFileError(
            f"{path} has no adapterhub_lite metadata: it is not a native adapter file "
            "(PEFT and kohya files are imported with `adapters import`)"
        )
    if len(header[HEADER_KEY]) > METADATA_LIMIT:
        raise AdapterFileError(f"{path}: its adapterhub_lite metadata is {len(header[HEADER_KEY]):,} characters, "
                               f"over the {METADATA_LIMIT:,} a real adapter needs: refusing it")
    try:
        meta = parse_json(header[HEADER_KEY])
    except ValueError as exc:  # malformed or past the limits of bounded_json
        raise AdapterFileError(f"{path}: its adapterhub_lite metadata is not valid JSON "
                               f"({shorten(str(exc), 80)})") from exc
    problem = _metadata_problem(meta)
    if problem:
        raise AdapterFileError(f"{path}: its adapterhub_lite metadata is damaged: {problem}")
    if meta.get("format_version", 1) > FORMAT_VERSION:
        warnings.warn(f"{path} uses adapter format v{meta['format_version']}; this version reads v{FORMAT_VERSION}",
                      stacklevel=2)
    unknown = {k: v for k, v in meta.items() if k not in KNOWN_FIELDS}
    return AdapterFile(path, meta, keys, unknown, header=found)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {  # field -> accepted types (the first four are required)
    "name": (str,), "family": (str,), "config": (dict,), "targets": (dict,), "format_version": (int,),
    "base_model": (str, type(None)), "base_fingerprint": (str, type(None)),
    "base_module_fingerprints": (dict, type(None)), "library_version": (str,), "created": (str,),
}


def _metadata_problem(meta: Any) -> str | None:
    """What is wrong with a file's metadata document, or None."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    missing = [k for k in ("name", "family", "config", "targets") if k not in meta]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for key, types in _FIELD_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or isinstance(value, bool)):
            return f"field {key!r} is {shorten(value, 40)}, expected {' or '.join(t.__name__ for t in types)}"
    for module, target in meta["targets"].items():
        if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
            return f"target {shorten(module, 60)} has no adapter kind"
        if not isinstance(target.get("config", {}), dict):
            return f"target {shorten(module, 60)} has a config that is not an object"
    prints = meta.get("base_module_fingerprints") or {}
    if any(not isinstance(v, str) for v in prints.values()):
        return "field 'base_module_fingerprints' must map module names to strings"
    return None


def load_adapter(am: ModelHandle, path: str | Path, name: str | None = None, *,
                 ignore_fingerprint: bool = False, activate: bool = True, recheck_base: bool = True) -> str:
    """Add the file's adapter to the model. Checks shapes and base fingerprints first;
    on any error the model is left exactly as it was. `recheck_base=False`: the base's fingerprints are read
    again only for modules whose tensors changed storage or version since the last check (many loads in a
    row onto one base; an edit through `.data` goes unseen)."""
    file = read_adapter_file(path)
    meta = file.meta
    config_unknown = file.unknown_config_fields(am.registry)
    if file.unknown or config_unknown:
        fields = sorted(file.unknown) + [f"config.{k}" for k in config_unknown]
        warnings.warn(
            f"{file.path} was written by adapterhub_lite {meta.get('library_version', '?')} with fields this "
            f"version does not know ({', '.join(fields)}); they are kept but not used", stacklevel=2)

    from .inject import named_base_modules

    modules = dict(named_base_modules(am.model))
    for module, target in sorted(meta["targets"].items()):
        if module not in modules:
            raise UnknownNameError("module", module, modules, f"{file.path} targets a module this model lacks")
        kind = am.registry.get_kind(target["kind"])
        if not kind.accepts(modules[module]):
            raise IncompatibleAdapterError(
                f"{file.path}: module {module!r} is a {type(modules[module]).__name__}, "
                f"but the adapter's {kind.name!r} layer wraps {', '.join(kind.target_names)}")
    if not ignore_fingerprint:
        _check_fingerprints(am, file, recheck_base)
    return am.add_bundle(file.bundle(am.registry, name), activate=activate)


def _check_fingerprints(am: ModelHandle, file: AdapterFile, recheck: bool = True) -> None:
    expected: dict[str, str] = file.meta.get("base_module_fingerprints") or {}
    if not expected:
        raise IncompatibleAdapterError(
            f"{file.path} records no base fingerprint, so its base cannot be checked; "
            "skip the check (ignore_fingerprint) to load it anyway", option="ignore_fingerprint")
    actual = am.base_fingerprints(sorted(expected), recheck=recheck)
    for module in sorted(expected):
        if actual[module] != expected[module]:
            raise IncompatibleAdapterError(
                f"{file.path} was trained on base {file.meta.get('base_model')!r} "
                f"(fingerprint {str(file.meta.get('base_fingerprint'))[:12]}), but module {module!r} differs in "
                f"this model; load it on that base, or skip the check (ignore_fingerprint) if you know they fit",
                option="ignore_fingerprint")
