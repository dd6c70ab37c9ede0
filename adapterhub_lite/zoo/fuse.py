"""Fusing zoo adapters into a new base: the weighted adapters folded into the base weights, written as a new
base version (in memory, or tensor by tensor through streaming.py for checkpoints bigger than memory). Every
ref resolves and every adapter sits on the one base before anything is written."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import IncompatibleAdapterError, RefError
from ..fingerprint import state_fingerprint
from ..model import AdaptedModel, refuse_tied_fold
from ..registry import Registry
from ..serialization import read_adapter_file
from .stacks import Stack, resolve_stack
from .store import Zoo, ZooEntry
from .evaluation import DataOptions, evaluate
from .loading import stack
from .versions import add_base_version


def fuse(registry: Registry, zoo: Zoo, model: str, refs: Sequence[str] | Stack, name: str, *,
         dry_run: bool = False, data: DataOptions | None = None,
         stream: bool | None = None) -> tuple[dict[str, Any], ZooEntry | None]:
    """Fold weighted adapters into their base and write the result as a new base version `model/name`;
    streamed tensor by tensor with `stream` (None: when the base checkpoint is over the threshold)."""
    from .streaming import streams_by_default

    zoo.check_new(model, name, "base", writable=not dry_run)
    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, resolved.adapters
    if not adapters:
        raise RefError("name at least one adapter to fuse into the base")
    if stream is None:
        stream = not dry_run and data is None and streams_by_default(base.weights)
    if stream:
        if dry_run or data is not None:
            from ..errors import ConfigError

            raise ConfigError("--stream writes the fused base without holding it, so it can neither evaluate it "
                              "(--eval) nor plan without writing (--dry-run): evaluate afterwards with "
                              f"`adapters apply {model}/{name} --eval`", option="stream")
        return _fuse_streamed_into_zoo(registry, zoo, model, resolved, name)
    plain = fused_model(registry, zoo, resolved)
    state = {k: v.detach().contiguous() for k, v in plain.state_dict().items()}
    fingerprint = state_fingerprint(state)
    card = _fused_base_card(resolved)
    plan = {"base": base.ref, "fused": card["fused"], "fingerprint": fingerprint, "out": f"{model}/{name}",
            "parameters": sum(t.numel() for t in state.values()),
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}
    if dry_run:
        return plan, None
    if data is not None:
        card["metrics"] = evaluate(registry, zoo, model, plain.eval(), data)
    return plan, add_base_version(zoo, model, name, state, card, registry.get_model(model).task)


def _fused_base_card(resolved: Stack, **recipe: Any) -> dict[str, Any]:
    """The card fields of a base fused from `resolved` (both paths): its lineage and exactly what went in."""
    base = resolved.base
    fused = [{"ref": e.ref, "weight": w, "fingerprint": state_fingerprint(read_adapter_file(e.weights).tensors())}
             for e, w in resolved.adapters]
    return {"config": base.card.get("config", {}), "task": base.card.get("task"),
            **({"source": base.card["source"]} if "source" in base.card else {}),
            "parents": [base.ref, *[f["ref"] for f in fused]],
            "recipe": {"command": "merge --into-base", "base": base.ref, "fused": fused, **recipe}, "fused": fused}


def _fuse_streamed_into_zoo(registry: Registry, zoo: Zoo, model: str, resolved: Stack,
                            name: str) -> tuple[dict[str, Any], ZooEntry]:
    from ..tensorfile import read_header

    base = resolved.base
    card = {"kind": "base", **_fused_base_card(resolved, streamed=True),
            "parameters": sum(math.prod(i.shape) for i in read_header(base.weights).tensors.values())}

    def write(folder: Path) -> None:  # the fingerprint is known once the file is: the card is written after
        card["fingerprint"] = fuse_streamed(registry, zoo, resolved, folder / "model.safetensors")["fingerprint"]

    entry = zoo.add_version(model, name, write, card)
    plan = {"base": base.ref, "fused": card["fused"], "fingerprint": entry.card["fingerprint"],
            "out": f"{model}/{name}", "parameters": card["parameters"], "bytes": entry.weights.stat().st_size}
    return plan, entry


def fused_model(registry: Registry, zoo: Zoo, refs: Sequence[str] | Stack, model: str | None = None) -> nn.Module:
    """The plain base model with the adapters of refs (or a resolved Stack) folded in at their weights."""
    am, _ = stack(registry, zoo, refs, model)
    return am.unload(fold=True)


def fuse_streamed(registry: Registry, zoo: Zoo, refs: Sequence[str] | Stack, dest: Path,
                  model: str | None = None, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fused base written to `dest` (safetensors) tensor by tensor, never holding the whole model.

    The model is built on the meta device (no memory); each adapted module is made real on its own, with its
    base tensors read from the checkpoint, gets its adapters (every family: the same layers and fold as in
    memory) and is fused; its tensors are written as the stream reaches them, then dropped. Tensors of other
    modules are copied through. Peak memory: one tensor's buffer plus about twice the largest adapted module.
    Each adapter's base fingerprint is checked per module, as `load_adapter` does."""
    import copy

    import torch

    from .streaming import file_fingerprint, read_tensors, rewrite_file
    from ..tensorfile import read_header

    resolved = resolve_stack(zoo, refs, model)
    base, adapters = resolved.base, resolved.adapters
    if not adapters:
        raise RefError("name at least one adapter to fuse into the base")
    with torch.device("meta"):
        skeleton = registry.create_model(base.model, **base.card.get("config", {}))
    files = [(read_adapter_file(entry.weights), entry, weight) for entry, weight in adapters]
    users: dict[str, list[tuple[Any, ZooEntry, float]]] = {}
    for file, entry, weight in files:
        for module in file.meta["targets"]:
            users.setdefault(module, []).append((file, entry, weight))
    nested = sorted(a for a in users for b in users if b.startswith(a + "."))
    if nested:
        raise IncompatibleAdapterError(f"module {nested[0]!r} and modules inside it are both adapted: streaming "
                                       "fuses one module at a time; fuse without --stream")
    owner: dict[str, str] = {}  # checkpoint tensor -> the adapted module it belongs to
    for module, (_, entry, _) in ((m, found[0]) for m, found in users.items()):
        try:
            names = skeleton.get_submodule(module).state_dict()
        except AttributeError:
            raise IncompatibleAdapterError(f"{entry.ref} targets {module!r}, which {base.model} lacks") from None
        owner.update({f"{module}.{k}": module for k in names})
    refuse_tied_fold(skeleton, sorted(users))
    src = base.weights
    header = read_header(src)
    missing = sorted(set(owner) - set(header.tensors))
    if missing:
        raise IncompatibleAdapterError(f"{base.ref}'s checkpoint has no tensor {missing[0]!r}")
    pending: dict[str, dict[str, torch.Tensor]] = {}

    def fused_module(module: str) -> dict[str, torch.Tensor]:
        sub = copy.deepcopy(skeleton.get_submodule(module))  # on the meta device: no memory yet
        own = read_tensors(src, [f"{module}.{k}" for k in sub.state_dict()], header)
        sub.load_state_dict({k.removeprefix(module + "."): v for k, v in own.items()}, assign=True)  # no copy
        del own
        holder = _holding(module, sub)
        am = AdaptedModel(holder, base_id=base.ref, registry=registry)
        actual = am.base_fingerprints([module])[module]
        for i, (file, entry, weight) in enumerate(users[module]):
            expected = (file.meta.get("base_module_fingerprints") or {}).get(module)
            if expected != actual:
                raise IncompatibleAdapterError(f"{entry.ref} was trained on another base: module {module!r} of "
                                               f"{base.ref} differs from the one it records")
            part = file.bundle(registry, f"part{i}", modules=[module])  # this module's tensors only
            part = replace(part, base_model=None, base_fingerprints={}, metadata={})  # fingerprint checked above
            am.set_weight(am.add_bundle(part), weight)
        plain = am.unload(fold=True)
        return {k: v.detach() for k, v in plain.get_submodule(module).state_dict().items()}

    def change(name: str, tensor: torch.Tensor) -> None:
        module = owner.get(name)
        if module is None:
            return
        if module not in pending:
            pending[module] = fused_module(module)
        tensor.copy_(pending[module].pop(name.removeprefix(module + ".")))
        if not pending[module]:
            del pending[module]

    written = rewrite_file(src, dest, change, metadata, label=f"fusing into {base.ref}")
    return {"base": base.ref, "adapters": resolved.describe(), "modules": len(users), **written,
            "fingerprint": file_fingerprint(dest)}


def _holding(path: str, module: nn.Module) -> nn.Module:
    """A bare container with `module` at `path` (e.g. "down.0.conv"), so a model's module names still apply."""
    root = nn.Module()
    parent = root
    *parents, last = path.split(".")
    for part in parents:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    parent.add_module(last, module)
    return root
