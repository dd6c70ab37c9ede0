"""The CLI's out-of-core fuse (`merge --into-base --stream`, `export --format merged --stream`) on the stream
group's synthetic checkpoint: a zoo whose base is that file (hard-linked), one LoRA (r=8, every layer), fused by
`adapterhub_lite.zoo.fuse.fuse_streamed` (what both commands call) in a fresh process; its peak RSS is measured
over the process's start, against the same bound as the plain fuse: 2 x the largest tensor + 300 MB."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adapterhub_lite_lora
from adapterhub_lite import (AdaptedModel, LoraConfig, ModelSpec, PluginManager, Registry, Zoo,
                             add_adapter_version, hookimpl, load_base)

MODEL, ADAPTER = "big-mlp", "big-mlp/lora"


class BigMLP(nn.Module):
    """Linear(4096 -> 8192) layers named as the stream group's checkpoint names its tensors."""

    def __init__(self, layers: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4096, 8192) for _ in range(layers))


class BenchModels:
    @hookimpl
    def register_models(self, register: Callable[[ModelSpec], None]) -> None:
        register(ModelSpec(name=MODEL, build=BigMLP, description="the stream group's synthetic checkpoint"))


def bench_registry() -> Registry:
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(BenchModels(), name="bench-models")
    pm.check()
    return Registry(pm)


def prepare_zoo(src: Path, root: Path, layers: int) -> None:
    """The base (the checkpoint itself, hard-linked) and a LoRA trained on nothing but with random factors."""
    from adapterhub_lite.zoo.streaming import file_fingerprint

    registry, zoo = bench_registry(), Zoo(root)
    base = zoo.add_version(MODEL, "base", lambda folder: os.link(src, folder / "model.safetensors"),
                           {"kind": "base", "config": {"layers": layers}, "fingerprint": file_fingerprint(src),
                            "task": None})
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    config = LoraConfig(targets=["layers.*"], rank=8, alpha=16)
    am.add_adapter("lora", config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in am.model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    add_adapter_version(registry, zoo, base, "lora", am, "lora", {"command": "bench"}, {})


def fuse_through_zoo(root: str, dst: str) -> dict[str, Any]:
    """Timed by the caller's child process: the streamed fuse of ADAPTER into its base, written to dst."""
    from adapterhub_lite.zoo.fuse import fuse_streamed

    started = time.perf_counter()
    info = fuse_streamed(bench_registry(), Zoo(root), [ADAPTER], Path(dst))
    return {"seconds": time.perf_counter() - started, "bytes": info["bytes"], "fused": info["modules"]}
