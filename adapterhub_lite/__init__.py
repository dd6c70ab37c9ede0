"""adapterhub_lite: a plugin-style manager for LoRA adapters on PyTorch models.

Plugins (first-party ones included) import only the names in `__all__`.
"""

__version__ = "0.1.0"

from .config import ATTENTION_PROJECTIONS, AdapterConfig, LoraConfig
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
from .buffers import empty_weight_like, sole_owner
from .layer import AdapterLayer
from .model import AdaptedModel
from .plugins import PluginManager, load_plugins
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
    "ATTENTION_PROJECTIONS",
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
    "LoraConfig",
    "MergeFn",
    "MergeInput",
    "MergeMethod",
    "MergeResult",
    "MissingDependencyError",
    "NameRuleError",
    "ModelSpec",
    "PluginError",
    "PluginManager",
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
    "empty_weight_like",
    "get_registry",
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
    "sole_owner",
    "state_fingerprint",
]
