"""First-party LoRA plugin: LoRA for nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding,
nn.MultiheadAttention and transformers' Conv1D, and the ways to combine LoRA adapters (cat, linear, svd, ties, dare, magnitude pruning).

Registered through the `adapterhub_lite` entry point, exactly as a
third-party package would be; imports only adapterhub_lite's public names.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from adapterhub_lite import AdapterKind, MergeMethod, hookimpl

from .attention import LoraMultiheadAttention
from .config import ATTENTION_PROJECTIONS, LoraConfig
from .conv import LoraConv, LoraConv1d, LoraConv2d
from .embedding import LoraEmbedding
from .extract import extract_command, extract_lora
from .linear import LoraLinear
from .lowrank import LoraFactors, LowRankLayer
from .merges import merge_methods
from .transposed_linear import LoraTransposedLinear

__all__ = ["ATTENTION_PROJECTIONS", "LoraConfig", "LoraConv", "LoraConv1d", "LoraConv2d", "LoraEmbedding", "LoraFactors",
           "LoraLinear", "LoraMultiheadAttention", "LoraTransposedLinear", "LowRankLayer", "extract_lora"]


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="lora-linear", layer=LoraLinear, config=LoraConfig,
                         description="LoRA on nn.Linear: W + (alpha/r) B A"))
    register(AdapterKind(name="lora-conv2d", layer=LoraConv2d, config=LoraConfig,
                         description="LoRA on nn.Conv2d: kxk conv to r channels, then 1x1 conv (any stride, "
                                     "padding, dilation, groups)"))
    register(AdapterKind(name="lora-conv1d", layer=LoraConv1d, config=LoraConfig,
                         description="LoRA on nn.Conv1d: size-k conv to r channels, then size-1 conv (any stride, "
                                     "padding, dilation, groups)"))
    register(AdapterKind(name="lora-embedding", layer=LoraEmbedding, config=LoraConfig,
                         description="LoRA on nn.Embedding: W + scale (B A)^T, A read by index (PEFT's layout)"))
    register(AdapterKind(name="lora-transformers-conv1d", layer=LoraTransposedLinear, config=LoraConfig,
                         description="LoRA on transformers' Conv1D (GPT-2): a Linear with its weight stored (in, out)"))
    register(AdapterKind(name="lora-mha", layer=LoraMultiheadAttention, config=LoraConfig,
                         description="LoRA on nn.MultiheadAttention q/k/v/out projections (cross-attention, "
                                     "batch_first both ways)"))


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    for method in merge_methods():
        register(method)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(extract_command)
