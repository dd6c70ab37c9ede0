"""Per-sample routing: every sample of one batch runs its own adapter, in one forward."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet, assert_matches_reference, randomize_adapters, reference_model
from torch import nn

from adapterhub_lite import AdaptedModel, AdapterStateError, LoraConfig
from adapterhub_lite.forward import Routed

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
ROUTE = ["a", None, "b", "c", "a", "b"]


def adapted(registry, batch_first: bool = True) -> AdaptedModel:
    torch.manual_seed(0)
    am = AdaptedModel(TinyNet(batch_first=batch_first).eval(), registry=registry)
    am.add_adapter("a", LoraConfig(targets=["conv", "depthwise", "fc*", "attn"], rank=2, alpha=4))
    am.add_adapter("b", LoraConfig(targets=["conv", "fc1", "attn"], rank=3, rslora=True,
                                   attention_projections="q,out"))
    am.add_adapter("c", LoraConfig(targets=["fc2"], rank=1))  # on one layer only
    randomize_adapters(am.model)
    am.set_weight("b", -0.7)
    return am


def one_by_one(am: AdaptedModel, route) -> torch.Tensor:
    outs = []
    for i, name in enumerate(route):
        am.set_active([name] if name else [], [am.layers()["conv"].weight(name)] if name in ("a", "b") else None)
        if name == "b":
            am.set_weight("b", -0.7)
        outs.append(am(X[i:i + 1]))
    return torch.cat(outs)


@pytest.fixture(params=[(0, 1.0), (1 << 22, 1.0), (1 << 22, 8.0)],
                ids=["low-rank-route", "small-layers-default-budget", "merged-weights-route"])
def fold_limit(request):
    """The low-rank route; small layers with the default cache budget (one merged copy: routing stays
    low-rank); and a budget that holds a copy per routed adapter (each sample group on merged weights)."""
    from adapterhub_lite import LayerPolicy

    limit, budget = request.param
    return LayerPolicy(fold_limit=limit, cache_budget=budget)


def reference_per_sample(am: AdaptedModel, route) -> torch.Tensor:
    """Each sample through the float64 reference model of its own adapter alone (tests/conftest.py)."""
    outs = []
    weights = {"a": 1.0, "b": -0.7, "c": 1.0}
    for i, name in enumerate(route):
        am.set_active([name] if name else [], [weights[name]] if name else None)
        outs.append(reference_model(am)(X[i:i + 1].double()))
    return torch.cat(outs)


@pytest.mark.parametrize("batch_first", [True, False])
def test_routed_batch_equals_each_sample_alone(registry, batch_first, fold_limit) -> None:
    am = adapted(registry, batch_first)
    am.policy = fold_limit
    with torch.no_grad():
        with am.routing(ROUTE):
            routed = am(X)
        want = one_by_one(am, ROUTE)
        reference = reference_per_sample(am, ROUTE)
    torch.testing.assert_close(routed, want, rtol=1e-5, atol=1e-5)
    assert_matches_reference(routed, reference)
    with torch.no_grad(), am.routing([None] * 6):
        am.set_active([])
        assert torch.equal(am(X), am.model(X))  # nobody routed: the bare base


def test_routing_with_dropout_in_training_mode(registry) -> None:
    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Linear(8, 4)), registry=registry)
    am.add_adapter("a", LoraConfig(targets=["0"], rank=2, dropout=0.5))
    am.add_adapter("b", LoraConfig(targets=["0"], rank=2))
    randomize_adapters(am.model)
    x = torch.randn(4, 8)
    am.model.train()
    with am.routing(["b", "b", None, "b"]):  # a is never routed: its dropout never runs
        out = am(x)
    am.model.eval()
    am.set_active(["b"])
    torch.testing.assert_close(out[[0, 1, 3]], am(x)[[0, 1, 3]])


def test_an_exception_mid_forward_leaves_no_route_behind(registry) -> None:
    am = adapted(registry)
    with torch.no_grad():
        am.set_active(["a"])
        before = am(X)
        with pytest.raises(AdapterStateError, match="names an adapter for 5 samples, but this batch has 6"):
            with am.routing(ROUTE[:5]):
                am(X)
        assert not any(isinstance(layer.strategy, Routed) for layer in am.layers().values())
        assert torch.equal(am(X), before)  # later plain forwards are exactly as before

        class Boom(RuntimeError):
            pass

        def explode(module, inputs, output):
            raise Boom

        handle = am.model.fc1.register_forward_hook(explode)
        with pytest.raises(Boom), am.routing(ROUTE):
            am(X)
        handle.remove()
        assert not any(isinstance(layer.strategy, Routed) for layer in am.layers().values())
        assert torch.equal(am(X), before)


def test_routing_refuses_unknown_merged_and_nested(registry) -> None:
    am = adapted(registry)
    with pytest.raises(KeyError, match="unknown adapter 'z'"):
        with am.routing(["a", "z"]):
            pass
    with am.routing(["a"] * 6):
        with pytest.raises(AdapterStateError, match="do not nest"):
            with am.routing(["b"] * 6):
                pass
    am.set_active(["a"])
    am.fold()
    with pytest.raises(AdapterStateError, match="folded into every sample"):
        with am.routing(["a"] * 6):
            pass


EVEN_ROUTE = ["a3", None, "a0", "a5", "a3", "a1", None, "a2", "a4", "a0"]  # groups of 1-2: batched GEMMs
BALANCED_ROUTE = ["a2", "a0", "a1", "a5", "a3", "a4"] * 2  # every group of one size: the sorted rows are the layout
SKEWED_ROUTE = ["a0", "a1", "a0", None, "a0", "a2", "a0", "a3", "a0", "a4", "a0", "a5"] + ["a0"] * 6  # 12, 1s


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "transformers-conv1d"])
@pytest.mark.parametrize("route", [EVEN_ROUTE, BALANCED_ROUTE, SKEWED_ROUTE], ids=["even", "balanced", "skewed"])
def test_grouped_routing_runs_each_sample_at_its_own_rank_and_matches_one_by_one(registry, monkeypatch,
                                                                                  conv1d, route) -> None:
    """Issue 33, item 1: on Linear-like layers the routed low-rank path groups samples by adapter, every
    sample at its own adapter's rank, whatever the number of adapters in the batch: groups of about equal size
    through two batched GEMMs (bmm over a groups x widest layout), uneven ones through two grouped GEMMs
    (torch's grouped_mm); sequences of tokens, bare samples, different ranks and weights all match each
    sample run with its adapter alone, to 1e-5 in float32."""
    import torch.nn.functional as F

    from adapterhub_lite import LayerPolicy

    if conv1d:
        from transformers.pytorch_utils import Conv1D

        def layer(i: int, o: int) -> nn.Module:
            return Conv1D(o, i)
    else:
        layer = nn.Linear
    torch.manual_seed(0)
    model = nn.Sequential(layer(12, 16), nn.GELU(), layer(16, 5)).eval()
    am = AdaptedModel(model, registry=registry, policy=LayerPolicy(fold_limit=0))  # the low-rank path
    names = [f"a{i}" for i in range(6)]
    for i, name in enumerate(names):
        am.add_adapter(name, LoraConfig(targets=["0", "2"], rank=1 + i, alpha=2.0 + i), activate=False)
    randomize_adapters(am.model)
    weights = {name: 0.5 + 0.25 * i for i, name in enumerate(names)}
    x = torch.randn(len(route), 7, 12, generator=torch.Generator().manual_seed(9))
    calls = {"grouped_mm": 0, "bmm": 0}
    for owner, name in ((F, "grouped_mm"), (torch, "bmm")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, _name=name, **k: calls.__setitem__(
            _name, calls[_name] + 1) or _real(*a, **k))
    with torch.no_grad():
        am.set_active(names, [weights[n] for n in names])
        with am.routing(route):
            routed = am(x)
        path = "grouped_mm" if route is SKEWED_ROUTE else "bmm"
        assert calls == {"grouped_mm": 0, "bmm": 0, path: 4}  # two products on each of the two layers
        alone = []
        for i, name in enumerate(route):
            am.set_active([name] if name else [], [weights[name]] if name else None)
            alone.append(am(x[i:i + 1]))
    want = torch.cat(alone)
    torch.testing.assert_close(routed, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with torch.no_grad():  # the grouped factors are kept between calls: an in-place change must reach them
        am.set_active(names, [weights[n] for n in names])
        with am.routing(route):
            am(x)
        am.layers()["0"].adapters[route[0]].lora_B.mul_(-2.0)
        with am.routing(route):
            changed = am(x)
        am.set_active([route[0]], [weights[route[0]]])
        torch.testing.assert_close(changed[:1], am(x[:1]), rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_a_new_mix_every_call_gathers_from_the_pool_and_stays_exact(registry) -> None:
    """Issue 33: a server's batches name a different set of adapters each call. Every layer keeps a pool with a
    slot per routed adapter and gathers a batch's by index; after in-place changes, deletions and new adapters
    every call still matches each sample run with its adapter alone, and a deleted adapter's slot is reused."""
    import random

    from adapterhub_lite import LayerPolicy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5)).eval()
    am = AdaptedModel(model, registry=registry, policy=LayerPolicy(fold_limit=0))  # the low-rank path
    names = [f"a{i}" for i in range(12)]
    for i, name in enumerate(names):
        am.add_adapter(name, LoraConfig(targets=["0", "2"], rank=1 + i % 4, alpha=2.0), activate=False)
    randomize_adapters(am.model)
    draws = random.Random(3)
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(9))

    def check(pool: list[str]) -> None:
        route = [draws.choice(pool) for _ in range(len(x))]
        with torch.no_grad():
            with am.routing(route):
                routed = am(x)
            for i, name in enumerate(route):
                am.set_active([name])
                torch.testing.assert_close(routed[i:i + 1], am(x[i:i + 1]), rtol=1e-5, atol=1e-6)

    for _ in range(6):
        check(draws.sample(names, 4))
    layer = am.layers()["0"].layer_of("a0")
    capacity = layer._pool.a.shape[0]
    with torch.no_grad():
        am.layers()["0"].adapters["a5"].lora_A.mul_(-3.0)
    check(["a5", "a6"])
    am.delete_adapter("a7")
    am.add_adapter("late", LoraConfig(targets=["0", "2"], rank=4, alpha=2.0), activate=False)
    randomize_adapters(am.model, seed=5)
    check(["late", "a1", "a2"])
    check(names[:7] + ["late"] + names[8:])
    import gc

    gc.collect()
    assert len(layer._pool.slots) == 12 and layer._pool.a.shape[0] == capacity  # a7's slot freed, no growth
