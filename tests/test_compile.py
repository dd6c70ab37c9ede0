"""Compiled hot-swap (AdaptedModel.compile): swapping adapters and weights changes tensors, never the graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from adapterhub_lite import (AdaptedModel, AdapterStateError, LayerPolicy, LoraConfig,
                             UnsupportedModuleError, get_registry)
from adapterhub_lite.forward import Compiled


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(12, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids).permute(0, 2, 1).reshape(-1, 8, 4, 4)
        return self.fc(torch.relu(self.conv(h)).flatten(1))


IDS = torch.randint(0, 12, (3, 16), generator=torch.Generator().manual_seed(1))


def _eight_adapters() -> AdaptedModel:
    am = AdaptedModel(Net().eval(), registry=get_registry())
    gen = torch.Generator().manual_seed(2)
    for i in range(8):  # ranks 1..8
        am.add_adapter(f"a{i}", LoraConfig(targets=["emb", "conv", "fc"], rank=i + 1, alpha=3.0), activate=False)
        am.load_adapter_state(f"a{i}", {k: torch.randn(v.shape, generator=gen) * 0.3
                                        for k, v in am.adapter_state(f"a{i}").items()})
    return am


def _eager(am: AdaptedModel, ids: torch.Tensor) -> torch.Tensor:
    """The ordinary forward of the same model state, for comparison (the static path switched off and back)."""
    static = {layer: layer.strategy for layer in am.layers().values() if isinstance(layer.strategy, Compiled)}
    for layer, compiled in static.items():
        layer.strategy = compiled.inner
    try:
        return am(ids)
    finally:
        for layer, compiled in static.items():
            layer.strategy = compiled


@pytest.mark.parametrize("path", ["merged-weight", "low-rank"])
@pytest.mark.parametrize("backend", ["counter", "aot_eager"])
def test_twenty_swaps_among_eight_adapters_never_recompile(backend, path) -> None:
    """Small layers serve from one merged-weight buffer, big ones from zero-padded factor buffers: both paths."""
    am = _eight_adapters()
    if path == "low-rank":
        am.policy = LayerPolicy(fold_limit=0)
    counter = CompileCounter()
    run = am.compile(max_rank=8 + 7, backend=counter if backend == "counter" else backend)
    buffers = {name for layer in am.layers().values() for kind in layer.kinds for name in kind._buffers}
    assert buffers == ({"static_A", "static_B"} if path == "low-rank" else {"static_W"})
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for call in range(20):
            if call % 2 == 0:  # new adapters every other call (one or two, ranks 1-8), new weights every call
                picks = torch.randperm(8, generator=gen)[: 1 + call % 4 // 2].tolist()
            weights = (torch.rand(len(picks), generator=gen) * 2 - 0.5).tolist()
            am.set_active([f"a{i}" for i in picks], weights)
            torch.testing.assert_close(run(IDS), _eager(am, IDS), rtol=1e-5, atol=1e-5)
        am.set_active([])  # nothing live: the base itself
        torch.testing.assert_close(run(IDS), am.model(IDS), rtol=1e-6, atol=1e-6)
        am.set_active(["a7"])
        am.fold()  # merged adapters leave the buffers; the base weights carry them
        torch.testing.assert_close(run(IDS), _eager(am, IDS), rtol=1e-5, atol=1e-5)
    if backend == "counter":
        assert counter.frame_count == 1


def test_the_ordinary_forward_compiled_recompiles_as_adapters_swap() -> None:
    """Why compile() exists: torch.compile of the ordinary forward guards on which adapters are live and at which
    weights, so the same swaps make new graphs (docs/index.md quotes this count)."""
    am = _eight_adapters()
    counter = CompileCounter()
    compiled = torch.compile(am.model, backend=counter)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for call in range(20):
            if call % 2 == 0:
                picks = torch.randperm(8, generator=gen)[: 1 + call % 4 // 2].tolist()
            am.set_active([f"a{i}" for i in picks], (torch.rand(len(picks), generator=gen) * 2 - 0.5).tolist())
            compiled(IDS)
    print(f"ordinary forward under torch.compile: {counter.frame_count} graphs over 20 swaps")
    assert counter.frame_count > 1


def test_a_live_set_over_the_declared_rank_is_refused_and_release_restores_the_ordinary_path() -> None:
    am = _eight_adapters()
    run = am.compile(max_rank=8, backend=CompileCounter())
    am.set_active(["a6", "a1"])  # ranks 7 + 2
    with pytest.raises(AdapterStateError, match="total rank 9 on a layer compiled for at most 8"):
        run(IDS)
    with pytest.raises(AdapterStateError, match="release_compiled"), am.routing(["a1", None, "a2"]):
        pass
    am.release_compiled()
    assert not any(isinstance(layer.strategy, Compiled) or any(k._buffers for k in layer.kinds)
               for layer in am.layers().values())
    with am.routing(["a1", None, "a2"]), torch.no_grad():
        am(IDS)  # the ordinary forward again


def test_layers_without_a_fixed_shape_path_are_refused_by_name() -> None:
    mha = AdaptedModel(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2)), registry=get_registry())
    mha.add_adapter("x", LoraConfig(targets=["0", "1"]))
    with pytest.raises(UnsupportedModuleError, match="LoraMultiheadAttention is not a plain low-rank sum"):
        mha.compile(max_rank=8)
    assert not any(isinstance(layer.strategy, Compiled) for layer in mha.layers().values())  # nothing half-prepared
    dora = AdaptedModel(nn.Sequential(nn.Linear(4, 4)), registry=get_registry())
    dora.add_adapter("d", get_registry().config_class("dora")(targets=["0"]))
    with pytest.raises(UnsupportedModuleError, match="DoraLinear"):
        dora.compile(max_rank=8)
