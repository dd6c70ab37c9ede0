"""Training through merged weights: a small layer may run one op on W + sum(w * delta), built inside
autograd, instead of the base op plus the adapter ops. The gradients are the same; no rank-sized activations
are kept for backward, which is what makes convolution adapters cheap to train (kinds opt in with
`train_on_merged_weights`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .layer import AdapterLayer


def trains_on_merged_weights(layer: AdapterLayer, live: list[tuple[str, float]]) -> bool:
    """While autograd records, on a layer of a kind that opts in and within `inference_merge_limit`; not with
    a live dropout (each adapter must drop its own input)."""
    if not (layer.train_on_merged_weights and torch.is_grad_enabled()):
        return False
    if layer.base_numel > layer.inference_merge_limit:
        return False
    return not (layer.training and any(isinstance(m, nn.Dropout) and m.p > 0
                                       for n, _ in live for m in layer.adapters[n].modules()))
