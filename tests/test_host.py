"""The host/kind split (issue 30): the core's AdaptedModule owns the bookkeeping of every wrapped module, a
plugin's AdapterLayer (a kind) only the family's math."""

from __future__ import annotations

import warnings

import pytest
import torch
from adapterhub_lite_lora import LoraLinear
from torch import nn

from adapterhub_lite.layer import _RENAMED  # older names of contract members, not part of it
from adapterhub_lite import AdaptedModel, AdaptedModule, AdapterLayer, AdapterStateError, LoraConfig, get_registry

HOST_BOOKKEEPING = {"add", "remove", "set_weight", "enable", "disable", "weight", "active", "live", "fold",
                    "unfold", "folded", "bake", "base_state", "adapter_state", "load_adapter_state", "layer_of"}


def test_the_family_contract_holds_the_math_and_the_host_the_bookkeeping() -> None:
    contract = {n for n in dir(AdapterLayer) if not n.startswith("_")} - set(dir(nn.Module)) - set(_RENAMED)
    assert not contract & HOST_BOOKKEEPING, contract & HOST_BOOKKEEPING
    assert {"create", "delta", "delta_weight"} <= contract and len(contract) <= 22, sorted(contract)
    assert HOST_BOOKKEEPING <= set(dir(AdaptedModule))


def test_a_module_wrapped_by_hand_takes_the_installed_kind_and_runs_base_plus_delta() -> None:
    torch.manual_seed(0)
    host = AdaptedModule(nn.Linear(5, 3))
    host.add("a", LoraConfig(targets="*", rank=2))
    kind = host.layer_of("a")
    assert type(kind) is LoraLinear and kind.host is host and host.families == ("lora",)
    with torch.no_grad():
        host.adapters["a"].lora_B.normal_()
        x = torch.randn(4, 5)
        torch.testing.assert_close(host(x), host.base(x) + kind.delta("a", x))
    host.remove("a")
    assert host.families == () and host.kinds == ()  # a family's kind goes with its last adapter


def test_a_second_family_joins_the_same_module_object() -> None:
    """No special class replaces the wrapper when another family comes: the same module gets a second kind."""
    am = AdaptedModel(nn.Sequential(nn.Linear(4, 4)), registry=get_registry())
    am.add_adapter("l", LoraConfig(targets=["0"], rank=1))
    host = am.model[0]
    am.add_adapter("h", get_registry().config_class("loha")(targets=["0"], rank=1))
    assert am.model[0] is host and host.families == ("lora", "loha")
    assert [type(k).__name__ for k in host.kinds] == ["LoraLinear", "LohaLayer"]
    am.delete_adapter("l")
    assert am.model[0] is host and host.families == ("loha",)


def test_a_kind_on_its_own_says_where_its_adapters_live() -> None:
    with pytest.raises(AdapterStateError, match="wrap the base module in adapterhub_lite.AdaptedModule"):
        LoraLinear(nn.Linear(2, 2)).adapters


def test_a_kind_written_against_the_old_contract_still_works_with_a_pointer_to_the_host() -> None:
    """Kinds used to inherit the bookkeeping (`self.base_state()`, `self.live()`): those reads still work, each
    with a DeprecationWarning naming `self.host`."""

    class OldStyle(LoraLinear):
        def delta_weight(self, name):
            assert self.base_state()["weight"].shape == self.base.weight.shape
            return super().delta_weight(name)

    host = AdaptedModule(nn.Linear(3, 3))
    host.add("a", LoraConfig(targets="*", rank=1), OldStyle)
    with pytest.warns(DeprecationWarning, match=r"OldStyle.base_state: .* use self.host.base_state"):
        host.delta_weights("a")  # the generic merge path asks the kind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            host.layer_of("a").no_such_member  # noqa: B018  (unknown names stay AttributeErrors)


def test_the_kinds_stay_out_of_the_model_state_dict() -> None:
    """The model's state dict is the base's plus `<module>.adapters.<name>.*`: kinds are not submodules (the
    files, merged exports and fused bases depend on these keys)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    plain = set(model.state_dict())
    am = AdaptedModel(model, registry=get_registry())
    am.add_adapter("l", LoraConfig(targets=["0", "1"], rank=1))
    am.add_adapter("h", get_registry().config_class("loha")(targets=["1"], rank=1))
    keys = set(am.model.state_dict())
    assert {k.replace(".base.", ".") for k in keys if ".adapters." not in k} == plain
    assert all(".adapters.l." in k or ".adapters.h." in k for k in keys if ".base." not in k), sorted(keys)
    assert all(k.count(".base.") == 1 for k in keys if ".adapters." not in k)
