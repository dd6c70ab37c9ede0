"""From zoo entries to models: build a base and load its checked weights, and stack adapters on it.

A base's weights must match the fingerprint in its card, fit the model strictly and be finite; every adapter
loads onto its base with its fingerprints checked (`AdaptedModel.load_adapter`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import AdapterFileError, RefError, ZooError, shorten
from ..fingerprint import state_fingerprint
from ..model import AdaptedModel
from ..refs import AdapterRef, check_name
from ..registry import Registry
from ..tensorfile import check_finite_floats, load_tensors
from .stacks import Stack, resolve_stack
from .store import Zoo, ZooEntry


def load_base(registry: Registry, entry: ZooEntry) -> nn.Module:
    """Build a zoo base and load its weights, checking them against the card's fingerprint."""
    registry.adopt(entry.model, entry.card)  # a model brought in with `zoo add-base` is built by its source
    try:
        model = registry.create_model(entry.model, **entry.card.get("config", {}))
    except TypeError as exc:
        raise ZooError(f"{entry.ref}: its card's config does not build model {entry.model!r} "
                       f"({shorten(str(exc), 120)}); restore or delete {entry.path}") from exc
    try:
        state, _ = load_tensors(entry.weights)
    except AdapterFileError as exc:
        raise ZooError(f"{exc}; restore or delete {entry.path}") from exc
    if state_fingerprint(state) != entry.card.get("fingerprint"):
        raise ZooError(f"{entry.weights} does not match the fingerprint in its card: the file was changed; "
                       f"restore or delete {entry.path}")
    _load_checked(model, state, f"{entry.ref}")
    return model.eval()


def _load_checked(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load `state` strictly into `model`, refusing a tensor whose kind (floating or not) differs from the
    model's and non-finite parameters (buffers such as masks may hold infinities)."""
    own = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    for key, tensor in state.items():
        if key in own and own[key].is_floating_point() != tensor.is_floating_point():
            raise ZooError(f"{source}: tensor {shorten(key, 80)} is {str(tensor.dtype).removeprefix('torch.')}, "
                           f"the model's is {str(own[key].dtype).removeprefix('torch.')}")
    try:
        check_finite_floats({k: v for k, v in state.items() if k in parameters}, source, "parameter")
    except AdapterFileError as exc:
        raise ZooError(str(exc)) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ZooError(f"{source} does not fit model {model.__class__.__name__!r}: "
                       f"{shorten(' '.join(str(exc).split()), 300)}") from exc


def fitting_state(registry: Registry, model: str, config: dict[str, Any], state: dict[str, Any],
                  source: str) -> dict[str, Any]:
    """`state` loaded strictly into a fresh `model`: a checkpoint that does not fit is a clear error."""
    plain = registry.create_model(model, **config)
    _load_checked(plain, state, source)
    return plain.state_dict()


def stack(registry: Registry, zoo: Zoo, refs: Sequence[str | AdapterRef] | Stack, model: str | None = None
          ) -> tuple[AdaptedModel, ZooEntry]:
    """Load the base and every adapter the refs (or a resolved Stack) name, active at their weights."""
    resolved = resolve_stack(zoo, refs, model)
    am = AdaptedModel(load_base(registry, resolved.base), base_id=resolved.base.ref, registry=registry)
    names: list[str] = []
    for entry, _weight in resolved.adapters:
        label = entry.name if entry.name not in names else f"{entry.name}-v{entry.version}"
        while label in names:  # the same version twice (e.g. inside two compositions)
            label += "-again"
        am.load_adapter(entry.weights, name=label)
        names.append(label)
    am.set_active(names, [w for _, w in resolved.adapters])
    return am, resolved.base


def zoo_adapters(zoo: Zoo, model: str) -> Callable[[str], Path]:
    """A pager's source (`paging.AdapterPager`): adapter name -> the file of the latest version of `model/name`
    in the zoo, looked up when a batch first names it (a version published later is read after an eviction).
    A base or a composition under that name is refused."""
    def adapter_file(name: str) -> Path:
        entry = zoo.resolve(AdapterRef(model, check_name(name, "adapter name")))
        if entry.entry_type != "adapter":
            raise RefError(f"{entry.ref} is a {entry.entry_type}, not an adapter: a route names adapters only")
        return entry.weights

    return adapter_file
