"""Writing models into the zoo as new versions: a base's state dict, or an adapter of a model, each with its
card (fingerprint, size, recipe, parents, metrics and their headline); weights that are not finite are
refused before anything is written."""

from __future__ import annotations

from typing import Any

from safetensors.torch import save_file

from ..errors import AdapterFileError, TrainingError
from ..fingerprint import state_fingerprint
from ..model import AdaptedModel
from ..registry import Registry
from ..tasks import Task
from ..tensorfile import check_finite_floats, untied
from .evaluation import DataOptions, evaluate, headlines, task_of
from .store import Zoo, ZooEntry


def require_finite(tensors: dict[str, Any], label: str) -> None:
    """Refuse to write weights that went to NaN or infinity (a diverged run): nothing is written."""
    try:
        check_finite_floats(tensors, label, "tensor")
    except AdapterFileError as exc:
        raise TrainingError(f"{exc}; nothing was written (a diverged run? try a lower learning rate)") from None


def add_base_version(zoo: Zoo, model: str, name: str, state: dict[str, Any], card: dict[str, Any],
                     task: Task | None = None) -> ZooEntry:
    """Write a base state dict as a new version of `model/name`; the card gets kind, fingerprint, size (and
    the task's headline of its metrics)."""
    zoo.check_new(model, name, "base")
    if card.get("metrics") and "headline" not in card:
        card = {**card, "headline": headlines(task, card["metrics"])}
    state = untied(state)
    fingerprint = state_fingerprint(state)
    card = {"kind": "base", **card, "fingerprint": fingerprint, "parameters": sum(t.numel() for t in state.values())}
    return zoo.add_version(model, name, lambda folder: save_file(
        state, str(folder / "model.safetensors"), metadata={"fingerprint": fingerprint}), card)


def add_adapter_version(registry: Registry, zoo: Zoo, base: ZooEntry, name: str, am: AdaptedModel, adapter: str,
                        recipe: dict[str, Any], extra: dict[str, Any], data: DataOptions | None = None) -> ZooEntry:
    """Write adapter `adapter` of `am` (loaded on `base`) as a new version of `base.model/name`, with its card."""
    zoo.check_new(base.model, name, "adapter")
    require_finite(am.adapter_state(adapter), f"{base.model}/{name}")
    counts = am.parameter_counts()
    card: dict[str, Any] = {
        "kind": "adapter", "family": am.adapters[adapter].config.family, "config": am.adapters[adapter].config.to_dict(),
        "modules": sorted(am.target_configs(adapter)),
        "base": {"ref": base.ref, "version": base.version, "fingerprint": base.card["fingerprint"]},
        "parents": [base.ref], "task": base.card.get("task"), "recipe": recipe,
        "parameters": counts["adapters"][adapter], "trainable_percent": round(counts["trainable_percent"], 4),
        **extra,
    }
    task = registry.get_model(base.model).task
    if data is not None:
        am.set_active([adapter])
        card["metrics"] = {scope: evaluate(registry, zoo, base.model, am.model, data.with_task(options))
                           for scope, options in task_of(registry, base.model).scopes(data.task, trained=False).items()}
    if card.get("metrics"):
        card["headline"] = headlines(task, card["metrics"])
    return zoo.add_version(base.model, name, lambda folder: am.save_adapter(adapter, folder / "adapter.safetensors"),
                           card)

