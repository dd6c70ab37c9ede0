"""The registry: every kind, model, combine method and format, with the plugin that owns it.

Built from a PluginManager (never module-global state), so each test can make
its own. Lookups follow timm: `create_model(name)`, `list_models(pattern)`,
`get_kind(name)`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .config import AdapterConfig
from .errors import AdapterhubError, ConfigError, PluginError, UnknownNameError, UnsupportedModuleError
from .plugins import PluginManager, call_each_plugin, get_plugin_manager, load_plugins
from ._moved import Renamed
from .deferred import Deferred
from .specs import AdapterKind, CombineMethod, Format, ModelSource, ModelSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from .zoo.store import Zoo

S = TypeVar("S")


@dataclass(frozen=True)
class Owned(Generic[S]):
    spec: S
    plugin: str


# hook name -> (attribute holding the table, spec type, word used in messages)
_TABLES: dict[str, tuple[str, type, str]] = {
    "register_adapter_types": ("kinds", AdapterKind, "adapter kind"),
    "register_models": ("models", ModelSpec, "model"),
    "register_combine_methods": ("combine_methods", CombineMethod, "combine method"),
    "register_merge_methods": ("combine_methods", CombineMethod, "combine method"),  # the hook's older name
    "register_formats": ("formats", Format, "format"),
    "register_model_sources": ("sources", ModelSource, "model source"),
}


def _check_family_owner(kinds: dict[str, Owned[AdapterKind]], spec: AdapterKind, owner: str) -> None:
    """A family has one config class: another plugin may add kinds to it (new module types) with that class,
    but a second config class claiming the family's name would silently replace its options everywhere."""
    rival = next((o for o in kinds.values() if o.spec.family == spec.family and o.spec.config is not spec.config),
                 None)
    if rival is not None:
        claims = sorted([(rival.plugin, rival.spec.config.__name__), (owner, spec.config.__name__)])
        both = " and ".join(f"{plugin!r} ({config})" for plugin, config in claims)
        raise PluginError(
            f"adapter family {spec.family!r} is claimed by both {both}: a family has one config class; uninstall "
            "one, or give one config another family name (its `kind`), or register the kind with the family's "
            "own config", plugin=owner)


