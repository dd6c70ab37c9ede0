"""What the commands do, as library calls: train a base or an adapter into the zoo,
stack zoo adapters on their base, evaluate and sample.

Each function takes the registry and zoo explicitly; the CLI is a thin layer
over them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .cards import metric_scopes
from ..config import AdapterConfig
from ..errors import (
    AdapterFileError,
    AdapterhubError,
    ConfigError,
    TrainingError,
    ZooError,
    shorten,
)
from ..fingerprint import state_fingerprint
from ..model import AdaptedModel
from ..refs import AdapterRef
from ..registry import Registry
from ..specs import EvalContext, Task
from .stacks import Stack, resolve_stack
from ..tensorfile import check_finite_floats, load_tensors, untied
from ..training import Dial, Distributed, TrainOptions, fit
from .store import BASE, Zoo, ZooEntry

@dataclass(frozen=True)
class DataOptions:
    """Where the data lives and the task's own options (passed to the task untouched; a task declares them)."""

    data_dir: str | Path | None = None
    task: Mapping[str, Any] = field(default_factory=dict)
    test: bool = True  # measure the test split too; recipe-search candidates see only the validation split

    def to_dict(self) -> dict[str, Any]:
        return dict(self.task)

    def with_task(self, task: Mapping[str, Any]) -> DataOptions:
        return replace(self, task=dict(task))


def task_of(registry: Registry, model_name: str) -> Task:
    spec = registry.get_model(model_name)
    if spec.task is None:
        raise ConfigError(f"model {spec.name!r} registers no task, so it cannot be trained, evaluated or sampled")
    return spec.task


