"""Frozen specs a plugin passes to its `register` callback.

They carry data and callables only; the registry records which plugin owns
each name and refuses duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from .config import AdapterConfig
    from .layer import AdapterLayer


class MergeFn(Protocol):
    """Combine adapter states (one dict of tensors per adapter) into one state."""

    def __call__(
        self, states: list[Mapping[str, Tensor]], weights: list[float], **options: Any
    ) -> dict[str, Tensor]: ...


class ExportFn(Protocol):
    def __call__(self, adapter: Any, dest: Path, **options: Any) -> Path: ...


class ImportFn(Protocol):
    def __call__(self, src: Path, **options: Any) -> Any: ...


def _check_name(name: str, what: str) -> None:
    from .errors import PluginError

    if not isinstance(name, str) or not name or any(c.isspace() or c in "/@=" for c in name):
        raise PluginError(f"invalid {what} name {name!r}: use a non-empty word without spaces, '/', '@' or '='")


@dataclass(frozen=True)
class AdapterKind:
    """One adapter layer class for some base module types.

    A family (LoRA) usually registers several kinds, one per module type it
    wraps, all sharing the family's config class: `config.kind` names the family.
    """

    name: str
    layer: type[AdapterLayer]
    config: type[AdapterConfig]
    targets: tuple[type[nn.Module], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "adapter kind")
        if not self.targets:
            object.__setattr__(self, "targets", tuple(self.layer.targets))

    @property
    def family(self) -> str:
        return self.config.kind


class Task:
    """How a model is fed, trained and measured; model plugins subclass it.

    Training and evaluation in the core are generic loops over these methods,
    so a new model family brings its own data, loss and metrics.
    """

    name: str = ""

    def load(self, split: str, *, data_dir: str | Path | None = None, classes: tuple[int, ...] | None = None,
             style: str | None = None) -> tuple[Tensor, Tensor]:
        """(inputs, labels) of a split ("train" or "test"), whole, as tensors."""
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The training loss of one batch; random corruption draws from `generator`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 1000,
                 context: EvalContext | None = None) -> dict[str, Any]:
        """Metrics on a split; must be deterministic for a given context."""
        raise NotImplementedError

    def sample(self, model: nn.Module, n: int, *, seed: int = 0, steps: int = 25) -> Tensor:
        """n generated images (N, C, H, W) in [0, 1], for generative tasks."""
        from .errors import AdapterhubError

        raise AdapterhubError(f"task {self.name!r} does not generate samples")


@dataclass(frozen=True)
class EvalContext:
    """What an evaluation may need beyond the model: seeds and other zoo models."""

    seed: int = 0
    samples: int = 256
    steps: int = 25
    classifier: Callable[[], nn.Module] | None = None  # loads the zoo's MNIST classifier lazily


@dataclass(frozen=True)
class ModelSpec:
    """A base model: how to build it and the task that trains and measures it."""

    name: str
    build: Callable[..., nn.Module]
    description: str = ""
    task: Task | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_targets: tuple[str, ...] = ()  # what `adapters train` adapts when --targets is not given

    def __post_init__(self) -> None:
        _check_name(self.name, "model")


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "merge method")


@dataclass(frozen=True)
class Format:
    name: str
    export: ExportFn | None = None
    import_: ImportFn | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "format")
