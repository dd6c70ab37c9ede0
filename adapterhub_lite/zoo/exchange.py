"""Moving adapters out of and into the zoo through registered formats.

Export takes any ref: one adapter at weight 1 is written as it is; several
adapters, weights or a composition are first combined into one (the family's
own method unless one is named; LoRA's, linear, is exact), and a
model format gets the base with everything fused. The format writes into a
temp path beside the destination, which is moved into place only when
complete (`atomic.publish`): a failed export leaves nothing behind. Import
builds the adapter on the zoo base, checks shapes, dtypes, finiteness (and
base fingerprints when the file records them), and writes a new zoo version;
nothing is written on any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdapterFileError, ConfigError, IncompatibleAdapterError
from ..fingerprint import state_fingerprint
from .combine import plan_combine
from ..model import AdaptedModel
from ..registry import Registry
from ..specs import AdapterBundle, Format
from .stacks import Stack, resolve_stack
from .evaluation import DataOptions
from .loading import fitting_state, load_base, stack
from .versions import add_adapter_version, add_base_version
from .store import Zoo, ZooEntry


def _format(registry: Registry, name: str, direction: str) -> Format:
    fmt = registry.get_format(name)
    if (fmt.export if direction == "export" else fmt.import_) is None:
        raise ConfigError(f"format {name!r} cannot {direction}", option="format")
    return fmt


def export_refs(registry: Registry, zoo: Zoo, refs: Sequence[str] | Stack, fmt_name: str, dest: Path,
                model: str | None = None, stream: bool | None = None,
                method: str | None = None, check_base: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write what refs name in a format; returns the path written and what it holds. Refs are resolved once;
    the writing itself is `AdaptedModel.export`'s (one owner for every export), except a streamed model
    (`stream`, or None: `streams_by_default` decides by the base checkpoint's size), written tensor by tensor.
    Several adapters, or one at a weight, are first combined into one with `method` (None: the one their
    family names; LoRA's is exact). `check_base`: a checkpoint folder that must hold exactly the base's weights
    (another engine will serve the export on it); checked before anything is written."""
    fmt = _format(registry, fmt_name, "export")
    if method is not None and fmt.holds == "model":
        raise ConfigError(f"format {fmt_name!r} fuses the adapters into the model exactly: --method combines "
                          "adapters into one adapter, drop it", option="method")
    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, resolved.adapters
    info: dict[str, Any] = {"base": base.ref, "format": fmt_name, "adapters": resolved.describe()}
    if check_base is not None:
        from .sources import check_checkpoint

        info["checked_base"] = {"folder": str(check_base),
                                "fingerprint": check_checkpoint(registry, base, check_base)}
    if stream is None:
        from .streaming import streams_by_default

        stream = fmt.stream_metadata is not None and bool(adapters) and streams_by_default(base.weights)
    if stream:
        if fmt.stream_metadata is None:
            raise ConfigError(f"format {fmt_name!r} cannot be streamed: only a model format whose file is one "
                              "safetensors state dict can (e.g. merged)", option="stream")
        from .fuse import fuse_streamed

        path = dest / "model.safetensors" if dest.is_dir() else dest
        written = fuse_streamed(registry, zoo, resolved, path, metadata=fmt.stream_metadata)
        info.update(fingerprint=written["fingerprint"], streamed=True)
        return path, info
    if fmt.holds == "model":
        am, _ = stack(registry, zoo, resolved)
        state = am.fused_state_dict()
        info["fingerprint"] = state_fingerprint(state)
        return am.export(format=fmt_name, dest=dest), info
    if not adapters:
        raise ConfigError(f"name an adapter to export in {fmt_name!r} (a bare base exports in the merged format)",
                          option="format")
    if len(adapters) == 1 and adapters[0][1] == 1.0:
        entry = adapters[0][0]
        am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
        name = am.load_adapter(entry.weights, name=entry.name)
    else:  # combine exactly first, so every format sees one plain adapter
        plan = plan_combine(registry, zoo, None, resolved, method)
        am, name = plan.adapter, "combined"
        info["combined"] = plan.method.name
        if plan.result.report.get("exact") is False:
            info["exact"] = False  # the user chose a method that approximates: say so beside the file
    return am.export(name, format=fmt_name, dest=dest), info


def import_file(registry: Registry, zoo: Zoo, src: Path, fmt_name: str, model: str, name: str,
                base_ref: str | None = None, force: bool = False, data: DataOptions | None = None,
                origin: dict[str, Any] | None = None) -> Any:
    """Read `src` in a format and write it into the zoo: an adapter on a base, or (model formats) a new base."""
    fmt = _format(registry, fmt_name, "import")
    zoo.check_new(model, name, "base" if fmt.holds == "model" else "adapter")
    if not Path(src).exists():
        raise AdapterFileError(f"nothing at {src}")
    base = zoo.require_base(base_ref or model, model)
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    recipe = {"command": "import", "format": fmt_name, "source": str(src)}
    if fmt.holds == "model":
        return _import_model(registry, zoo, fmt, Path(src), am, base, model, name,
                             recipe, origin or {"format": fmt_name, "path": str(src)})
    bundle: AdapterBundle = fmt.import_(Path(src), am)
    return import_bundle(registry, zoo, bundle, am, base, name, recipe, force, data,
                         origin or {"format": fmt_name, "path": str(src), "base_model": bundle.base_model},
                         source=str(src))


def import_bundle(registry: Registry, zoo: Zoo, bundle: AdapterBundle, am: AdaptedModel, base: ZooEntry,
                  name: str, recipe: dict[str, Any], force: bool = False, data: DataOptions | None = None,
                  origin: dict[str, Any] | None = None, source: str = "the adapter") -> ZooEntry:
    """Write an adapter read from anywhere (a format, the Hub) into the zoo on `base` (held by `am`), after
    checking the base fingerprints it records, unless `force`."""
    zoo.check_new(base.model, name, "adapter")
    if bundle.base_fingerprints and not force:
        actual = am.base_fingerprints(sorted(bundle.base_fingerprints))
        differs = sorted(m for m, fp in bundle.base_fingerprints.items() if actual[m] != fp)
        if differs:
            raise IncompatibleAdapterError(
                f"{source} was trained on another base ({bundle.base_model}): module {differs[0]!r} differs from "
                f"{base.ref}; import it onto that base, or skip the fingerprint check if you know they fit",
                option="force")
    am.add_bundle(bundle, name)
    return add_adapter_version(registry, zoo, base, name, am, name, recipe, {"imported_from": origin or {}}, data)


def _import_model(registry: Registry, zoo: Zoo, fmt: Format, src: Path, am: AdaptedModel, base: ZooEntry,
                  model: str, name: str, recipe: dict[str, Any], origin: dict[str, Any]) -> Any:
    config = base.card.get("config", {})
    state = fitting_state(registry, model, config, fmt.import_(src, am), str(src))
    spec = registry.get_model(model)
    card = {"config": config, "task": spec.task.name if spec.task else None, "parents": [], "recipe": recipe,
            "imported_from": origin, **({"source": base.card["source"]} if "source" in base.card else {})}
    return add_base_version(zoo, model, name, state, card)
