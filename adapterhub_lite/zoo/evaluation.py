"""Measuring models the way the zoo records them: a model's task, its metrics on a split (per scope for an
adapter), its validation metrics (what recipes are chosen on) and the headline figures a card keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import AdapterhubError, ConfigError
from ..registry import Registry
from ..tasks import EvalContext, Task
from .cards import metric_scopes
from .loading import load_base, stack
from .store import Zoo, ZooEntry


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


def validation_metrics(registry: Registry, zoo: Zoo, model_name: str, model: nn.Module, data: DataOptions,
                scopes: dict[str, DataOptions] | None = None) -> dict[str, Any] | None:
    """Metrics on the task's validation split (what recipes are chosen on), per scope; None without one."""
    task = task_of(registry, model_name)
    if "val" not in task.splits:
        return None
    if scopes is None:
        return evaluate(registry, zoo, model_name, model, data, split="val")
    return {scope: evaluate(registry, zoo, model_name, model, options, split="val")
            for scope, options in scopes.items()}

