"""LoRA on transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc): a Linear whose weight is stored (in, out).

The factors are a Linear's (A: (r, in), B: (out, r)), as PEFT keeps them with
`fan_in_fan_out`; only the merged weight is transposed. The class is named,
not imported: this plugin does not depend on transformers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LoraConfig
from .linear import LoraLinear
from .lowrank import LoraFactors

CONV1D = "transformers.pytorch_utils.Conv1D"


def is_conv1d(module: object) -> bool:
    """Whether the module is transformers' Conv1D (or a subclass), without importing transformers."""
    return any(f"{c.__module__}.{c.__qualname__}" == CONV1D for c in type(module).__mro__)


class LoraTransposedLinear(LoraLinear):
    targets = (CONV1D,)
    weight_transposed = True

    def create(self, name: str, config: LoraConfig) -> LoraFactors:
        in_features, out_features = self.base.weight.shape
        return LoraFactors((config.rank, in_features), (out_features, config.rank), config, like=self.base.weight)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        flat = torch.addmm(self.base.bias, x.reshape(-1, x.shape[-1]), weights["weight"])  # Conv1D's own op
        return flat.view(*x.shape[:-1], flat.shape[-1])
