"""Paging: a model holds adapters only while batches name them, loaded from the zoo and evicted least recently used
within a byte budget; every routed output is the one of the same adapter held for good."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import seed_adapter, seed_base

from adapterhub_lite import (AdaptedModel, AdapterPager, AdapterStateError, ConfigError, IncompatibleAdapterError,
                             LoraConfig, NameRuleError, RefError, UnknownNameError, Zoo, load_base, zoo_adapters)
from adapterhub_lite.paging import ROUTED_COPIES
from adapterhub_lite.zoo.compositions import compose

NAMES = [f"p{i}" for i in range(10)]
X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))


@pytest.fixture
def paged_zoo(tmp_path, tiny_registry):
    """A zoo with a tiny base, ten adapters on it (every kind the tiny net has: convs, attention, linears; two
    configs) and an adapter of another base under the same model."""
    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(tiny_registry, zoo, "tiny")
    for i, name in enumerate(NAMES):
        config = (LoraConfig(targets=["conv", "depthwise", "fc*", "attn"], rank=2, alpha=4) if i % 2 else
                  LoraConfig(targets=["conv", "fc1", "attn"], rank=3, rslora=True, attention_projections="q,out"))
        seed_adapter(tiny_registry, zoo, base, name, config, seed=i + 1)
    other = seed_base(tiny_registry, zoo, "tiny", seed=5, name="other-base")
    seed_adapter(tiny_registry, zoo, other, "elsewhere", LoraConfig(targets=["fc1"], rank=2), seed=9)
    return zoo, base


def fresh(registry, base) -> AdaptedModel:
    return AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)


def one_bytes(registry, zoo, base) -> int:
    am = fresh(registry, base)
    am.load_adapter(zoo.resolve(f"tiny/{NAMES[1]}").weights, name="probe")
    return am.adapter_bytes("probe")


def zoo_state(zoo: Zoo) -> dict[str, bytes]:
    return {str(p.relative_to(zoo.root)): p.read_bytes() for p in sorted(zoo.root.rglob("*")) if p.is_file()}


def test_paged_routing_matches_each_adapter_held_for_good(paged_zoo, tiny_registry):
    zoo, base = paged_zoo
    resident = fresh(tiny_registry, base)
    for name in NAMES:
        resident.load_adapter(zoo.resolve(f"tiny/{name}").weights, name=name)
    am = fresh(tiny_registry, base)
    budget = 4 * (1 + ROUTED_COPIES) * one_bytes(tiny_registry, zoo, base)  # three a batch named, with copies
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), budget)
    draws = random.Random(0)
    with torch.inference_mode():
        for _ in range(12):  # random batches over ten adapters, three or fewer named at once: loads and evictions
            chosen = draws.sample(NAMES, 3)
            route = [draws.choice([*chosen, None]) for _ in range(len(X))]
            with pager.routing(route):
                out = am(X)
            assert len(pager.held) <= len(NAMES)
            for i, name in enumerate(route):
                resident.set_active([name] if name else [])
                torch.testing.assert_close(out[i:i + 1], resident(X[i:i + 1]), rtol=1e-5, atol=1e-5)
    assert pager.loads > len(NAMES) // 2 and pager.evictions > 0
    assert set(pager.held) == set(am.adapters)  # nothing else was loaded; every eviction left the model


def test_least_recently_used_goes_first_and_the_budget_holds(paged_zoo, tiny_registry):
    zoo, base = paged_zoo
    am = fresh(tiny_registry, base)
    one = one_bytes(tiny_registry, zoo, base)
    # each new adapter needs room for itself and the copies routing keeps of it: three held, the fourth evicts
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), (2 + 1 + ROUTED_COPIES) * one + one // 2)
    for name in ("p1", "p3", "p5"):
        pager.hold([name])
    pager.hold(["p1"])  # p1 used again: p3 is now the least recently used
    pager.hold(["p7", None])
    assert pager.held == ("p5", "p1", "p7") and "p3" not in am.adapters
    assert pager.held_bytes <= pager.budget_bytes
    assert (pager.loads, pager.evictions, pager.hits) == (4, 1, 1)
    pager.hold(["p9"])
    pager.hold(["p3"])  # p5, then p1: oldest first
    assert pager.held == ("p7", "p9", "p3")


def test_the_models_own_adapters_are_never_evicted(paged_zoo, tiny_registry):
    zoo, base = paged_zoo
    am = fresh(tiny_registry, base)
    am.load_adapter(zoo.resolve("tiny/p0").weights, name="mine")
    one = one_bytes(tiny_registry, zoo, base)
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), (1 + 1 + ROUTED_COPIES) * one + one // 2)
    for name in NAMES[1::2]:
        pager.hold([name, "mine"])
    assert "mine" in am.adapters and "mine" not in pager.held and len(pager.held) == 2
    with pytest.raises(AdapterStateError, match="not loaded by this pager"):
        pager.evict("mine")


def test_a_batch_over_the_budget_is_refused_before_anything_changes(paged_zoo, tiny_registry):
    zoo, base = paged_zoo
    before = zoo_state(zoo)
    am = fresh(tiny_registry, base)
    one = one_bytes(tiny_registry, zoo, base)
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), 3 * (1 + ROUTED_COPIES) * one)  # three, with copies
    pager.hold(["p1"])
    with pytest.raises(AdapterStateError, match=r"names 4 adapters .* copies routing keeps .* more than the pager's "
                                                r"budget .* split the batch"):
        with pager.routing(["p3", "p5", "p7", "p9"]):
            pytest.fail("the block ran")
    assert pager.held == ("p1",) and list(am.adapters) == ["p1"] and pager.loads == 1
    assert zoo_state(zoo) == before
    with pytest.raises(ConfigError, match="budget_bytes must be a positive integer"):
        AdapterPager(am, zoo_adapters(zoo, "tiny"), 0)


@pytest.mark.parametrize("name, error, says", [
    ("nope", UnknownNameError, "nope"),
    ("../base", NameRuleError, "invalid adapter name"),
    ("base", RefError, "is a base, not an adapter"),
    ("both", RefError, "is a composition, not an adapter"),
    ("elsewhere", IncompatibleAdapterError, "."),  # trained on another base: the fingerprint check refuses it
])
def test_names_the_zoo_cannot_page_in_are_refused_and_the_model_is_unchanged(paged_zoo, tiny_registry, name, error,
                                                                             says):
    zoo, base = paged_zoo
    compose(zoo, "tiny", "both", ["tiny/p1", "tiny/p2=0.5"])
    before = zoo_state(zoo)
    am = fresh(tiny_registry, base)
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), 1 << 30)
    pager.hold(["p1"])
    with pytest.raises(error, match=says):
        pager.hold(["p2", name])
    assert pager.held[-1] in ("p1", "p2") and name not in am.adapters
    assert zoo_state(zoo) == before


def test_evicted_adapters_free_their_routed_pool_slots(paged_zoo, tiny_registry):
    """The pool of routed factors follows the adapters held at once: sweeping all ten adapters two at a time
    reuses the evicted ones' slots (the pool does not grow to hold all ten), and the held bytes count it."""
    zoo, base = paged_zoo
    am = fresh(tiny_registry, base)
    one = one_bytes(tiny_registry, zoo, base)
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), 64 * one)  # room for the pool's first slots too
    with torch.inference_mode():
        with pager.routing(["p1", "p3", "p1", "p3", None, "p1"]):
            am(X)
        pool = am.layers()["fc1"].layer_of("p1")._pool
        capacity = pool.a.shape[0]
        assert am.kept_bytes >= pool.nbytes > 0 and pager.held_bytes >= pool.nbytes
        pager.budget_bytes = pager.held_bytes  # what is held now: from here every load evicts
        for first, second in [*zip(NAMES[0::2], NAMES[1::2]), *zip(NAMES[1::2], NAMES[0::2])]:
            with pager.routing([first, second, first, second, first, second]):
                am(X)
            assert len(am.adapters) <= 5
    assert pager.loads >= 10 and pager.evictions >= 5 and pool.a.shape[0] == capacity < 10


