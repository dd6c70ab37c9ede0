"""Adapters of every family stacked on the same modules (one AdaptedModule per module, holding a kind per
family): outputs, weights, merges, training, routing, files and removal, each against the float64 reference
of tests/conftest.py, which folds additive deltas into W and applies (IA)^3's scales around the result, as
host.py documents."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_matches_reference, reference_model
from torch import nn

from adapterhub_lite import AdaptedModel, AdapterStateError, get_registry
from adapterhub_lite.host import AdaptedModule

X = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(3))
TARGETS = ["conv", "fc1", "fc2"]


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean((2, 3)))))


def _config(family: str, **options):
    return get_registry().config_class(family)(targets=TARGETS, **options)


STACK = {  # adapter name -> (family, options); two (IA)^3 adapters: one on the inputs, one on the outputs
    "lora": ("lora", {"rank": 2, "alpha": 3.0}),
    "scales-out": ("ia3", {}),
    "dora": ("dora", {"rank": 2, "alpha": 2.0}),
    "loha": ("loha", {"rank": 2, "alpha": 3.0}),
    "scales-in": ("ia3", {"feedforward": True}),
    "lokr": ("lokr", {"rank": 1, "alpha": 2.0}),
}


def _stacked(seed: int = 0) -> AdaptedModel:
    torch.manual_seed(0)
    am = AdaptedModel(Small().eval(), registry=get_registry())
    for name, (family, options) in STACK.items():
        am.add_adapter(name, _config(family, **options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(p + torch.randn(p.shape, generator=gen) * 0.3)  # every factor non-zero, scales away from 1
    return am


def _check(am: AdaptedModel) -> torch.Tensor:
    """The output, with and without autograd recording (merged-weight cache vs the composed forward), against
    the reference."""
    want = reference_model(am)(X.double())
    with torch.no_grad():
        cached = am(X)
    composed = am(X).detach()
    assert_matches_reference(cached, want)
    assert_matches_reference(composed, want)
    return cached


def test_every_family_stacks_on_one_module_and_matches_the_reference() -> None:
    am = _stacked()
    layer = am.model.fc1
    assert isinstance(layer, AdaptedModule) and layer.families == ("lora", "ia3", "dora", "loha", "lokr")
    assert type(layer.layer_of("dora")).__name__ == "DoraLinear"
    assert type(layer.layer_of("lora")).__name__ == "LoraLinear"
    out = _check(am)
    torch.manual_seed(0)
    assert (out - Small().eval()(X)).abs().max() > 0.05  # the stack does something
    am.set_weight("loha", 0.5)
    am.set_weight("scales-out", -1.0)
    am.set_active(["lora", "scales-out", "dora", "lokr"], {"lora": 2.0, "scales-out": -1.0})
    _check(am)


def test_off_and_zero_weight_are_bit_identical_to_the_base() -> None:
    am = _stacked()
    torch.manual_seed(0)
    base = Small().eval()
    with torch.no_grad():
        want = base(X)
        am.set_active([])
        assert torch.equal(am(X), want)
        am.set_active(list(STACK), [0.0] * len(STACK))
        assert torch.equal(am(X), want)


def test_merge_all_or_in_steps_matches_and_unmerge_is_bit_exact() -> None:
    am = _stacked()
    originals = {k: v.clone() for k, v in am.model.state_dict().items()}
    with torch.no_grad():
        unmerged = am(X)
    want = reference_model(am)(X.double())
    am.fold()
    with torch.no_grad():
        assert_matches_reference(am(X), want)
    am.unfold()
    assert all(torch.equal(v, originals[k]) for k, v in am.model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(am(X), unmerged)
    for step in (["lora", "loha"], ["scales-in"], ["dora", "lokr", "scales-out"]):  # a wrap between additive ones
        am.fold(step)
        _check(am)  # merged ones from the weights, the rest live: still the whole stack
    assert set(am.folded) == set(STACK)
    am.unfold()
    assert all(torch.equal(v, originals[k]) for k, v in am.model.state_dict().items())


def test_training_reaches_every_family_and_nothing_else() -> None:
    am = _stacked()
    am.train()
    am(X).square().sum().backward()
    for name in STACK:
        grads = [p.grad for _, p in am.adapter_parameters(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    plain = {n for n, p in am.model.named_parameters() if ".adapters." not in n}
    assert all(p.grad is None for n, p in am.model.named_parameters() if n in plain)


def test_routing_gives_each_sample_its_own_adapter_alone() -> None:
    am = _stacked()
    route = ["lora", "scales-out", None]
    with torch.no_grad(), am.routing(route):
        routed = am(X)
    for i, name in enumerate(route):
        am.set_active([name] if name else [])
        assert_matches_reference(routed[i:i + 1], reference_model(am)(X[i:i + 1].double()))


def test_files_round_trip_and_removal_unwraps(tmp_path) -> None:
    am = _stacked()
    torch.manual_seed(0)
    fresh = AdaptedModel(Small().eval(), registry=get_registry())
    for name in STACK:
        fresh.load_adapter(am.save_adapter(name, tmp_path / f"{name}.safetensors"))
    with torch.no_grad():
        assert torch.equal(fresh(X), am(X))
    for name in STACK:
        fresh.delete_adapter(name)
        _check(fresh) if fresh.adapters else None
    assert not fresh.layers()
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(fresh(X), Small().eval()(X))


def test_a_lora_adapter_beside_dora_stays_lora() -> None:
    """DoRA's layer class extends LoRA's: a LoRA adapter on a DoRA-wrapped module gets LoRA's own layer."""
    torch.manual_seed(0)
    am = AdaptedModel(Small().eval(), registry=get_registry())
    am.add_adapter("d", _config("dora", rank=2))
    am.add_adapter("l", _config("lora", rank=2))
    assert not any(k.endswith("lora_magnitude") for k in am.adapter_state("l"))
    assert am.bundle("l").kinds == {"conv": "lora-conv2d", "fc1": "lora-linear", "fc2": "lora-linear"}
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(0.2)
    _check(am)


def test_a_second_family_on_a_merged_module_is_refused_and_changes_nothing() -> None:
    torch.manual_seed(0)
    am = AdaptedModel(Small().eval(), registry=get_registry())
    am.add_adapter("l", _config("lora", rank=2))
    am.fold()
    before = copy.deepcopy(am.model.state_dict())
    with pytest.raises(AdapterStateError, match=r"folded into this module: unfold\(\) before adding"):
        am.add_adapter("h", _config("loha", rank=2))
    assert list(am.adapters) == ["l"] and am.model.fc1.families == ("lora",)
    assert all(torch.equal(v, before[k]) for k, v in am.model.state_dict().items())
