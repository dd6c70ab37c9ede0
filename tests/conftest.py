"""Shared fixtures: a fresh registry per test with explicit plugin registrations, tiny models."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import adapterhub_lite_lora
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig, ModelSpec, PluginManager, Registry, hookimpl, state_fingerprint
from adapterhub_lite.zoo.loading import load_base
from adapterhub_lite.zoo import Zoo, ZooEntry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if "ADAPTERS_DATA" not in os.environ and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["ADAPTERS_DATA"] = str(SHARED_DATA)  # tests never download


def pytest_configure(config: pytest.Config) -> None:
    from capabilities import required

    required()  # a misspelt ADAPTERS_REQUIRE is a usage error before anything runs


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


# --- an independent reference: plain torch ops in float64, from the factors ----------------------------------------
def _low_rank(factors: nn.Module, config: LoraConfig, groups: int = 1) -> torch.Tensor:
    """scale * B @ A in float64, per group, shaped like the base weight (B: (out, r, ...), A: (g*r, in/g, ...))."""
    scale = config.alpha / (math.sqrt(config.rank) if config.rslora else config.rank)
    a, b = factors.lora_A.detach().double(), factors.lora_B.detach().double()
    out, rank = b.shape[0], b.shape[1]
    per_group = b.reshape(groups, out // groups, rank) @ a.reshape(groups, rank, -1)  # (g, out/g, in/g * k...)
    return per_group.reshape(out, *a.shape[1:]) * scale


def _d(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().double()


def _dora_terms(layer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """W and s B A of a DoRA adapter's layer, in float64, shaped like the base weight."""
    groups = getattr(layer.base, "groups", 1)
    return _d(layer.base_state()["weight"]), _low_rank(layer.adapters[name], layer.configs[name], groups)


def _tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """A Tucker kernel (out, in, kh, kw): at each kernel position, wa^T core[:, :, k, l] wb (wa (r, out),
    wb (r, in)), LyCORIS's definition written as matrix products."""
    per_position = _d(wa).T @ _d(core).permute(2, 3, 0, 1) @ _d(wb)  # (kh, kw, out, in)
    return per_position.permute(2, 3, 0, 1).contiguous()


def _family_delta(layer: Any, name: str) -> dict[str, torch.Tensor] | None:
    """Families other than LoRA, each from its published definition."""
    base, f, config = layer.base, layer.adapters[name], layer.configs[name]
    shape = getattr(base, "weight", torch.empty(0)).shape
    if config.family == "dora":  # m * (W + s B A) / ||W + s B A|| - W, the norm per output channel
        weight, low = _dora_terms(layer, name)  # a channel where W + s B A is zero has no direction: W' = 0 there
        directed = weight + low
        norm = directed.flatten(1).norm(dim=1)
        ratio = torch.where(norm > 0, _d(f.lora_magnitude) / norm, 0.0)
        return {"weight": ratio.view(-1, *(1,) * (weight.dim() - 1)) * directed - weight}
    if config.family == "loha" and hasattr(f, "hada_t1"):  # each product a Tucker kernel
        product = _tucker(f.hada_t1, f.hada_w1_a, f.hada_w1_b) * _tucker(f.hada_t2, f.hada_w2_a, f.hada_w2_b)
        return {"weight": product * config.alpha / config.rank}
    if config.family == "loha":  # (w1a w1b) * (w2a w2b) * alpha / r
        product = (_d(f.hada_w1_a) @ _d(f.hada_w1_b)) * (_d(f.hada_w2_a) @ _d(f.hada_w2_b))
        return {"weight": (product * config.alpha / config.rank).reshape(shape)}
    if config.family == "lokr":  # kron(w1, w2) * alpha / r
        w1 = _d(f.lokr_w1) if hasattr(f, "lokr_w1") else _d(f.lokr_w1_a) @ _d(f.lokr_w1_b)
        if hasattr(f, "lokr_t2"):
            w2 = _tucker(f.lokr_t2, f.lokr_w2_a, f.lokr_w2_b)
        else:
            w2 = _d(f.lokr_w2) if hasattr(f, "lokr_w2") else _d(f.lokr_w2_a) @ _d(f.lokr_w2_b)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return {"weight": (torch.kron(w1, w2) * config.alpha / config.rank).reshape(shape)}
    return None


def dora_cancellation(layer: Any, names: list[str]) -> float:
    """How nearly the named DoRA adapters cancel a channel of the base weight: max over channels of
    (||W|| + ||s B A||) / ||W + s B A|| (1 for other families). DoRA's direction (W + s B A) / ||W + s B A|| is
    undefined where a channel's W + s B A vanishes, and its rounding error grows with this ratio near there, in
    PEFT's layers as in ours (ours takes only an exactly zero channel as zero): no dtype meets a fixed tolerance
    on such a draw."""
    worst = 1.0
    for name in names:
        if layer.configs[name].family != "dora":
            continue
        weight, low = (t.flatten(1) for t in _dora_terms(layer, name))
        ratio = (weight.norm(dim=1) + low.norm(dim=1)) / (weight + low).norm(dim=1)
        worst = max(worst, ratio.max().item())
    return worst


