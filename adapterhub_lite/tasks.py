"""Task: how a model is fed, trained and measured (a model plugin subclasses it), a task named by reference
(`DeferredTask`), and what an evaluation may need beyond the model (`EvalContext`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .deferred import resolve_reference

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class Task:
    """How a model is fed, trained and measured; model plugins subclass it.

    The core names no dataset, class or metric. A task declares its own data
    options (`Options`: a dataclass whose fields, with `metadata["help"]`, and
    optionally `choices` or a `parse` function, become command-line options of
    train, train-base, apply and combine), its splits, how an adapter's
    measurement is scoped, what replay draws from, and how its metrics read.
    Options reach the task as a plain dict (JSON in recipes and cards).
    """

    name: str = ""
    # the splits `load` accepts, each with a line for the card: "train" to fit, "val" to choose recipes on,
    # "test" to report once (a task without "val" cannot take part in recipe selection)
    splits: Mapping[str, str] = {"train": "", "test": ""}
    Options: type | None = None  # a frozen dataclass of the task's data options, or None for none

    def load(self, split: str, *, data_dir: str | Path | None = None,
             options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """(inputs, labels) of a split ("train", "val" or "test") under these options, whole, as tensors."""
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The training loss of one batch; random corruption draws from `generator`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 1000,
                 context: EvalContext | None = None) -> dict[str, Any]:
        """Metrics on a split; must be deterministic for a given context (its seed, split and options)."""
        raise NotImplementedError

    def sample(self, model: nn.Module, n: int, *, seed: int = 0, steps: int = 25) -> Tensor:
        """n generated images (N, C, H, W) in [0, 1], for generative tasks."""
        from .errors import ConfigError

        raise ConfigError(f"task {self.name!r} does not generate samples")

    def blend(self, inputs: Tensor, labels: Tensor, weight: float, generator: torch.Generator, *,
              options: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """A batch of the data `options` select (loaded by `load`), turned into what an adapter run at
        `weight` should learn: at 0 the base's own data, at 1 the batch as loaded (`train --dial`).
        Default: this task cannot blend."""
        from .errors import ConfigError

        raise ConfigError(f"task {self.name!r} cannot blend its targets by weight, which --dial needs", option="dial")

    def scopes(self, options: Mapping[str, Any], *, trained: bool) -> dict[str, Mapping[str, Any]]:
        """Under which names an adapter is measured, each with its options. The default measures everything,
        as "all". A task whose options select part of its data measures an adapter trained on that part on
        everything ("all") and on the part; `trained=False` is for an adapter measured on the part only."""
        return {"all": options}

    def complement(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The options for the data outside these, which replay mixes in against forgetting."""
        from .errors import ConfigError

        raise ConfigError(f"task {self.name!r} has no data outside its options to replay", option="replay")

    def headline(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The figures worth one line, by label: numbers (listings show them) and short strings (`zoo show`
        shows those too). Default: every top-level number of the metrics."""
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def report(self, metrics: Mapping[str, Any]) -> list[str]:
        """Lines that present the metrics to a person (`adapters apply --eval`). Default: the headline."""
        return [f"{label} {value:.4f}" if isinstance(value, float) else f"{label} {value}"
                for label, value in self.headline(metrics).items()]

    def charts(self, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Bar charts of the metrics for `adapters zoo report`: title -> {bar label: value}, values in [0, 1]
        drawn as shares. Default: none."""
        return {}


class DeferredTask(Task):
    """A task named by reference, built on first use: `DeferredTask("classify", "pkg.tasks:ClassifyTask",
    noisy=True)`. Listing models needs only the name; training, evaluating or asking for the task's options
    imports the task's module (and whatever it imports, torch usually)."""

    def __init__(self, name: str, ref: str, **kwargs: Any) -> None:
        self.name = name
        self.ref = ref
        self.kwargs = kwargs
        self._task: Task | None = None

    def resolve(self) -> Task:
        if self._task is None:
            from .errors import PluginError

            made = resolve_reference(self.ref)
            if isinstance(made, type) or (callable(made) and not isinstance(made, Task)):
                made = made(**self.kwargs)
            elif self.kwargs:
                raise PluginError(f"task reference {self.ref!r} names an instance: it takes no arguments")
            if not isinstance(made, Task):
                raise PluginError(f"task reference {self.ref!r} gave {type(made).__name__}, not a Task")
            if made.name != self.name:
                raise PluginError(f"task reference {self.ref!r} is named {made.name!r}, registered as "
                                  f"{self.name!r}: use one name")
            self._task = made
        return self._task

    @property  # type: ignore[override]
    def splits(self) -> Mapping[str, str]:
        return self.resolve().splits

    @property  # type: ignore[override]
    def Options(self) -> type | None:  # noqa: N802  (mirrors Task.Options)
        return self.resolve().Options

    def __getattr__(self, name: str) -> Any:  # anything else the task defines
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)


def _forward(method: str) -> Callable[..., Any]:
    def forward(self: DeferredTask, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.resolve(), method)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = method
    forward.__doc__ = getattr(Task, method).__doc__
    return forward


# every method Task defines goes to the real task (derived, so a method added to Task later cannot fall back
# to Task's default on a deferred one)
for _method in [n for n, v in vars(Task).items() if callable(v) and not n.startswith("_")]:
    setattr(DeferredTask, _method, _forward(_method))


@dataclass(frozen=True)
class EvalContext:
    """What an evaluation may need beyond the model: the seed, the split, the task's options, other zoo
    models (`zoo_base(name)`: the zoo's latest base of that model, or None)."""

    seed: int = 0
    split: str = "test"  # which split is being measured ("val" for choosing, "test" for reporting)
    options: Mapping[str, Any] = field(default_factory=dict)
    zoo_base: Callable[[str], nn.Module | None] | None = None
