"""First-party LoRA plugin: LoRA for nn.Linear, nn.Conv2d and nn.MultiheadAttention, and the
ways to combine LoRA adapters (cat, linear, svd, ties, dare, magnitude pruning).

Registered through the `adapterhub_lite` entry point, exactly as a
third-party package would be; imports only adapterhub_lite's public names.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from adapterhub_lite import AdapterKind, MergeMethod, hookimpl

from .attention import LoraMultiheadAttention
from .config import ATTENTION_PROJECTIONS, LoraConfig
from .conv2d import LoraConv2d
from .extract import extract_command, extract_lora
from .linear import LoraLinear
from .lowrank import LoraFactors, LowRankLayer
from .merges import merge_methods

__all__ = ["ATTENTION_PROJECTIONS", "LoraConfig", "LoraConv2d", "LoraFactors", "LoraLinear", "LoraMultiheadAttention", "LowRankLayer", "extract_lora"]


@hookimpl
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    register(AdapterKind(name="lora-linear", layer=LoraLinear, config=LoraConfig,
                         description="LoRA on nn.Linear: W + (alpha/r) B A"))
    register(AdapterKind(name="lora-conv2d", layer=LoraConv2d, config=LoraConfig,
                         description="LoRA on nn.Conv2d: kxk conv to r channels, then 1x1 conv (any stride, "
                                     "padding, dilation, groups)"))
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
