"""DoRA (weight-decomposed low-rank adaptation) for adapterhub_lite, on nn.Linear and nn.Conv2d.

W' = m * (W + s B A) / ||W + s B A||, the norm per output channel (PEFT's and the paper's). A LoRA pair (the
LoRA plugin's `LoraFactors`) and a magnitude vector m, which starts at ||W|| so the adapter starts as a
no-op. Registered through the `adapterhub_lite` entry point like any third-party package; imports only the
public names of adapterhub_lite and of the LoRA plugin it builds on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from adapterhub_lite import AdapterKind, hookimpl, lazy_exports
from adapterhub_lite_lora import LoraConfig

if TYPE_CHECKING:
    from .layer import DoraConv2d, DoraLinear

__all__ = ["DoraConfig", "DoraConv2d", "DoraLinear"]
__getattr__ = lazy_exports(__name__, {"DoraConv2d": ".layer", "DoraLinear": ".layer"})  # torch on first use


@dataclass(frozen=True)
class DoraConfig(LoraConfig):
    """LoRA's fields (rank, alpha, rslora, dropout, init); the magnitude needs none."""

    family: ClassVar[str] = "dora"


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="dora-linear", layer=f"{__name__}.layer:DoraLinear", config=DoraConfig,
                         targets=("torch.nn.Linear",),
                         description="DoRA on nn.Linear: m * (W + s B A) / ||W + s B A|| per output row"))
    register(AdapterKind(name="dora-conv2d", layer=f"{__name__}.layer:DoraConv2d", config=DoraConfig,
                         targets=("torch.nn.Conv2d",),
                         description="DoRA on nn.Conv2d: the norm per output channel over in x kh x kw"))
