"""adapterhub_lite: a plugin-style manager for adapters (LoRA and other families) on PyTorch models.

Plugins (first-party ones included) import only the names in `__all__`.
Importing the package is cheap: the light names (errors, hooks, configs,
specs) load at once, every name that needs torch loads on first use
(`_LAZY`, PEP 562), so commands that only read cards, headers or the plugin
table never import torch. The core names no adapter family: the LoRA
plugin's config class is re-exported lazily too, so code written when it
lived in the core keeps importing it from here where that plugin is
installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .version import __version__

from .bounded_json import parse_json, read_json
from .config import AdapterConfig, help_field
from .errors import (
    AdapterFileError,
    AdapterhubError,
    AdapterhubWarning,
    AdapterStateError,
    ConfigError,
    HubError,
    IncompatibleAdapterError,
    MissingDependencyError,
    NameRuleError,
    PluginError,
    RefError,
    TrainingError,
    UnknownNameError,
    UnsupportedModuleError,
    WriteError,
    ZooError,
)
from .hookspecs import hookimpl, hookspec
from .lazy import lazy_exports
from .plugins import PluginManager, load_plugins
from .progress import Progress, set_quiet
from .refs import AdapterRef, parse_ref
from .specs import (
    AdapterBundle,
    AdapterKind,
    CombineFn,
    CombineInput,
    CombineMethod,
    CombineResult,
    ExportFn,
    Format,
    ImportFn,
    MergeFn,
    MergeInput,
    MergeMethod,
    MergeResult,
    ModelSource,
    ModelSpec,
)
from .tasks import DeferredTask, EvalContext, Task
from .tensorfile import read_header
from ._moved import install as _install_old_paths

_install_old_paths()  # adapterhub_lite.workflow & co. (moved under .zoo) still import, with a DeprecationWarning

# name -> the module that defines it, imported on first use (these need torch, or click for the CLI helpers)
_LAZY = {
    "AdaptedModel": ".model",
    "AdaptedModule": ".host",
    "AdapterLayer": ".layer",
    "AdapterPager": ".paging",
    "DataOptions": ".zoo.evaluation",
    "LayerPolicy": ".forward",
    "PluginOptionsCommand": ".cli.options",
    "Registry": ".registry",
    "Route": ".routing",
    "RowPool": ".routing",
    "Groups": ".routing",
    "groupable": ".routing",
    "grouped_conv_low_rank": ".routing",
    "grouped_low_rank": ".routing",
    "padded_width": ".routing",
    "Zoo": ".zoo",
    "ZooEntry": ".zoo",
    "add_adapter_version": ".zoo.versions",
    "build_within_budget": ".model_budget",
    "check_declared_size": ".model_budget",
    "hub_snapshot": ".zoo.hub_download",
    "safe_pattern": ".patterns",
    "config_values": ".cli.options",
    "first_positional": ".cli.options",
    "get_registry": ".registry",
    "load_adapter": ".serialization",
    "load_base": ".zoo.loading",
    "load_tensors": ".tensorfile",
    "resolve_stack": ".zoo.stacks",
    "stack": ".zoo.loading",
    "zoo_adapters": ".zoo.loading",
    "read_adapter_file": ".serialization",
    "save_adapter": ".serialization",
    "state_fingerprint": ".fingerprint",
    # the LoRA plugin's names, from when they lived in the core
    "LoraConfig": "adapterhub_lite_lora",
    "ATTENTION_PROJECTIONS": "adapterhub_lite_lora",
}

if TYPE_CHECKING:
    from .cli.options import PluginOptionsCommand, config_values, first_positional
    from .fingerprint import state_fingerprint
    from .forward import LayerPolicy
    from .zoo.hub_download import hub_snapshot
    from .model_budget import build_within_budget, check_declared_size
    from .patterns import safe_pattern
    from .host import AdaptedModule
    from .layer import AdapterLayer
    from .paging import AdapterPager
    from .model import AdaptedModel
    from .registry import Registry, get_registry
    from .routing import Groups, Route, RowPool, groupable, grouped_conv_low_rank, grouped_low_rank, padded_width
    from .serialization import load_adapter, read_adapter_file, save_adapter
    from .tensorfile import load_tensors
    from .zoo.evaluation import DataOptions
    from .zoo.loading import load_base, stack, zoo_adapters
    from .zoo.stacks import resolve_stack
    from .zoo.versions import add_adapter_version
    from .zoo.store import Zoo, ZooEntry

__all__ = [
    "AdaptedModel",
    "AdaptedModule",
    "AdapterBundle",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterKind",
    "AdapterLayer",
    "AdapterPager",
    "AdapterRef",
    "AdapterStateError",
    "CombineFn",
    "CombineInput",
    "CombineMethod",
    "CombineResult",
    "AdapterhubError",
    "AdapterhubWarning",
    "ConfigError",
    "DataOptions",
    "DeferredTask",
    "EvalContext",
    "ExportFn",
    "Format",
    "Groups",
    "ImportFn",
    "HubError",
    "IncompatibleAdapterError",
    "LayerPolicy",
    "MergeFn",  # the older names of the Combine* specs
    "MergeInput",
    "MergeMethod",
    "MergeResult",
    "MissingDependencyError",
    "NameRuleError",
    "ModelSource",
    "ModelSpec",
    "PluginError",
    "PluginManager",
    "PluginOptionsCommand",
    "Progress",
    "RefError",
    "Registry",
    "Route",
    "RowPool",
    "Task",
    "TrainingError",
    "UnknownNameError",
    "UnsupportedModuleError",
    "WriteError",
    "Zoo",
    "ZooEntry",
    "ZooError",
    "__version__",
    "add_adapter_version",
    "build_within_budget",
    "check_declared_size",
    "config_values",
    "first_positional",
    "get_registry",
    "groupable",
    "grouped_conv_low_rank",
    "grouped_low_rank",
    "help_field",
    "hookimpl",
    "hub_snapshot",
    "hookspec",
    "lazy_exports",
    "load_adapter",
    "load_base",
    "load_plugins",
    "load_tensors",
    "padded_width",
    "parse_json",
    "parse_ref",
    "read_adapter_file",
    "read_header",
    "read_json",
    "resolve_stack",
    "safe_pattern",
    "save_adapter",
    "set_quiet",
    "stack",
    "state_fingerprint",
    "zoo_adapters",
]


_lazy_getattr = lazy_exports(__name__, _LAZY)


def __getattr__(name: str) -> object:
    """Import a lazy name's module on first use (the LoRA names say which plugin to install if it is missing)."""
    try:
        return _lazy_getattr(name)
    except ImportError as exc:
        if not _LAZY[name].startswith("adapterhub_lite_lora"):
            raise
        raise MissingDependencyError(f"{name} comes with the LoRA plugin: pip install adapterhub-lite-lora") from exc


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
