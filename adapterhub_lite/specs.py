"""Frozen specs a plugin passes to its `register` callback.

They carry data and callables only; the registry records which plugin owns
each name and refuses duplicates.

Any class or function a spec holds (a kind's layer, a model's build, a combine
function, a format's export and import, a task via `DeferredTask`) may be
given as a string "package.module:attribute", imported on first use
(`deferred.py`). The task a model spec carries is a `tasks.Task`; `Task`,
`DeferredTask`, `EvalContext` and the deferred helpers are importable from
here too, where they used to live.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .deferred import Deferred, _deferred, _loaded_class, resolve_reference  # noqa: F401  (Deferred: re-exported)
from .tasks import DeferredTask, EvalContext, Task  # noqa: F401  (re-exported: they used to live here)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .config import AdapterConfig
    from .layer import AdapterLayer


@dataclass(frozen=True)
class CombineInput:
    """One adapter going into a combine: its tensors, its config per target module, its weight."""

    label: str  # how messages name it, e.g. "mymodel/style@v2"
    weight: float
    configs: Mapping[str, AdapterConfig]  # target module -> the config that module was built with
    state: Mapping[str, Tensor]  # tensors keyed `<module>.<param>`, as in the native file

    @property
    def family(self) -> str:
        return next(iter(self.configs.values())).family if self.configs else ""


@dataclass
class CombineResult:
    """What a combine method returns: a new adapter, per module, and what was lost."""

    configs: dict[str, AdapterConfig]
    state: dict[str, Tensor]
    report: dict[str, Any] = field(default_factory=dict)  # e.g. {"energy_kept": 0.998, "exact": False}


class CombineFn(Protocol):
    """Combine weighted adapters into one. Raise IncompatibleAdapterError for inputs it cannot combine
    correctly; never approximate silently."""

    def __call__(self, inputs: list[CombineInput], *, rank: int | None = None, **options: Any) -> CombineResult: ...


@dataclass(frozen=True)
class AdapterBundle:
    """An adapter detached from any model: what adapter formats write and read."""

    name: str
    family: str
    configs: Mapping[str, AdapterConfig]  # target module -> its config
    state: Mapping[str, Tensor]  # tensors keyed `<module>.<param>`, as in the native file
    kinds: Mapping[str, str] = field(default_factory=dict)  # target module -> adapter kind name
    config: AdapterConfig | None = None  # the adapter's own config (targets as written); default: the first module's
    base_model: str | None = None
    base_fingerprints: Mapping[str, str] = field(default_factory=dict)  # target module -> its base's fingerprint
    metadata: Mapping[str, Any] = field(default_factory=dict)  # fields kept from a newer writer


class ExportFn(Protocol):
    """Write to `dest`. Adapter formats get the AdaptedModel holding adapter `name` (at weight 1) on its base;
    model formats get the fused model's plain state dict and name=None."""

    def __call__(self, source: Any, dest: Path, *, name: str | None = None, **options: Any) -> Path: ...


class ImportFn(Protocol):
    """Read `src` for the base held by `model` (an AdaptedModel): adapter formats return an AdapterBundle,
    model formats a plain state dict."""

    def __call__(self, src: Path, model: Any, **options: Any) -> Any: ...


def _check_name(name: str, what: str) -> None:
    from .errors import PluginError

    if not isinstance(name, str) or not name or any(c.isspace() or c in "/@=" for c in name):
        raise PluginError(f"invalid {what} name {name!r}: use a non-empty word without spaces, '/', '@' or '='")


@dataclass(frozen=True)
class AdapterKind:
    """One adapter layer class for some base module types.

    A family (LoRA) usually registers several kinds, one per module type it
    wraps, all sharing the family's config class: `config.family` names the family.
    """

    name: str
    layer: type[AdapterLayer] | str  # the class, or a deferred reference "package.module:Class"
    config: type[AdapterConfig]
    # module classes, or their names ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D") for classes the
    # plugin should not import (or depend on) just to say what it wraps; required when `layer` is a reference
    targets: tuple[type[nn.Module] | str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "adapter kind")
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            if isinstance(self.layer, str):
                from .errors import PluginError

                raise PluginError(f"adapter kind {self.name!r}: a layer given by reference needs targets=(...) "
                                  "(class names such as 'torch.nn.Linear' keep the plugin import-light)")
            object.__setattr__(self, "targets", tuple(self.layer.targets))

    @functools.cached_property
    def layer_class(self) -> type[AdapterLayer]:
        """The layer class (a reference is imported on first use)."""
        return resolve_reference(self.layer) if isinstance(self.layer, str) else self.layer

    @property
    def layer_name(self) -> str:
        """The layer class's name, without importing a reference."""
        return self.layer.rpartition(":")[2] if isinstance(self.layer, str) else self.layer.__qualname__

    @property
    def family(self) -> str:
        return self.config.family

    def wraps(self, cls: type) -> bool:
        """Whether `cls` itself (not a subclass: the registry walks the MRO) is one of the targets."""
        if cls in self.targets or qualified_name(cls) in self.targets:
            return True
        return any(isinstance(t, str) and _loaded_class(t) is cls for t in self.targets)

    def accepts(self, module: nn.Module) -> bool:
        """Whether this kind can wrap `module`: its class or one of its base classes is a target."""
        return any(self.wraps(cls) for cls in type(module).__mro__)

    @property
    def target_names(self) -> list[str]:
        """The targets' short class names, for messages."""
        return [t.rpartition(".")[2] if isinstance(t, str) else t.__name__ for t in self.targets]


