"""Deferred references: a class or function a plugin names as "package.module:attribute", imported on first use.

A plugin that registers only references and light config classes is imported without torch, which keeps
`adapters --help`, `plugins` and `zoo list` instant; the reference is checked (and a typo reported with the
plugin's name) when the thing is first needed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def resolve_reference(ref: str) -> Any:
    """The object a "package.module:attribute" reference names (importing its module)."""
    from .errors import PluginError

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"invalid reference {ref!r}: write it as 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"reference {ref!r} cannot be imported: {type(exc).__name__}: {exc}") from exc
    return obj


class Deferred:
    """A function named by reference: imported on its first call, then called directly."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self._target: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._target is None:
            self._target = resolve_reference(self.ref)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Deferred({self.ref!r})"


def _deferred(value: Any) -> Any:
    return Deferred(value) if isinstance(value, str) else value


def _loaded_class(name: str) -> type | None:
    """The class a qualified name ("torch.nn.Linear") names if its module is already imported, else None:
    a module of that class exists only where that module was imported, so nothing needs importing."""
    module_name, _, attr = name.rpartition(".")
    module = sys.modules.get(module_name)
    found = getattr(module, attr, None) if module is not None else None
    return found if isinstance(found, type) else None
