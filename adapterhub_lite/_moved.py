"""Old names that still work, each with a DeprecationWarning naming the new one, so code written against an
earlier API keeps running for now: the import paths of the modules that moved into the `zoo` subpackage, and
attributes renamed to the project's fixed words (fold, combine, fuse: docs/architecture.md)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

WORKFLOW = ("loading", "evaluation", "versions", "train")  # the one "workflow" module, split by what it does
MOVED: dict[str, tuple[str, ...]] = {
    f"adapterhub_lite.{old}": tuple(f"adapterhub_lite.zoo.{n}" for n in new)
    for old, new in {
        "cards": ("cards",), "stacks": ("stacks",), "composition": ("compositions",), "workflow": WORKFLOW,
        "merge": ("combine", "fuse"), "streaming": ("streaming",), "exchange": ("exchange",), "hub": ("hub",),
        "hub_download": ("hub_download",), "sources": ("sources",), "zoo_report": ("report",),
        "build": ("build",), "running": ("running",),
    }.items()
}
MOVED["adapterhub_lite.zoo.workflow"] = tuple(f"adapterhub_lite.zoo.{n}" for n in WORKFLOW)


class Renamed:
    """A class attribute kept under its old name: reading it warns and gives the attribute's new name's value
    (a method, a property's value, a plain attribute alike)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old, self.owner = name, owner.__name__

    def __get__(self, obj: object, owner: type | None = None) -> object:
        warnings.warn(f"{self.owner}.{self.old} is now called {self.new}: use the new name (the old one will go)",
                      DeprecationWarning, stacklevel=2)
        return getattr(owner if obj is None else obj, self.new)


class _Alias(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {' and '.join(self.targets)}: import it from there",
                      DeprecationWarning, stacklevel=2)
        for target in reversed(self.targets):
            found = importlib.import_module(target)
            module.__dict__.update({k: v for k, v in vars(found).items() if not k.startswith("__")})


class _OldPaths(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name])) if name in MOVED else None


def install() -> None:
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
