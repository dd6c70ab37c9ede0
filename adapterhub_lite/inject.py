"""Finding target modules and wrapping them in adapted modules.

Names are the model's own module names (`blocks.0.attn`), before wrapping:
a wrapped module keeps its name, its original sits at `<name>.base`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from .config import AdapterConfig
from .errors import UnknownNameError, UnsupportedModuleError, shorten
from .host import AdaptedModule
from .patterns import safe_pattern
from .registry import Registry
from .specs import AdapterKind


@dataclass(frozen=True)
class Target:
    name: str
    module: nn.Module  # the base module (inside its AdaptedModule if already wrapped)
    kind: AdapterKind


def named_base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every module, seeing through adapter layers to their base."""
    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if isinstance(child, AdaptedModule):
                yield name, child.base
                yield from walk(child.base, f"{name}.")
            else:
                yield name, child
                yield from walk(child, f"{name}.")
    yield from walk(model, "")


def adapter_layers(model: nn.Module) -> dict[str, AdaptedModule]:
    """Every adapter layer by its name, as `named_modules` names them (a module met twice counts once), without
    walking into the layers' own adapters: with dozens of adapters those are most of the model's modules, and
    the walk runs on every routed call."""
    found: dict[str, AdaptedModule] = {}
    seen: set[int] = set()

    def walk(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, AdaptedModule):
            found[name] = module
            walk(module.base, f"{name}.base" if name else "base")
            return
        for child_name, child in module._modules.items():
            if child is not None:
                walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return found


def pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return safe_pattern(pattern[3:], f"target {shorten(pattern, 80)}").fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


_GLOB = re.compile(r"[*?\[]")


def _literal(pattern: str) -> str | None:
    """The one module name a pattern can match, when it is a plain name (no glob character) or an escaped name
    after "re:" (as a bundle names its exact modules); None otherwise."""
    if not pattern.startswith("re:"):
        return None if _GLOB.search(pattern) else pattern
    name = re.sub(r"\\(.)", r"\1", pattern[3:])
    return name if re.escape(name) == pattern[3:] else None


def _matchers(patterns: tuple[str, ...]) -> tuple[dict[str, list[str]], list[tuple[str, Callable[[str], bool]]]]:
    """The patterns split into plain names (looked up, not scanned: a bundle names hundreds) and matchers,
    each compiled once."""
    literals: dict[str, list[str]] = {}
    matchers: list[tuple[str, Callable[[str], bool]]] = []
    for pattern in patterns:
        name = _literal(pattern)
        if name is not None:
            literals.setdefault(name, []).append(pattern)
        elif pattern.startswith("re:"):
            compiled = safe_pattern(pattern[3:], f"target {shorten(pattern, 80)}")
            matchers.append((pattern, lambda n, c=compiled: c.fullmatch(n) is not None))
        else:
            glob = re.compile(fnmatch.translate(pattern))
            matchers.append((pattern, lambda n, g=glob: g.match(n) is not None))
    return literals, matchers


def _inside_attention(name: str, modules: dict[str, nn.Module]) -> str | None:
    """nn.MultiheadAttention reads its out_proj weight directly: wrapping it would do nothing."""
    parent, _, child = name.rpartition(".")
    if child == "out_proj" and isinstance(modules.get(parent), nn.MultiheadAttention):
        return parent
    return None


def find_targets(model: nn.Module, config: AdapterConfig, registry: Registry) -> list[Target]:
    """Every module the config selects, each with the kind that will wrap it.

    A pattern that matches no module name, or only modules no kind can wrap,
    is an error: a typo never silently adapts nothing.
    """
    family = config.family
    registry.config_class(family)  # the family must be installed
    modules = dict(named_base_modules(model))
    type_names = {cls.__name__ for m in modules.values() for cls in type(m).__mro__}
    for type_name in config.target_types:
        if type_name not in type_names:
            raise UnknownNameError("module type", type_name, {type(m).__name__ for m in modules.values()})

    def type_ok(module: nn.Module) -> bool:
        return not config.target_types or any(c.__name__ in config.target_types for c in type(module).__mro__)

    targets: list[Target] = []
    hits: dict[str, list[str]] = {p: [] for p in config.targets}
    literals, matchers = _matchers(tuple(config.targets))
    for name, module in modules.items():
        matched = [*literals.get(name, ()), *(p for p, matches in matchers if matches(name))]
        for p in matched:
            hits[p].append(name)
        if (config.targets and not matched) or not type_ok(module):
            continue
        if _inside_attention(name, modules) is not None:
            continue
        kind = registry.kind_for(module, family)
        if kind is not None:
            targets.append(Target(name, module, kind))

    chosen = {t.name for t in targets}
    for pattern, names in hits.items():
        if not names:
            raise UnknownNameError(
                "module", pattern, modules, "Targets are globs over module names ('re:' for a regex)"
            )
        if not any(n in chosen for n in names):
            attention = [_inside_attention(n, modules) for n in names]
            if any(attention):
                raise UnsupportedModuleError(
                    f"target {pattern!r} selects the out_proj of nn.MultiheadAttention {attention[0]!r}, which "
                    f"reads its weight directly; target {attention[0]!r} itself with attention_projections"
                )
            kinds = ", ".join(sorted({type(modules[n]).__name__ for n in names}))
            raise UnsupportedModuleError(
                f"target {pattern!r} selects only modules no {family!r} kind can wrap ({kinds}); "
                f"{family!r} wraps: {', '.join(registry.wrappable_types(family))}"
            )
    if not targets:
        raise UnsupportedModuleError(
            f"the config selects no module a {family!r} kind can wrap "
            f"(target_types={list(config.target_types)}); {family!r} wraps: {', '.join(registry.wrappable_types(family))}"
        )
    return targets


def wrap(model: nn.Module, name: str, layer: AdaptedModule) -> None:
    model.set_submodule(name, layer)


def unwrap(model: nn.Module, name: str) -> nn.Module:
    layer = model.get_submodule(name)
    assert isinstance(layer, AdaptedModule), name
    model.set_submodule(name, layer.base)
    base = layer.base
    layer.release()
    return base
