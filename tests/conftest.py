"""Shared fixtures: a fresh registry per test with explicit plugin registrations, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import adapterhub_lite_lora
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig, ModelSpec, PluginManager, Registry, hookimpl, state_fingerprint
from adapterhub_lite.workflow import load_base
from adapterhub_lite.zoo import Zoo, ZooEntry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if "ADAPTERS_DATA" not in os.environ and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["ADAPTERS_DATA"] = str(SHARED_DATA)  # tests never download


@pytest.fixture
def registry() -> Registry:
    """A registry holding only the first-party LoRA plugin, registered explicitly."""
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.check()
    return Registry(pm)


class TinyNet(nn.Module):
    """Every module type the LoRA plugin wraps, in a few hundred parameters."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        tokens = h.flatten(2).transpose(1, 2)  # (N, L, C)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        a, _ = self.attn(tokens, tokens, tokens)
        pooled = a.mean(1 if self.batch_first else 0)
        return self.fc2(torch.relu(self.fc1(pooled)))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def randomize_adapters(module: nn.Module, seed: int = 0) -> None:
    """B starts at zero (a no-op); give every factor random values so tests see the adapter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


# --- a zoo without training: random bases and random adapters, for merge/format tests -----------------------
class TinyModels:
    """A model plugin registering TinyNet, as a third-party package would."""

    @staticmethod
    @hookimpl
    def register_models(register) -> None:
        register(ModelSpec(name="tiny", build=TinyNet, description="every module type LoRA wraps"))


@pytest.fixture
def tiny_registry() -> Registry:
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(TinyModels(), name="tiny-models")
    pm.check()
    return Registry(pm)


def seed_base(registry: Registry, zoo: Zoo, model: str, seed: int = 0, name: str = "base") -> ZooEntry:
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in registry.create_model(model).state_dict().items()}
    fingerprint = state_fingerprint(state)
    return zoo.add_version(model, name, lambda folder: save_file(state, str(folder / "model.safetensors")),
                           {"kind": "base", "config": {}, "fingerprint": fingerprint, "task": None})


def seed_adapter(registry: Registry, zoo: Zoo, base: ZooEntry, name: str, config: LoraConfig,
                 seed: int = 0) -> ZooEntry:
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    am.add_adapter(name, config)
    randomize_adapters(am.model, seed)
    card = {"kind": "adapter", "family": "lora", "config": config.to_dict(), "modules": am.adapters[name].modules,
            "base": {"ref": base.ref, "version": base.version, "fingerprint": base.card["fingerprint"]},
            "parents": [base.ref], "parameters": am.parameter_counts()["adapters"][name]}
    return zoo.add_version(base.model, name, lambda folder: am.save_adapter(name, folder / "adapter.safetensors"), card)
