"""Plugin discovery: a pluggy PluginManager filled from the `adapterhub_lite` entry points.

First-party plugins are found exactly like third-party ones, through installed
entry points; the core imports none of them. Environment variables:

- ``ADAPTERS_LOAD_PLUGINS``: comma-separated entry-point or distribution names
  to load; when set (even empty) nothing else is loaded.
- ``ADAPTERS_TRACE_PLUGINS``: set to 1 to print every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

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

    def add(self, plugin: object, name: str | None = None, distribution: str | None = None,
            version: str | None = None) -> str:
        """Register one plugin (a module or object with @hookimpl functions)."""
        name = name or self.get_canonical_name(plugin)
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

    def check(self) -> None:
        """Refuse hookimpls that match no hookspec (a typo in a hook name)."""
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r}: {exc}", plugin=str(exc.plugin)) from exc


def _wanted() -> set[str] | None:
    value = os.environ.get("ADAPTERS_LOAD_PLUGINS")
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def load_plugins(pm: PluginManager | None = None) -> PluginManager:
    """Load every installed `adapterhub_lite` entry point (filtered by ADAPTERS_LOAD_PLUGINS)."""
    pm = pm or PluginManager()
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
            raise PluginError(
                f"plugin {ep.name!r} ({dist or 'unknown distribution'}) failed to import: "
                f"{type(exc).__name__}: {exc}",
                plugin=ep.name,
            ) from exc
        pm.add(plugin, name=ep.name, distribution=dist, version=version)
    pm.check()
    return pm


def call_each_plugin(pm: PluginManager, hook_name: str, **kwargs: Any) -> Iterator[str]:
    """Call one hook plugin by plugin, yielding each plugin's name right after its call,
    so the caller can attribute what that plugin registered."""
    trace = bool(os.environ.get("ADAPTERS_TRACE_PLUGINS"))
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if trace:
            sys.stderr.write(f"adapterhub_lite: calling {hook_name} of plugin {impl.plugin_name!r}\n")
        impl.function(*[kwargs[arg] for arg in impl.argnames])
        yield impl.plugin_name