def test_an_adapter_loaded_inside_inference_mode_routes_and_trains_later(paged_zoo, tiny_registry):
    """What a pager does inside a serving loop: adapters made under torch.inference_mode are normal tensors
    (the routed conv path caches their folded weights, which needs version counters; they can train later)."""
    zoo, base = paged_zoo
    from adapterhub_lite import LayerPolicy

    am = AdaptedModel(load_base(tiny_registry, base), base_id=base.ref, registry=tiny_registry,
                      policy=LayerPolicy(fold_limit=1 << 22, cache_budget=8.0))
    with torch.inference_mode():
        for name in ("p1", "p2"):
            am.load_adapter(zoo.resolve(f"tiny/{name}").weights, name=name)
        with am.routing(["p1", "p2", None, "p1", "p2", "p2"]):
            out = am(X)
    assert not any(p.is_inference() for _, p in am.adapter_parameters("p1"))
    for i, name in enumerate(["p1", "p2", None, "p1", "p2", "p2"]):
        am.set_active([name] if name else [])
        torch.testing.assert_close(out[i:i + 1], am(X[i:i + 1]), rtol=1e-5, atol=1e-5)
    am.set_active(["p1"])
    am.train()
    am(X).sum().backward()
    assert all(p.grad is not None for _, p in am.adapter_parameters("p1"))


def test_a_base_changed_in_place_while_paging_refuses_the_next_load(paged_zoo, tiny_registry):
    """Later loads trust the base's version counters instead of reading its bytes again (a pager's speed), so an
    in-place change of a base weight is still seen: the next adapter paged in is refused by fingerprint."""
    zoo, base = paged_zoo
    am = fresh(tiny_registry, base)
    pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), 1 << 30)
    pager.hold(["p1"])
    pager.hold(["p3"])  # same base: loads without reading it again
    with torch.no_grad():
        am.base_modules()["fc1"].weight.add_(1e-3)
    with pytest.raises(IncompatibleAdapterError, match="module 'fc1' differs"):
        pager.hold(["p5"])
    assert "p5" not in am.adapters and pager.held == ("p1", "p3")


def test_a_base_built_inside_inference_mode_is_checked_in_full_every_time(paged_zoo, tiny_registry):
    """Inference tensors have no version counter to trust: every load reads the base's bytes again."""
    zoo, base = paged_zoo
    with torch.inference_mode():
        am = fresh(tiny_registry, base)
        pager = AdapterPager(am, zoo_adapters(zoo, "tiny"), 1 << 30)
        pager.hold(["p1"])
        pager.hold(["p3"])
        am.base_modules()["fc1"].weight.add_(1e-3)  # in place, inside inference mode
        with pytest.raises(IncompatibleAdapterError, match="module 'fc1' differs"):
            pager.hold(["p5"])
    assert pager.held == ("p1", "p3")