def reference_delta(layer: Any, name: str) -> dict[str, torch.Tensor]:
    """The adapter's change to each base parameter, in float64, written here from each family's definition
    and the adapter's own factors: independent of the plugin's merge, cache and forward code."""
    base, factors, config = layer.base, layer.adapters[name], layer.configs[name]
    other = _family_delta(layer, name)
    if other is not None:
        return other
    if config.family == "ia3":  # its change alone, at weight 1 (reference_module multiplies several)
        one = reference_module(layer, [(name, 1.0)])
        return {path: p.detach() - _d(layer.base_state()[path]) for path, p in one.named_parameters()
                if path in layer.base_state()}
    if config.family != "lora":
        raise AssertionError(f"no reference for the {config.family!r} family: add one to tests/conftest.py")
    if isinstance(base, (nn.Conv1d, nn.Conv2d)):
        return {"weight": _low_rank(factors, config, base.groups)}
    if isinstance(base, nn.Linear):
        return {"weight": _low_rank(factors, config)}
    if isinstance(base, nn.Embedding) or type(base).__name__ == "Conv1D":  # tables and GPT-2's Conv1D: (in, out)
        return {"weight": _low_rank(factors, config).T}
    if isinstance(base, nn.MultiheadAttention):
        out = {}
        if "out" in factors:
            out["out_proj.weight"] = _low_rank(factors["out"], config)
        qkv = {s: _low_rank(factors[s], config) for s in "qkv" if s in factors}
        if base._qkv_same_embed_dim and qkv:
            zero = torch.zeros(base.embed_dim, base.embed_dim, dtype=torch.float64)
            out["in_proj_weight"] = torch.cat([qkv.get(s, zero) for s in "qkv"])
        elif qkv:
            out.update({f"{s}_proj_weight": d for s, d in qkv.items()})
        return out
    raise AssertionError(f"no reference for {type(base).__name__} layers: add one to tests/conftest.py")


def reference_module(layer: Any, weighted: list[tuple[str, float]]) -> nn.Module:
    """A float64 copy of the layer's plain base module with the adapters folded in by each family's definition:
    W + sum(w * delta) for additive families; for (IA)^3, scales that multiply (1 + w (l - 1) each) on the
    output rows (and bias) or the input columns."""
    module = copy.deepcopy(layer.base).double()
    with torch.no_grad():
        for path, tensor in layer.base_state().items():  # the unmerged originals, even while merged
            module.get_parameter(path).data = tensor.detach().double().clone()
        for name, weight in weighted:
            if layer.configs[name].family == "ia3":
                continue
            for path, delta in reference_delta(layer, name).items():
                param = module.get_parameter(path)
                param.data = param.data + weight * delta
        for name, weight in weighted:
            if layer.configs[name].family != "ia3":
                continue
            scale = 1 + weight * (_d(layer.adapters[name].ia3_l) - 1)
            w = module.weight.data
            if layer.configs[name].feedforward:  # columns: input features (a grouped conv: its group's inputs)
                groups = getattr(module, "groups", 1)
                per_group = scale.view(groups, 1, -1, *(1,) * (w.dim() - 2))
                module.weight.data = (w.view(groups, -1, *w.shape[1:]) * per_group).view(w.shape)
            else:  # rows: output features, and the bias with them
                module.weight.data = w * scale.view(-1, *(1,) * (w.dim() - 1))
                if module.bias is not None:
                    module.bias.data = module.bias.data * scale
    return module.requires_grad_(False)


def reference_model(am: AdaptedModel) -> nn.Module:
    """The plain model in float64 with the active adapters (at their weights) folded in by `reference_module`."""
    active = am.active
    plain = copy.deepcopy(am.model)
    for path, layer in am.layers().items():
        module = reference_module(layer, [(n, w) for n, w in active.items() if n in layer.adapters and w != 0.0])
        parent, _, child = path.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, child, module)
    return plain.double().eval()


def as_double(value: Any) -> Any:
    """Floating tensors to float64 (masks and indices stay as they are)."""
    return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def assert_matches_reference(out: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> None:
    """A float32 output against the float64 reference: float32 rounding, relative to the output's size."""
    torch.testing.assert_close(out.double(), reference, rtol=rtol, atol=rtol * 0.1 * (reference.abs().max().item() + 1))


def entries_for_kind(kind: Any, table: dict[Any, Any]) -> list[Any]:
    """The values of `table` (keyed by module class or qualified class name) whose module the kind wraps.

    Matched through `kind.wraps`, so a kind that names its targets by string ("torch.nn.Linear") finds the
    same examples as one that names the class."""
    import importlib

    found = []
    for key, value in table.items():
        if isinstance(key, str):
            module_name, _, attr = key.rpartition(".")
            key = getattr(importlib.import_module(module_name), attr)
        if any(kind.wraps(cls) for cls in key.__mro__):
            found.append(value)
    return found
