"""Writing what an AdaptedModel holds in a registered format: one adapter, or the model with the active
adapters fused in. The one writer of exports (the zoo's `exchange.export_refs` prepares an AdaptedModel and
comes here); every write goes through `atomic.publish`, so a failed export leaves nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .atomic import publish
from .errors import ConfigError
from .tensorfile import untied

if TYPE_CHECKING:
    from .serialization import ModelHandle  # what a writer needs of model.AdaptedModel


def fused_state_dict(am: ModelHandle) -> dict[str, Tensor]:
    """The plain model's state dict with the active adapters folded in; the model is left as it was."""
    was_folded = bool(am.folded)
    if not was_folded:
        am.fold()
    try:
        layers = sorted(am.layers(), key=len, reverse=True)
        state = {}
        for key, value in am.model.state_dict().items():
            owner = next((n for n in layers if key.startswith(n + ".")), None)
            if owner is not None:
                rest = key[len(owner) + 1:]
                if rest.startswith("adapters."):
                    continue
                key = f"{owner}.{rest.removeprefix('base.')}"
            state[key] = value
        return untied(state)
    finally:
        if not was_folded:
            am.unfold()
            am.release_buffers()  # the returned tensors must never be reused as fold buffers


def export(am: ModelHandle, name: str | None = None, *, format: str, dest: str | Path, **options: Any) -> Path:
    """Write adapter `name` in a registered format, or (model formats, name None) the fused model."""
    fmt = am.registry.get_format(format)
    if fmt.export is None:
        raise ConfigError(f"format {format!r} cannot export", option="format")
    if fmt.holds == "model":
        state = fused_state_dict(am)
        return publish(dest, lambda target: fmt.export(state, target, name=None, **options))
    if name is None:
        raise ConfigError(f"format {format!r} writes one adapter: name it")
    if name not in am.adapters:
        from .errors import UnknownNameError

        raise UnknownNameError("adapter", name, am.adapters)
    return publish(dest, lambda target: fmt.export(am, target, name=name, **options))
