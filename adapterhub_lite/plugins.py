"""Plugin discovery: a pluggy PluginManager filled from the `adapterhub_lite` entry points.

First-party plugins are found exactly like third-party ones, through installed
entry points; the core imports none of them. Environment variables:

- ``ADAPTERS_LOAD_PLUGINS``: comma-separated entry-point or distribution names
  to load; when set (even empty) nothing else is loaded.
- ``ADAPTERS_TRACE_PLUGINS``: set to 1 to print every hook call to stderr
  (pluggy's own tracing, plus which plugin each call is for).
- ``ADAPTERS_STRICT_PLUGINS``: set to 1 to make a plugin that cannot load an
  error (CI, plugin authors). By default such a plugin is set aside with one
  warning line and listed by `adapters plugins` with the reason, and every
  other plugin works: one broken install does not take every command down.

Hooks are called through pluggy's hook callers, never by calling a plugin's
function directly, so hook wrappers, `tryfirst` / `trylast` ordering and
tracing all apply.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import AdapterhubWarning, PluginError

ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with our hookspecs and a record of where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.broken: dict[str, str] = {}  # plugins set aside (not strict): name -> why, for `adapters plugins`
        if os.environ.get("ADAPTERS_TRACE_PLUGINS"):
            self.trace.root.setwriter(sys.stderr.write)
            self.enable_tracing()

    def add(self, plugin: object, name: str | None = None, distribution: str | None = None,
            version: str | None = None) -> str:
        """Register one plugin (a module or object with @hookimpl functions)."""
        name = name or self.get_canonical_name(plugin)
        try:
            hash(plugin)
        except TypeError:  # pluggy keeps plugins in sets (hook subsets): a module, class or plain instance
            raise PluginError(f"plugin {name!r} cannot be registered: it is not hashable (use a module, a class or "
                              "an instance of a class that does not define __eq__ without __hash__)",
                              plugin=name) from None
        if self.has_plugin(name) or self.is_registered(plugin):
            owner = self.infos.get(name)
            where = f" (already registered from {owner.distribution})" if owner and owner.distribution else ""
            raise PluginError(f"plugin name {name!r} is registered twice{where}: uninstall one of them", plugin=name)
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}", plugin=name) from exc
        self.infos[name] = PluginInfo(name, distribution, version)
        return name

    def check(self, strict: bool = True) -> None:
        """Refuse hookimpls that match no hookspec (a typo in a hook name); not strict: set such a plugin aside
        (unregistered, recorded in `broken`, one warning) and check the rest."""
        while True:
            try:
                self.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.get_name(exc.plugin) or str(exc.plugin)
                error = PluginError(f"plugin {name!r}: {exc}", plugin=name)
                if strict:
                    raise error from exc
                self.unregister(exc.plugin)
                self.set_aside(name, str(exc))

    def set_aside(self, name: str, why: str) -> None:
        """Record a plugin that could not load and say so once, on one line."""
        self.broken[name] = why
        warnings.warn(f"plugin {name!r} is not loaded: {why}; every other plugin works (`adapters plugins` lists "
                      "it; ADAPTERS_STRICT_PLUGINS=1 makes this an error)", AdapterhubWarning, stacklevel=2)


def _wanted() -> set[str] | None:
    value = os.environ.get("ADAPTERS_LOAD_PLUGINS")
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def strict_plugins() -> bool:
    return os.environ.get("ADAPTERS_STRICT_PLUGINS", "") not in ("", "0")


def load_plugins(pm: PluginManager | None = None, strict: bool | None = None) -> PluginManager:
    """Load every installed `adapterhub_lite` entry point (filtered by ADAPTERS_LOAD_PLUGINS). A plugin that
    fails to import, is invalid, or implements a hook that does not exist is an error when `strict` (default:
    ADAPTERS_STRICT_PLUGINS), else set aside with one warning (`pm.broken`)."""
    pm = pm or PluginManager()
    strict = strict_plugins() if strict is None else strict
    wanted = _wanted()
    seen: set[tuple[str, str]] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say who it is
            error = PluginError(f"plugin {ep.name!r} ({dist or 'unknown distribution'}) failed to import: "
                                f"{type(exc).__name__}: {exc}", plugin=ep.name)
            if strict:
                raise error from exc
            pm.set_aside(ep.name, f"{dist or 'unknown distribution'} failed to import: {type(exc).__name__}: {exc}")
            continue
        try:
            pm.add(plugin, name=ep.name, distribution=dist, version=version)
        except PluginError as exc:
            if strict:
                raise
            pm.set_aside(ep.name, str(exc))
    pm.check(strict)
    return pm


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (plugins imported once, on first use; their registrations are not
    collected: `get_registry` does that, so a command that needs only the plugins' commands stays light)."""
    return load_plugins()


def call_each_plugin(pm: PluginManager, hook_name: str, **kwargs: Any) -> Iterator[str]:
    """Call a hook plugin by plugin, in pluggy's own order (tryfirst first, trylast last, later registrations
    before earlier ones), yielding each plugin's name right after its call, so the caller can attribute what
    that plugin registered. Each call goes through pluggy: a subset hook caller holding that plugin and every
    plugin that wraps the hook, so wrappers run around each call and tracing sees it."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()  # pluggy calls these last to first
    wrapping = {id(impl.plugin) for impl in impls if impl.hookwrapper or impl.wrapper}
    trace = bool(os.environ.get("ADAPTERS_TRACE_PLUGINS"))
    for impl in reversed(impls):
        if impl.hookwrapper or impl.wrapper:
            continue
        if trace:
            sys.stderr.write(f"adapterhub_lite: calling {hook_name} of plugin {impl.plugin_name!r}\n")
        others = [p for p in pm.get_plugins() if p is not impl.plugin and id(p) not in wrapping]
        pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        yield impl.plugin_name
