"""The registry: ownership, duplicates, dispatch by module type, helpful unknown-name errors."""

from __future__ import annotations

import types

import adapterhub_lite_lora
import pytest
from adapterhub_lite_lora import LoraLinear
from torch import nn

from adapterhub_lite import (
    AdapterKind,
    ConfigError,
    LoraConfig,
    ModelSpec,
    PluginError,
    PluginManager,
    Registry,
    UnknownNameError,
    hookimpl,
)


def _plugin(**hooks) -> types.ModuleType:
    """A plugin made on the fly: a module object holding the hook functions (as a plugin package would)."""
    module = types.ModuleType("extra_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


class Special(nn.Linear):
    """A Linear subclass that a plugin's own kind wraps (more specific than lora-linear)."""


class SpecialLayer(LoraLinear):
    targets = (Special,)


def _registry(*plugins) -> Registry:
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    for i, plugin in enumerate(plugins):
        pm.add(plugin, name=f"extra{i}")
    pm.check()
    return Registry(pm)


def test_owner_is_recorded(registry) -> None:
    assert {n: o.plugin for n, o in registry.kinds.items()} == {k: "lora" for k in (
        "lora-linear", "lora-conv1d", "lora-conv2d", "lora-embedding", "lora-mha", "lora-transformers-conv1d")}
    assert registry.families() == {"lora": LoraConfig}


def test_duplicate_names_are_refused_naming_both_plugins() -> None:
    dup = _plugin(register_adapter_types=lambda register: register(
        AdapterKind(name="lora-linear", layer=LoraLinear, config=LoraConfig)))
    with pytest.raises(PluginError, match="'lora-linear' is registered by both") as info:
        _registry(dup)
    assert info.value.plugin in {"lora", "extra0"}


def test_a_second_config_class_claiming_a_family_is_refused_naming_both_plugins() -> None:
    """Issue 31: a config whose family is 'lora' from another plugin would replace LoRA's options for every
    model; it is refused in one line. Adding a kind to the family with the family's own config is fine."""
    from dataclasses import dataclass
    from typing import ClassVar

    from adapterhub_lite import AdapterConfig

    @dataclass(frozen=True)
    class Impostor(AdapterConfig):
        family: ClassVar[str] = "lora"

    claim = _plugin(register_adapter_types=lambda register: register(
        AdapterKind(name="impostor-linear", layer=LoraLinear, config=Impostor)))
    with pytest.raises(PluginError, match="adapter family 'lora' is claimed by both 'extra0' \\(Impostor\\) and "
                                          "'lora' \\(LoraConfig\\)"):
        _registry(claim)
    joins = _plugin(register_adapter_types=lambda register: register(
        AdapterKind(name="lora-special", layer=SpecialLayer, config=LoraConfig)))
    assert _registry(joins).kinds["lora-special"].plugin == "extra0"


def test_wrong_spec_type_is_refused() -> None:
    bad = _plugin(register_models=lambda register: register({"name": "m"}))
    with pytest.raises(PluginError, match="passed dict to register_models; expected adapterhub_lite.ModelSpec"):
        _registry(bad)


def test_invalid_spec_names_are_refused() -> None:
    with pytest.raises(PluginError, match="invalid model name 'a/b'"):
        ModelSpec(name="a/b", build=nn.Linear)


def test_registering_the_same_plugin_name_twice_is_refused() -> None:
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    with pytest.raises(PluginError, match="'lora' is registered twice"):
        pm.add(types.ModuleType("other"), name="lora")


def test_kind_dispatch_walks_the_mro(registry) -> None:
    class MyLinear(nn.Linear):
        pass

    assert registry.kind_for(MyLinear(2, 2), "lora").name == "lora-linear"
    assert registry.kind_for(nn.ReLU(), "lora") is None
    assert registry.wrappable_types("lora") == ["Conv1D", "Conv1d", "Conv2d", "Embedding", "Linear", "MultiheadAttention"]


def test_a_more_specific_kind_wins() -> None:
    special = _plugin(register_adapter_types=lambda register: register(
        AdapterKind(name="lora-special", layer=SpecialLayer, config=LoraConfig)))
    registry = _registry(special)
    assert registry.kind_for(Special(2, 2), "lora").name == "lora-special"
    assert registry.kind_for(nn.Linear(2, 2), "lora").name == "lora-linear"


def test_models_are_created_by_name_with_defaults() -> None:
    models = _plugin(register_models=lambda register: register(
        ModelSpec(name="mlp", build=lambda width=3: nn.Linear(2, width), defaults={"width": 5})))
    registry = _registry(models)
    assert registry.list_models("m*") == ["mlp"]
    assert registry.create_model("mlp").out_features == 5
    assert registry.create_model("mlp", width=7).out_features == 7
    with pytest.raises(UnknownNameError, match="unknown model 'mpl'; did you mean 'mlp'"):
        registry.create_model("mpl")


def test_model_arguments_the_constructor_does_not_take_are_refused_in_one_line() -> None:
    models = _plugin(register_models=lambda register: register(
        ModelSpec(name="mlp", build=lambda width=3: nn.Linear(2, width))))
    registry = _registry(models)
    with pytest.raises(ConfigError, match="model 'mlp' takes no argument 'depth'; it takes: width"):
        registry.create_model("mlp", depth=2)
    with pytest.raises(ConfigError, match="model 'mlp' cannot be built with width='wide': "):
        registry.create_model("mlp", width="wide")  # the constructor's TypeError, named with what was given


def test_unknown_kind_family_merge_and_format(registry) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'lora-linear'"):
        registry.get_kind("lora-linaer")
    with pytest.raises(UnknownNameError, match="unknown adapter family 'loha'.*Install the plugin"):
        registry.config_class("loha")
    with pytest.raises(UnknownNameError, match="unknown combine method 'tie'; did you mean 'ties'"):
        registry.get_combine_method("tie")
    assert registry.combine_methods["ties"].plugin == "lora"
    assert registry.get_combine_method("svd").families == ("lora",)
    with pytest.raises(UnknownNameError, match="unknown format"):
        registry.get_format("peft")
    assert isinstance(UnknownNameError("x", "y", []), KeyError)


def test_an_unhashable_plugin_is_refused_with_the_reason() -> None:
    pm = PluginManager()
    with pytest.raises(PluginError, match="plugin 'odd' cannot be registered: it is not hashable"):
        pm.add(types.SimpleNamespace(register_models=hookimpl(lambda register: None)), name="odd")


class Foreign(nn.Module):
    """Stands for a class from a package a plugin names but does not import."""


class ForeignChild(Foreign):
    pass


def test_a_kind_may_name_its_target_class_by_qualified_name() -> None:
    from adapterhub_lite.specs import qualified_name

    kind = AdapterKind(name="lora-foreign", layer=LoraLinear, config=LoraConfig, targets=(qualified_name(Foreign),))
    assert kind.target_names == ["Foreign"] and qualified_name(Foreign) == f"{__name__}.Foreign"
    assert kind.wraps(Foreign) and not kind.wraps(ForeignChild) and not kind.wraps(nn.Linear)
    registry = _registry(_plugin(register_adapter_types=lambda register: register(kind)))
    assert registry.kind_for(ForeignChild(), "lora") is kind  # through the MRO, as a class target is
    assert registry.kind_for(nn.ReLU(), "lora") is None
    assert "Foreign" in registry.wrappable_types("lora")
