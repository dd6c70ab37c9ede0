"""adapterhub_lite: a plugin-style manager for adapters (LoRA and other families) on PyTorch models.

Plugins (first-party ones included) import only the names in `__all__`. The
core names no adapter family: the LoRA plugin's config class is re-exported
lazily here (`_LAZY`), so code written when it lived in the core keeps
importing it from here where that plugin is installed.
"""

__version__ = "0.1.0"

from .config import AdapterConfig, help_field
from .errors import (
    AdapterFileError,
    AdapterhubError,
    AdapterhubWarning,
    AdapterStateError,
    ConfigError,
    IncompatibleAdapterError,
    HubError,
    MissingDependencyError,
    NameRuleError,
    PluginError,
    RefError,
    UnknownNameError,
    TrainingError,
    UnsupportedModuleError,
    WriteError,
    ZooError,
)
from .fingerprint import state_fingerprint
from .hookspecs import hookimpl, hookspec
from .cli.options import PluginOptionsCommand, config_values, first_positional
from .layer import AdapterLayer
from .model import AdaptedModel
from .plugins import PluginManager, load_plugins
from .progress import Progress, set_quiet
from .refs import AdapterRef, parse_ref
from .registry import Registry, get_registry
from .serialization import load_adapter, read_adapter_file, save_adapter
from .tensorfile import load_tensors, read_header
from .specs import (
    AdapterBundle,
    AdapterKind,
    EvalContext,
    ExportFn,
    Format,
    ImportFn,
    MergeFn,
    MergeInput,
    MergeMethod,
    MergeResult,
    ModelSpec,
    Task,
)
from .workflow import DataOptions, add_adapter_version, load_base
from .zoo import Zoo, ZooEntry

__all__ = [
    "AdaptedModel",
    "AdapterBundle",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterKind",
    "AdapterLayer",
    "AdapterRef",
    "AdapterStateError",
    "AdapterhubError",
    "AdapterhubWarning",
    "ConfigError",
    "DataOptions",
    "EvalContext",
    "ExportFn",
    "Format",
    "ImportFn",
    "HubError",
    "IncompatibleAdapterError",
    "MergeFn",
    "MergeInput",
    "MergeMethod",
    "MergeResult",
    "MissingDependencyError",
    "NameRuleError",
    "ModelSpec",
    "PluginError",
    "PluginManager",
    "PluginOptionsCommand",
    "Progress",
    "RefError",
    "Registry",
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
    "config_values",
    "first_positional",
    "get_registry",
    "help_field",
    "hookimpl",
    "hookspec",
    "load_adapter",
    "load_base",
    "load_plugins",
    "load_tensors",
    "parse_ref",
    "read_adapter_file",
    "read_header",
    "save_adapter",
    "set_quiet",
    "state_fingerprint",
]


_LAZY = {"LoraConfig": "adapterhub_lite_lora", "ATTENTION_PROJECTIONS": "adapterhub_lite_lora"}


def __getattr__(name: str) -> object:
    """The lazy re-export of the LoRA plugin's config (the only place the core names it)."""
    if name in _LAZY:
        import importlib

        try:
            return getattr(importlib.import_module(_LAZY[name]), name)
        except ImportError as exc:
            raise MissingDependencyError(f"{name} comes with the LoRA plugin: pip install adapterhub-lite-lora") \
                from exc
    raise AttributeError(f"module 'adapterhub_lite' has no attribute {name!r}")
