"""Training into the zoo: a base from scratch (or fine-tuned from a base version), or an adapter on a base
version, each written as a new version with its measurements (`adapters train-base`, `adapters train`)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import AdapterConfig
from ..model import AdaptedModel
from ..registry import Registry
from ..training import Dial, Distributed, TrainOptions, fit
from .evaluation import DataOptions, adapter_scopes, evaluate, task_of, validation_metrics
from .loading import load_base
from .store import BASE, Zoo, ZooEntry
from .versions import add_adapter_version, add_base_version, require_finite


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
        require_finite({n: p.detach() for n, p in model.named_parameters()}, f"{model_name}/base")
        card = {
            "config": kwargs, "task": task.name, "parents": parents, "splits": dict(task.splits),
            "recipe": {"command": "train-base", **options.to_dict(), **data.to_dict(), "from": start},
            "training": summary, "metrics": evaluate(registry, zoo, model_name, model, data) if data.test else {},
            "validation": validation_metrics(registry, zoo, model_name, model, data),
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
                                     "validation": validation_metrics(registry, zoo, model_name, model, data, scopes)})
    dist.barrier()
    return entry