class Registry:
    def __init__(self, pm: PluginManager) -> None:
        self.pm = pm
        self.kinds: dict[str, Owned[AdapterKind]] = {}
        self.models: dict[str, Owned[ModelSpec]] = {}
        self.combine_methods: dict[str, Owned[CombineMethod]] = {}
        self.formats: dict[str, Owned[Format]] = {}
        self.sources: dict[str, Owned[ModelSource]] = {}
        for hook_name in _TABLES:
            self._collect(hook_name)

    @classmethod
    def from_entry_points(cls) -> Registry:
        return cls(load_plugins())

    def _collect(self, hook_name: str) -> None:
        attr, spec_type, what = _TABLES[hook_name]
        table: dict[str, Owned[Any]] = getattr(self, attr)
        pending: list[Any] = []
        for owner in call_each_plugin(self.pm, hook_name, register=pending.append):
            for spec in pending:
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"plugin {owner!r} passed {type(spec).__name__} to {hook_name}; "
                        f"expected adapterhub_lite.{spec_type.__name__}",
                        plugin=owner,
                    )
                if spec.name in table:
                    raise PluginError(
                        f"{what} {spec.name!r} is registered by both {table[spec.name].plugin!r} and "
                        f"{owner!r}: uninstall one, or rename it in your plugin",
                        plugin=owner,
                    )
                if attr == "kinds":
                    _check_family_owner(table, spec, owner)
                table[spec.name] = Owned(spec, owner)
            pending.clear()

    # --- adapter kinds ----------------------------------------------------------
    def get_kind(self, name: str) -> AdapterKind:
        if name not in self.kinds:
            raise UnknownNameError("adapter kind", name, self.kinds, "Run `adapters plugins` to see what is installed")
        return self.kinds[name].spec

    def families(self) -> dict[str, type[AdapterConfig]]:
        return {o.spec.family: o.spec.config for o in self.kinds.values()}

    def config_class(self, family: str) -> type[AdapterConfig]:
        families = self.families()
        if family not in families:
            raise UnknownNameError("adapter family", family, families, "Install the plugin that provides it")
        return families[family]

    def default_family(self, model: str | None = None) -> str:
        """The family to train when none is named: the model's own default, else the only one installed."""
        families = self.families()
        if model is not None and model in self.models:
            wanted = self.get_model(model).default_family
            if wanted:
                return self.config_class(wanted).family
        if len(families) == 1:
            return next(iter(families))
        if not families:
            raise ConfigError("no adapter family is installed: install one, e.g. plugins/adapterhub-lite-lora")
        raise ConfigError(f"name the adapter family (installed: {', '.join(sorted(families))})", option="family")

    def kind_for(self, module: nn.Module, family: str) -> AdapterKind | None:
        """The family's kind for this module: the most specific class in the module's MRO wins."""
        candidates = [o.spec for o in self.kinds.values() if o.spec.family == family]
        for cls in type(module).__mro__:
            for kind in candidates:
                if kind.wraps(cls):
                    return kind
        return None

    def require_kind_for(self, module: nn.Module, family: str, module_name: str) -> AdapterKind:
        kind = self.kind_for(module, family)
        if kind is None:
            raise UnsupportedModuleError(
                f"module {module_name!r} is a {type(module).__name__}, which no {family!r} adapter kind can wrap; "
                f"{family!r} wraps: {', '.join(self.wrappable_types(family)) or 'nothing'}"
            )
        return kind

    def wrappable_types(self, family: str) -> list[str]:
        return sorted({t for o in self.kinds.values() if o.spec.family == family for t in o.spec.target_names})

    # --- models, combine methods, formats-----------------------------------------------
    def list_models(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self.models if fnmatch.fnmatchcase(n, pattern))

    def get_model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UnknownNameError("model", name, self.models, "Run `adapters plugins` to see what is installed")
        return self.models[name].spec

    def create_model(self, name: str, **kwargs: Any) -> nn.Module:
        spec = self.get_model(name)
        build = spec.build.resolve() if isinstance(spec.build, Deferred) else spec.build
        _check_arguments(name, build, kwargs)
        if not kwargs:
            return build(**spec.defaults)
        try:
            return build(**{**spec.defaults, **kwargs})
        except AdapterhubError:  # the model's own check said what is wrong
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type or range for the constructor
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ConfigError(f"model {name!r} cannot be built with {given}: {error}") from error

    # --- zoo models a model source builds (added with `adapters zoo add-base`) ----------------------------------
    def get_source(self, name: str) -> ModelSource:
        if name not in self.sources:
            raise UnknownNameError("model source", name, self.sources,
                                   "Install the plugin that provides it (e.g. plugins/adapterhub-lite-hf)")
        return self.sources[name].spec

    def adopt(self, model: str, card: Mapping[str, Any]) -> bool:
        """Make zoo model `model` buildable when its base card names the source it came from (its card's
        `config` is then what the source's build takes). True if `model` is known afterwards."""
        source = card.get("source")
        if model in self.models or not isinstance(source, str):
            return model in self.models
        if source not in self.sources:
            raise ConfigError(f"zoo model {model!r} was added from model source {source!r}, which no installed "
                              "plugin provides: install that plugin (see `adapters plugins`)")
        owned = self.sources[source]
        spec = ModelSpec(name=model, build=owned.spec.build, default_family=owned.spec.default_family,
                         description=f"added to the zoo from {source}")
        self.models[model] = Owned(spec, owned.plugin)
        return True

    def adopt_zoo_models(self, zoo: Zoo) -> None:
        """`adopt` every model of `zoo` that no plugin registers and whose base card names a source."""
        for model in zoo.models():
            if model not in self.models:
                card = next((e.card for e in zoo.entries(model) if e.is_base and "source" in e.card), None)
                if card is not None:
                    self.adopt(model, card)

    def get_combine_method(self, name: str) -> CombineMethod:
        if name not in self.combine_methods:
            raise UnknownNameError("combine method", name, self.combine_methods)
        return self.combine_methods[name].spec

    def get_format(self, name: str) -> Format:
        if name not in self.formats:
            raise UnknownNameError("format", name, self.formats)
        return self.formats[name].spec

    # The older names, with a DeprecationWarning.
    merges, get_merge_method = Renamed("combine_methods"), Renamed("get_combine_method")

    # --- listing ---------------------------------------------------------------------
    def describe(self, commands: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """One entry per plugin with everything it registered (for `adapters plugins`)."""
        out = []
        for name, _ in self.pm.list_name_plugin():
            info = self.pm.infos.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "distribution": info.distribution if info else None,
                "version": info.version if info else None,
            }
            for attr in dict.fromkeys(attr for attr, _spec, _what in _TABLES.values()):
                table: dict[str, Owned[Any]] = getattr(self, attr)
                entry[attr] = [_describe_spec(o.spec) for o in table.values() if o.plugin == name]
            entry["merges"] = entry["combine_methods"]  # the key's older name, kept for scripts reading it
            entry["commands"] = sorted((commands or {}).get(name, []))
            out.append(entry)
        return out


def _describe_spec(spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": spec.name, "description": spec.description}
    if isinstance(spec, AdapterKind):
        data.update(family=spec.family, targets=spec.target_names, layer=spec.layer_name)
    elif isinstance(spec, ModelSpec):
        data.update(task=spec.task.name if spec.task else "")
    elif isinstance(spec, Format):
        data.update(export=spec.export is not None, import_=spec.import_ is not None)
    return data


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry from installed plugins (built once, on first use)."""
    return Registry(get_plugin_manager())


def _check_arguments(model: str, build: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse, in one line naming what the model takes, arguments its constructor does not take (a recipe's
    `model_args` or `train-base --model-arg`), instead of a TypeError from deep inside the build."""
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    takes = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise ConfigError(f"model {model!r} takes no argument {', '.join(map(repr, unknown))}; it takes: "
                          f"{', '.join(takes) or 'none'}")
