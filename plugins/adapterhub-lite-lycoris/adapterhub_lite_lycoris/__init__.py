"""LyCORIS adapter families for adapterhub_lite: LoHa and LoKr on nn.Linear and nn.Conv2d.

Registered through the `adapterhub_lite` entry point, exactly as a third-party package would be; imports only
adapterhub_lite's public names. Their deltas are additive, so they stack, weigh and merge bit-exactly like
LoRA; they are not low-rank, so LoRA's merge methods (cat, svd, ...) refuse them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from adapterhub_lite import AdapterKind, hookimpl, lazy_exports

from .config import LohaConfig, LokrConfig, factorization

if TYPE_CHECKING:
    from .loha import LohaLayer
    from .lokr import LokrLayer

__all__ = ["LohaConfig", "LohaLayer", "LokrConfig", "LokrLayer", "factorization"]
__getattr__ = lazy_exports(__name__, {"LohaLayer": ".loha", "LokrLayer": ".lokr"})  # torch on first use
LOHA, LOKR = f"{__name__}.loha:LohaLayer", f"{__name__}.lokr:LokrLayer"


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="loha-linear", layer=LOHA, config=LohaConfig, targets=("torch.nn.Linear",),
                         description="LoHa on nn.Linear: (w1a w1b) * (w2a w2b) * alpha/r"))
    register(AdapterKind(name="loha-conv2d", layer=LOHA, config=LohaConfig, targets=("torch.nn.Conv2d",),
                         description="LoHa on nn.Conv2d (kernel flattened, any stride, padding, groups)"))
    register(AdapterKind(name="lokr-linear", layer=LOKR, config=LokrConfig, targets=("torch.nn.Linear",),
                         description="LoKr on nn.Linear: kron(w1, w2) * alpha/r"))
    register(AdapterKind(name="lokr-conv2d", layer=LOKR, config=LokrConfig, targets=("torch.nn.Conv2d",),
                         description="LoKr on nn.Conv2d (w2 holds the kernel)"))
