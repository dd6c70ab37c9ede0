"""First-party LoRA plugin: LoRA for nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding,
nn.MultiheadAttention and transformers' Conv1D, and the ways to combine LoRA adapters (cat, linear, svd, ties, dare, magnitude pruning).

Registered through the `adapterhub_lite` entry point, exactly as a
third-party package would be; imports only adapterhub_lite's public names.
This module is the light registration: it names the layer classes and merge
functions by reference, so listing plugins imports no torch; the classes
below (`__all__`) load on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from adapterhub_lite import AdapterKind, CombineMethod, hookimpl, lazy_exports

from .commands import extract_command
from .config import ATTENTION_PROJECTIONS, LoraConfig
from .methods import METHODS

if TYPE_CHECKING:
    from .attention import LoraMultiheadAttention
    from .conv import LoraConv, LoraConv1d, LoraConv2d
    from .embedding import LoraEmbedding
    from .extract import extract_lora
    from .linear import LoraLinear
    from .lowrank import LoraFactors, LowRankLayer
    from .transposed_linear import LoraTransposedLinear

__all__ = ["ATTENTION_PROJECTIONS", "LoraConfig", "LoraConv", "LoraConv1d", "LoraConv2d", "LoraEmbedding", "LoraFactors",
           "LoraLinear", "LoraMultiheadAttention", "LoraTransposedLinear", "LowRankLayer", "extract_lora"]

_LAZY = {"LoraMultiheadAttention": ".attention", "LoraConv": ".conv", "LoraConv1d": ".conv", "LoraConv2d": ".conv",
         "LoraEmbedding": ".embedding", "extract_lora": ".extract", "LoraLinear": ".linear",
         "LoraFactors": ".lowrank", "LowRankLayer": ".lowrank", "LoraTransposedLinear": ".transposed_linear"}


__getattr__ = lazy_exports(__name__, _LAZY)  # the layer classes, imported (with torch) on first use


def _kind(name: str, layer: str, target: str, description: str) -> AdapterKind:
    return AdapterKind(name=name, layer=f"{__name__}.{layer}", config=LoraConfig, targets=(target,),
                       description=description)


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(_kind("lora-linear", "linear:LoraLinear", "torch.nn.Linear", "LoRA on nn.Linear: W + (alpha/r) B A"))
    register(_kind("lora-conv2d", "conv:LoraConv2d", "torch.nn.Conv2d",
                   "LoRA on nn.Conv2d: kxk conv to r channels, then 1x1 conv (any stride, padding, dilation, groups)"))
    register(_kind("lora-conv1d", "conv:LoraConv1d", "torch.nn.Conv1d",
                   "LoRA on nn.Conv1d: size-k conv to r channels, then size-1 conv (any stride, padding, dilation, "
                   "groups)"))
    register(_kind("lora-embedding", "embedding:LoraEmbedding", "torch.nn.Embedding",
                   "LoRA on nn.Embedding: W + scale (B A)^T, A read by index (PEFT's layout)"))
    register(_kind("lora-transformers-conv1d", "transposed_linear:LoraTransposedLinear",
                   "transformers.pytorch_utils.Conv1D",
                   "LoRA on transformers' Conv1D (GPT-2): a Linear with its weight stored (in, out)"))
    register(_kind("lora-mha", "attention:LoraMultiheadAttention", "torch.nn.MultiheadAttention",
                   "LoRA on nn.MultiheadAttention q/k/v/out projections (cross-attention, batch_first both ways)"))


@hookimpl
def register_combine_methods(register: Callable[[CombineMethod], None]) -> None:
    for name, (description, options) in METHODS.items():
        register(CombineMethod(name=name, fn=f"{__name__}.merges:merge_{name.replace('-', '_')}", families=("lora",),
                             description=description, options=options))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(extract_command)
