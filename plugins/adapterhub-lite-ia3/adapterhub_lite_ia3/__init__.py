"""(IA)^3 for adapterhub_lite: learned per-feature scales on nn.Linear and nn.Conv2d.

Registered through the `adapterhub_lite` entry point, exactly as a third-party package would be; imports only
adapterhub_lite's public names. Multiplicative (see `layer.py` for what stacking and weights mean).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from adapterhub_lite import AdapterKind, hookimpl

from .config import IA3Config
from .layer import IA3Layer

__all__ = ["IA3Config", "IA3Layer"]


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="ia3-linear", layer=IA3Layer, config=IA3Config, targets=(nn.Linear,),
                         description="(IA)^3 on nn.Linear: learned scales on its output (or, feedforward, input)"))
    register(AdapterKind(name="ia3-conv2d", layer=IA3Layer, config=IA3Config, targets=(nn.Conv2d,),
                         description="(IA)^3 on nn.Conv2d: learned scales on its output (or input) channels"))