def qualified_name(cls: type) -> str:
    """`module.QualName` of a class: how a kind names a target class it does not import."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class ModelSpec:
    """A base model: how to build it and the task that trains and measures it."""

    name: str
    build: Callable[..., nn.Module] | str  # or a deferred reference "package.module:Model"
    description: str = ""
    task: Task | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_targets: tuple[str, ...] = ()  # what training adapts when no targets are given
    default_family: str | None = None  # the adapter family trained when none is named (e.g. "lora")

    def __post_init__(self) -> None:
        _check_name(self.name, "model")
        object.__setattr__(self, "build", _deferred(self.build))


@dataclass(frozen=True)
class ModelSource:
    """Where a user's own model comes from (a transformers, diffusers or timm checkpoint, say): brought into
    the zoo as a base with `adapters zoo add-base NAME --from-pretrained DIR | --config FILE`.

    `load(pretrained=DIR | None, config=FILE | None)` returns the model (with the checkpoint's weights, or
    freshly initialised from a config) and a JSON-able dict; `build(**that dict)` rebuilds the same
    architecture later, whose weights the zoo then loads. `detect(path)` says whether a directory or config
    file is this source's (used when the user names no source). The zoo records the source's name in the
    base's card, so the zoo model NAME needs no plugin of its own.
    """

    name: str
    load: Callable[..., tuple[nn.Module, dict[str, Any]]] | str  # or deferred references "package.module:fn"
    build: Callable[..., nn.Module] | str
    detect: Callable[[Path], bool] | str | None = None
    description: str = ""
    default_family: str | None = None  # the adapter family its models train when none is named

    def __post_init__(self) -> None:
        _check_name(self.name, "model source")
        for attr in ("load", "build", "detect"):
            object.__setattr__(self, attr, _deferred(getattr(self, attr)))


@dataclass(frozen=True)
class CombineMethod:
    """A way to combine adapters into a new adapter.

    `families` lists the adapter families `fn` can combine (it gets inputs of
    those families only, mixed only if it lists them all). `options` declares
    the keyword options `fn` accepts: best a frozen dataclass whose fields carry
    `help_field` text (then `adapters combine --method NAME` offers each as a
    flag, e.g. `rank` -> `--rank`, and refuses the others); a tuple of names
    also works (no flags; `takes_rank` then says whether `rank` is one).
    `fn(inputs, rank=None, **options)` returns a CombineResult.
    """

    name: str
    fn: CombineFn | str  # or a deferred reference "package.module:function"
    families: tuple[str, ...] = ()
    description: str = ""
    options: tuple[str, ...] | type = ()
    takes_rank: bool = True  # only for a tuple of names: with a dataclass, `rank` is one of its fields or not

    def __post_init__(self) -> None:
        from .errors import PluginError

        _check_name(self.name, "combine method")
        object.__setattr__(self, "fn", _deferred(self.fn))
        object.__setattr__(self, "families", tuple(self.families))
        if not self.families:
            raise PluginError(f"combine method {self.name!r} must declare the adapter families it combines "
                              "(families=(...))")
        if isinstance(self.options, type):
            if not dataclasses.is_dataclass(self.options):
                raise PluginError(f"combine method {self.name!r}: options must be a dataclass (fields with "
                                  "help_field) or a tuple of names")
        else:
            object.__setattr__(self, "options", tuple(self.options))

    @property
    def Options(self) -> type | None:
        """The options dataclass, when the method declares one (the CLI makes flags of its fields)."""
        return self.options if isinstance(self.options, type) else None

    @property
    def option_names(self) -> tuple[str, ...]:
        """Every keyword option `fn` takes, `rank` included when it takes one."""
        if isinstance(self.options, type):
            return tuple(f.name for f in dataclasses.fields(self.options))
        return (*self.options, *(("rank",) if self.takes_rank else ()))


@dataclass(frozen=True)
class Format:
    """A file layout for export and import.

    `holds` is "adapter" (export gets an AdapterBundle, import returns one) or
    "model" (export gets the fused model's state dict, import returns one).
    """

    name: str
    export: ExportFn | str | None = None  # or deferred references "package.module:function"
    import_: ImportFn | str | None = None
    description: str = ""
    holds: str = "adapter"
    # a model format whose file is the state dict as one safetensors file sets the header metadata that file
    # carries: the core may then write it tensor by tensor (`--stream`), never holding the model
    stream_metadata: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "format")
        object.__setattr__(self, "export", _deferred(self.export))
        object.__setattr__(self, "import_", _deferred(self.import_))
        if self.holds not in ("adapter", "model"):
            from .errors import PluginError

            raise PluginError(f"format {self.name!r}: holds must be 'adapter' or 'model', not {self.holds!r}")


# The older names of the combine specs (the same classes).
MergeInput, MergeResult, MergeFn, MergeMethod = CombineInput, CombineResult, CombineFn, CombineMethod
