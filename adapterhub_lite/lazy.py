"""Module attributes imported on first use (PEP 562), so a package can name heavy classes without loading them.

The core uses it for every name that needs torch; plugins use it for their
layer classes, so that importing a plugin to read its registrations stays
light. `lazy_exports` returns the module's `__getattr__`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """`__getattr__` for `package`: `names` maps an attribute to the module defining it (".linear" is relative
    to the package). The value is kept in the package after its first use."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
