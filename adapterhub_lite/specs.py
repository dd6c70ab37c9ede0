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


@dataclass(frozen=True)
class ModelSpec:
    """A base model: how to build it and, optionally, its data recipe and task."""

    name: str
    build: Callable[..., nn.Module]
    description: str = ""
    task: str = ""
    data: Callable[..., Any] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

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