def headlines(task: Task | None, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scope, the task's headline figures: stored in the card, so listings need no task (and no torch)."""
    if task is None or not metrics:
        return {}
    return {scope: task.headline(values) for scope, values in metric_scopes(metrics, single="")
            if isinstance(values, dict)}


def load_base(registry: Registry, entry: ZooEntry) -> nn.Module:
    """Build a zoo base and load its weights, checking them against the card's fingerprint."""
    registry.adopt(entry.model, entry.card)  # a model brought in with `zoo add-base` is built by its source
    try:
        model = registry.create_model(entry.model, **entry.card.get("config", {}))
    except TypeError as exc:
        raise ZooError(f"{entry.ref}: its card's config does not build model {entry.model!r} "
                       f"({shorten(str(exc), 120)}); restore or delete {entry.path}") from exc
    try:
        state, _ = load_tensors(entry.weights)
    except AdapterFileError as exc:
        raise ZooError(f"{exc}; restore or delete {entry.path}") from exc
    if state_fingerprint(state) != entry.card.get("fingerprint"):
        raise ZooError(f"{entry.weights} does not match the fingerprint in its card: the file was changed; "
                       f"restore or delete {entry.path}")
    _load_checked(model, state, f"{entry.ref}")
    return model.eval()


def _load_checked(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load `state` strictly into `model`, refusing a tensor whose kind (floating or not) differs from the
    model's and non-finite parameters (buffers such as masks may hold infinities)."""
    own = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    for key, tensor in state.items():
        if key in own and own[key].is_floating_point() != tensor.is_floating_point():
            raise ZooError(f"{source}: tensor {shorten(key, 80)} is {str(tensor.dtype).removeprefix('torch.')}, "
                           f"the model's is {str(own[key].dtype).removeprefix('torch.')}")
    try:
        check_finite_floats({k: v for k, v in state.items() if k in parameters}, source, "parameter")
    except AdapterFileError as exc:
        raise ZooError(str(exc)) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ZooError(f"{source} does not fit model {model.__class__.__name__!r}: "
                       f"{shorten(' '.join(str(exc).split()), 300)}") from exc


def fitting_state(registry: Registry, model: str, config: dict[str, Any], state: dict[str, Any],
                  source: str) -> dict[str, Any]:
    """`state` loaded strictly into a fresh `model`: a checkpoint that does not fit is a clear error."""
    plain = registry.create_model(model, **config)
    _load_checked(plain, state, source)
    return plain.state_dict()


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


def _require_finite(tensors: dict[str, Any], label: str) -> None:
    """Refuse to write weights that went to NaN or infinity (a diverged run): nothing is written."""
    try:
        check_finite_floats(tensors, label, "tensor")
    except AdapterFileError as exc:
        raise TrainingError(f"{exc}; nothing was written (a diverged run? try a lower learning rate)") from None


def add_adapter_version(registry: Registry, zoo: Zoo, base: ZooEntry, name: str, am: AdaptedModel, adapter: str,
                        recipe: dict[str, Any], extra: dict[str, Any], data: DataOptions | None = None) -> ZooEntry:
    """Write adapter `adapter` of `am` (loaded on `base`) as a new version of `base.model/name`, with its card."""
    zoo.check_new(base.model, name, "adapter")
    _require_finite(am.adapter_state(adapter), f"{base.model}/{name}")
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


def _context(registry: Registry, zoo: Zoo, seed: int, split: str, options: Mapping[str, Any]) -> EvalContext:
    def zoo_base(name: str) -> nn.Module | None:
        """The zoo's latest base of model `name` (a task's judge, say), or None when the zoo has none."""
        try:
            return load_base(registry, zoo.resolve(name))
        except AdapterhubError:
            return None

    return EvalContext(seed=seed, split=split, options=dict(options), zoo_base=zoo_base)


def evaluate(registry: Registry, zoo: Zoo, model_name: str, model: nn.Module, data: DataOptions,
             seed: int = 0, split: str = "test") -> dict[str, Any]:
    """The task's metrics of `model` on a split, under the data's task options."""
    task = task_of(registry, model_name)
    inputs, labels = task.load(split, data_dir=data.data_dir, options=data.task)
    return task.evaluate(model, inputs, labels, context=_context(registry, zoo, seed, split, data.task))


def adapter_scopes(registry: Registry, model_name: str, data: DataOptions) -> dict[str, DataOptions]:
    """The scopes the task measures a trained adapter under (e.g. everything, and the part it was trained on)."""
    return {scope: data.with_task(options)
            for scope, options in task_of(registry, model_name).scopes(data.task, trained=True).items()}


def test_metrics(registry: Registry, zoo: Zoo, entry: ZooEntry, data: DataOptions) -> dict[str, Any]:
    """A zoo entry measured on the test split as training measures it: a base on `data`, an adapter per scope."""
    if entry.is_base:
        return evaluate(registry, zoo, entry.model, load_base(registry, entry), data)
    am, _ = stack(registry, zoo, [entry.ref])
    return {scope: evaluate(registry, zoo, entry.model, am.model, options)
            for scope, options in adapter_scopes(registry, entry.model, data).items()}


def _validation(registry: Registry, zoo: Zoo, model_name: str, model: nn.Module, data: DataOptions,
                scopes: dict[str, DataOptions] | None = None) -> dict[str, Any] | None:
    """Metrics on the task's validation split (what recipes are chosen on), per scope; None without one."""
    task = task_of(registry, model_name)
    if "val" not in task.splits:
        return None
    if scopes is None:
        return evaluate(registry, zoo, model_name, model, data, split="val")
    return {scope: evaluate(registry, zoo, model_name, model, options, split="val")
            for scope, options in scopes.items()}


def train_base(registry: Registry, zoo: Zoo, model_name: str, options: TrainOptions, data: DataOptions,
               model_kwargs: dict[str, Any] | None = None, start: str | None = None) -> ZooEntry | None:
    """Train a base model into a new `MODEL/base` version (on rank 0 of a DDP job): from scratch,
    or, with `start`, by fine-tuning every weight of an existing base version."""
    task = task_of(registry, model_name)
    zoo.check_new(model_name, BASE, "base")
    kwargs = dict(model_kwargs or {})
    torch.manual_seed(options.seed)  # a seeded init, not only seeded batches
    parents: list[str] = []
    if start is not None:
        start_entry = zoo.require_base(start, model_name, "the starting point")
        model, kwargs, parents = load_base(registry, start_entry), start_entry.card.get("config", {}), [start_entry.ref]
    else:
        model = registry.create_model(model_name, **kwargs)
    inputs, labels = task.load("train", data_dir=data.data_dir, options=data.task)
    summary = fit(model, list(model.parameters()), task, inputs, labels, options, label=f"{model_name} base")
    dist = Distributed.from_env()
    entry = None
    if dist.is_main:
        _require_finite({n: p.detach() for n, p in model.named_parameters()}, f"{model_name}/base")
        card = {
            "config": kwargs, "task": task.name, "parents": parents, "splits": dict(task.splits),
            "recipe": {"command": "train-base", **options.to_dict(), **data.to_dict(), "from": start},
            "training": summary, "metrics": evaluate(registry, zoo, model_name, model, data) if data.test else {},
            "validation": _validation(registry, zoo, model_name, model, data),
        }
        entry = add_base_version(zoo, model_name, BASE, model.state_dict(), card, task)
    dist.barrier()
    return entry


def train_adapter(registry: Registry, zoo: Zoo, model_name: str, name: str, config: AdapterConfig,
                  options: TrainOptions, data: DataOptions, base: str | None = None) -> ZooEntry | None:
    """Train a new version of adapter `name` on a zoo base (default: its latest version)."""
    zoo.check_new(model_name, name, "adapter")
    task = task_of(registry, model_name)
    base_entry = zoo.require_base(base or model_name, model_name)
    model = load_base(registry, base_entry)
    am = AdaptedModel(model, base_id=base_entry.ref, registry=registry)
    torch.manual_seed(options.seed)
    am.add_adapter(name, config)
    inputs, labels = task.load("train", data_dir=data.data_dir, options=data.task)
    replay = None
    if options.replay:
        replay = task.load("train", data_dir=data.data_dir, options=task.complement(data.task))
    dial = Dial(set_weight=lambda weight: am.set_weight(name, weight),
                blend=lambda x, y, weight, generator: task.blend(x, y, weight, generator, options=data.task)
                ) if options.dial else None
    summary = fit(model, am.trainable_parameters(), task, inputs, labels, options, replay,
                  label=f"{model_name}/{name}", dial=dial)
    dist = Distributed.from_env()
    entry = None
    if dist.is_main:
        scopes = adapter_scopes(registry, model_name, data)
        metrics = ({scope: evaluate(registry, zoo, model_name, model, scoped) for scope, scoped in scopes.items()}
                   if data.test else {})
        recipe = {"command": "train", **options.to_dict(), **data.to_dict()}
        entry = add_adapter_version(registry, zoo, base_entry, name, am, name, recipe,
                                    {"training": summary, "metrics": metrics, "splits": dict(task.splits),
                                     "validation": _validation(registry, zoo, model_name, model, data, scopes)})
    dist.barrier()
    return entry


def stack(registry: Registry, zoo: Zoo, refs: Sequence[str | AdapterRef] | Stack, model: str | None = None
          ) -> tuple[AdaptedModel, ZooEntry]:
    """Load the base and every adapter the refs (or a resolved Stack) name, active at their weights."""
    resolved = resolve_stack(zoo, refs, model)
    am = AdaptedModel(load_base(registry, resolved.base), base_id=resolved.base.ref, registry=registry)
    names: list[str] = []
    for entry, _weight in resolved.adapters:
        label = entry.name if entry.name not in names else f"{entry.name}-v{entry.version}"
        while label in names:  # the same version twice (e.g. inside two compositions)
            label += "-again"
        am.load_adapter(entry.weights, name=label)
        names.append(label)
    am.set_active(names, [w for _, w in resolved.adapters])
    return am, resolved.base
