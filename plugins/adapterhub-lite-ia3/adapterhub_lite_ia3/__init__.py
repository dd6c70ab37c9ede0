"""(IA)^3 for adapterhub_lite: learned per-feature scales on nn.Linear and nn.Conv2d.

Registered through the `adapterhub_lite` entry point, exactly as a third-party package would be; imports only
adapterhub_lite's public names. Multiplicative (see `layer.py` for what stacking and weights mean).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from adapterhub_lite import AdapterKind, hookimpl, lazy_exports

from .config import IA3Config

if TYPE_CHECKING:
    from .layer import IA3Layer

__all__ = ["IA3Config", "IA3Layer"]
__getattr__ = lazy_exports(__name__, {"IA3Layer": ".layer"})  # torch on first use
LAYER = f"{__name__}.layer:IA3Layer"


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="ia3-linear", layer=LAYER, config=IA3Config, targets=("torch.nn.Linear",),
                         description="(IA)^3 on nn.Linear: learned scales on its output (or, feedforward, input)"))
    register(AdapterKind(name="ia3-conv2d", layer=LAYER, config=IA3Config, targets=("torch.nn.Conv2d",),
                         description="(IA)^3 on nn.Conv2d: learned scales on its output (or input) channels"))
