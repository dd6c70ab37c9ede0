"""The model-level handle: injection by pattern and type, active sets, merge, unload, counts, errors."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from adapterhub_lite_lora import LoraConv2d, LoraLinear, LoraMultiheadAttention
from conftest import TinyNet, assert_matches_reference, randomize_adapters, reference_model
from torch import nn

from adapterhub_lite import (
    AdaptedModel,
    AdaptedModule,
    AdapterStateError,
    ConfigError,
    LayerPolicy,
    LoraConfig,
    UnknownNameError,
    UnsupportedModuleError,
)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_targets_by_glob_regex_and_type(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    assert am.add_adapter("g", LoraConfig(targets=["fc*"])) == ["fc1", "fc2"]
    assert am.add_adapter("r", LoraConfig(targets=["re:(conv|attn)"])) == ["conv", "attn"]
    assert am.add_adapter("t", LoraConfig(target_types=["Conv2d"])) == ["conv", "depthwise"]
    assert am.add_adapter("both", LoraConfig(targets=["*"], target_types=["Linear"])) == ["fc1", "fc2"]
    assert isinstance(tiny_net.fc1.layer_of("g"), LoraLinear) and isinstance(tiny_net.conv.layer_of("r"), LoraConv2d)
    assert isinstance(tiny_net.attn.layer_of("r"), LoraMultiheadAttention)
    assert set(tiny_net.conv.adapters) == {"r", "t"}


def test_misspelt_target_is_an_error_with_close_matches(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    before = _state(tiny_net)
    with pytest.raises(UnknownNameError, match=r"unknown module 'fc_1'.*did you mean 'fc1'"):
        am.add_adapter("x", LoraConfig(targets=["fc2", "fc_1"]))
    with pytest.raises(UnknownNameError, match="did you mean 'Linear'"):
        am.add_adapter("x", LoraConfig(target_types=["Linaer"]))
    assert am.adapters == {} and not am.layers()
    assert all(torch.equal(v, before[k]) for k, v in tiny_net.state_dict().items())


def test_unwrappable_target_is_an_error(registry) -> None:
    am = AdaptedModel(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), registry=registry)
    with pytest.raises(UnsupportedModuleError, match=r"'1' selects only .*\(ReLU\).*wraps: Conv1D, Conv1d, Conv2d, Embedding, Linear, Multi"):
        am.add_adapter("x", LoraConfig(targets=["1"]))
    with pytest.raises(UnsupportedModuleError, match="selects no module"):
        am.add_adapter("x", LoraConfig(target_types=["ReLU"]))
    assert am.adapters == {} and not am.layers()


def test_adapter_names_are_checked(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets="fc1"))
    with pytest.raises(AdapterStateError, match="already exists"):
        am.add_adapter("a", LoraConfig(targets="fc2"))
    for bad in ["", "a.b", "x/y", "w=1", "v@2"]:
        with pytest.raises(ConfigError, match="invalid adapter name"):
            am.add_adapter(bad, LoraConfig(targets="fc2"))
    am.add_adapter("digit9", LoraConfig(targets="fc2"))
    with pytest.raises(UnknownNameError, match=r"unknown adapter 'digit8'; did you mean 'digit9'\? \(valid: a, digit9\)"):
        am.set_active(["digit8"])


def test_base_is_frozen_and_counts(tiny_net, registry) -> None:
    base_params = sum(p.numel() for p in tiny_net.parameters())
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["fc1"], rank=2))  # A 2x8, B 16x2
    counts = am.parameter_counts()
    assert counts == {"base": base_params, "adapters": {"a": 48}, "trainable": 48,
                      "trainable_percent": pytest.approx(100 * 48 / base_params)}
    assert [id(p) for p in am.trainable_parameters()] == [id(p) for _, p in am.adapter_parameters("a")]


def test_set_active_weights_and_bit_exact_paths(tiny_net, tiny_input, registry) -> None:
    with torch.no_grad():
        base_out = tiny_net.requires_grad_(False)(tiny_input)
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"], rank=2))
    am.add_adapter("b", LoraConfig(target_types=["Linear", "Conv2d"], rank=3))
    randomize_adapters(tiny_net)
    with torch.no_grad():
        am.set_active(["a", "b"], weights=[0.7, -1.0])
        assert am.active == {"a": 0.7, "b": -1.0}
        stacked = am(tiny_input)
        reference = reference_model(am)(tiny_input.double())
        assert_matches_reference(stacked, reference)
        assert not torch.equal(stacked, base_out)
        am.set_active([])
        assert torch.equal(am(tiny_input), base_out)
        am.set_active(["a"], weights={"a": 0.0})
        assert torch.equal(am(tiny_input), base_out)
        am.set_active(["a", "b"], weights=[0.7, -1.0])
        am.fold()
        assert am.folded == ("a", "b")
        assert_matches_reference(am(tiny_input), reference)
        with pytest.raises(AdapterStateError, match="unfold"):
            am.set_active(["a"])
        with pytest.raises(AdapterStateError, match="unfold"):
            am.delete_adapter("a")
        am.unfold()
        assert torch.equal(am(tiny_input), stacked)


def test_unload_gives_back_the_original_model(tiny_net, tiny_input, registry) -> None:
    modules = dict(tiny_net.named_modules())
    before = _state(tiny_net)
    grads = {n: p.requires_grad for n, p in tiny_net.named_parameters()}
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"]))
    randomize_adapters(tiny_net)
    am.fold()
    plain = am.unload()
    assert plain is tiny_net
    assert dict(plain.named_modules()).keys() == modules.keys()
    assert all(plain.get_submodule(n) is m for n, m in modules.items() if n)
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == grads
    assert am.adapters == {}


def test_unload_with_merge_fuses_the_adapters(tiny_net, tiny_input, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"]))
    randomize_adapters(tiny_net)
    with torch.no_grad():
        expected = reference_model(am)(tiny_input.double())
        fused = am.unload(fold=True)
        assert not any(isinstance(m, AdaptedModule) for m in fused.modules())
        assert_matches_reference(fused(tiny_input), expected)


def test_delete_adapter_unwraps_empty_layers_and_frees_tensors(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["fc1", "fc2"]))
    am.add_adapter("b", LoraConfig(targets=["fc2"]))
    refs = [weakref.ref(p) for _, p in am.adapter_parameters("a")]
    am.delete_adapter("a")
    gc.collect()
    assert all(r() is None for r in refs)
    assert isinstance(tiny_net.fc1, nn.Linear) and not isinstance(tiny_net.fc1, AdaptedModule)
    assert isinstance(tiny_net.fc2.layer_of("b"), LoraLinear) and list(tiny_net.fc2.adapters) == ["b"]
    with pytest.raises(UnknownNameError):
        am.delete_adapter("a")


def test_unload_frees_adapter_tensors(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"]))
    refs = [weakref.ref(p) for _, p in am.adapter_parameters("a")]
    with torch.no_grad():
        am(torch.randn(1, 3, 8, 8))
    am.unload()
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_model_can_have_only_one_handle(tiny_net, registry) -> None:
    am = AdaptedModel(tiny_net, registry=registry)
    am.add_adapter("a", LoraConfig(targets="fc1"))
    with pytest.raises(AdapterStateError, match="already holds adapter layers"):
        AdaptedModel(tiny_net, registry=registry)


def test_training_updates_only_adapters(registry) -> None:
    torch.manual_seed(0)
    model = TinyNet().train()
    before = _state(model)
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"], rank=2, dropout=0.1))
    opt = torch.optim.AdamW(am.trainable_parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(am(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(opt.state) == len(list(am.adapter_parameters("a")))
    plain = am.unload()
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("batch_first", [True, False])
def test_whole_model_merge_in_both_attention_layouts(batch_first, registry) -> None:
    torch.manual_seed(0)
    model = TinyNet(batch_first=batch_first).eval()
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["attn"], attention_projections=("q", "v", "out")))
    randomize_adapters(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        reference = reference_model(am)(x.double())
        assert_matches_reference(am(x), reference)
        am.fold()
        assert_matches_reference(am(x), reference)


class SeparateProjections(nn.Module):
    """Attention written with its own q/k/v/out nn.Linear projections (as in most transformers)."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (p(x).view(n, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(n, t, d))


def test_separate_projection_attention(registry) -> None:
    torch.manual_seed(0)
    model = SeparateProjections().eval()
    am = AdaptedModel(model, registry=registry)
    assert am.add_adapter("a", LoraConfig(targets=["*_proj"], rank=2)) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    am.add_adapter("b", LoraConfig(targets=["re:[qv]_proj"], rank=3))
    randomize_adapters(model)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        am.set_active(["a", "b"], [0.5, 1.5])
        reference = reference_model(am)(x.double())
        assert_matches_reference(am(x), reference)
        am.fold()
        assert_matches_reference(am(x), reference)


def test_wrapping_keeps_the_models_mode(registry) -> None:
    """Adapters added to a model already in eval mode must not run their dropout."""
    from adapterhub_lite import AdaptedModel, LoraConfig

    model = nn.Sequential(nn.Linear(4, 4)).eval()
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["0"], rank=2, dropout=0.9))
    assert not any(m.training for m in am.model.modules())
    am.train()
    assert all(m.training for m in am.model.modules())


def test_kept_merge_buffers_are_reused_and_unmerge_stays_bit_exact(registry, monkeypatch) -> None:
    from conftest import randomize_adapters

    from adapterhub_lite import AdaptedModel, LayerPolicy, LoraConfig

    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Linear(16, 16)), registry=registry, policy=LayerPolicy(keep_fold_buffers=True))
    am.add_adapter("a", LoraConfig(targets=["0"], rank=2))
    randomize_adapters(am.model)
    layer = am.layers()["0"]
    original = layer.base.weight.data.clone()
    am.fold()
    first_ptr = layer.base.weight.data_ptr()  # an address, not a reference: the buffer stays ours alone
    first_values = layer.base.weight.detach().clone()
    am.unfold()
    assert torch.equal(layer.base.weight.data, original)  # bit-exact
    assert layer.base.weight.data_ptr() != first_ptr
    am.fold()
    assert layer.base.weight.data_ptr() == first_ptr  # written into the kept buffer
    assert torch.equal(layer.base.weight.data, first_values)
    am.unfold()
    fused = am.fused_state_dict()["0.weight"]  # must not be overwritten by a later merge
    kept = fused.clone()
    am.fold()
    am.unfold()
    assert torch.equal(fused, kept)
    # a merged weight someone still holds is never written into
    am.fold()
    held = am.model.state_dict()["0.base.weight"]
    held_values = held.clone()
    am.unfold()
    am.fold()
    assert layer.base.weight.data_ptr() != held.data_ptr() and torch.equal(held, held_values)
    am.unfold()
    am.release_buffers()
    assert not len(layer._fold_buffers)


def test_memory_after_unmerge_and_in_the_inference_cache_is_bounded(registry) -> None:
    """Unmerged costs nothing by default (no kept merge buffer), and however often the active set or a weight
    changes, each small layer caches at most one merged copy of itself (LayerPolicy.cache_budget = 1.0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    am = AdaptedModel(model, registry=registry)
    for name in ("a", "b"):
        am.add_adapter(name, LoraConfig(targets=["0", "2"], rank=4))
    randomize_adapters(model)
    x = torch.randn(3, 64)
    am.fold()
    am.unfold()
    assert all(not len(layer._fold_buffers) for layer in am.layers().values())  # released on unmerge
    with torch.no_grad():
        for i, weight in enumerate([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6]):
            am.set_active(["a", "b"] if i % 2 else ["a"], [weight, -weight][: 1 + i % 2])
            reference = reference_model(am)(x.double())
            assert_matches_reference(am(x), reference)  # a cached copy never goes stale
            layers = am.layers().values()
            assert all(len(layer.strategy.cache) == 1 for layer in layers)
            assert 0 < am.cache_bytes <= model_bytes


def test_adapter_names_that_are_torch_module_attributes_work(registry) -> None:
    """'half', 'train', 'to' ... are fine zoo names; the layer keeps them as keys, never as attributes."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
    am = AdaptedModel(model, registry=registry)
    for name in ("half", "train", "to", "forward", "state_dict"):
        am.add_adapter(name, LoraConfig(targets=["fc1"], rank=1))
    randomize_adapters(model)
    with torch.no_grad():
        stacked = am(x)
        am.fold()
        torch.testing.assert_close(am(x), stacked, rtol=1e-5, atol=1e-6)
        am.unfold()
    assert callable(model.fc1.half) and "fc1.adapters.half.lora_A" in model.state_dict()
    for name in ("half", "train", "to", "forward", "state_dict"):
        am.delete_adapter(name)
    with torch.no_grad():
        assert torch.equal(am(x), plain)


def test_the_policy_tunes_every_layer_and_is_refused_mid_routing(registry) -> None:
    """One LayerPolicy per model: fold_limit 0 turns the merged-weight cache off (outputs equal), a bad value
    is one ConfigError, and a policy cannot change inside a routing() block."""
    from adapterhub_lite import AdaptedModel, AdapterStateError, ConfigError, LayerPolicy, LoraConfig

    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval(), registry=registry)
    am.add_adapter("a", LoraConfig(targets=["0", "2"], rank=2))
    randomize_adapters(am.model)
    x = torch.randn(4, 8)
    with torch.no_grad():
        cached = am(x)
        assert am.cache_bytes > 0
        am.policy = LayerPolicy(fold_limit=0)
        plain = am(x)
        assert am.cache_bytes == 0
    torch.testing.assert_close(cached, plain, rtol=1e-4, atol=1e-5)  # two roundings of the same sum
    with pytest.raises(ConfigError, match="fold_limit"):
        LayerPolicy(fold_limit=-1)
    with pytest.raises(ConfigError, match="cache_budget"):
        LayerPolicy(cache_budget=float("nan"))
    with am.routing(["a"] * 4), pytest.raises(AdapterStateError, match="routing"):
        am.policy = LayerPolicy()
    assert AdaptedModel(nn.Linear(2, 2), policy=LayerPolicy(fold_limit=7)).policy.fold_limit == 7


def test_an_adapter_module_with_buffers_is_refused_when_created(registry) -> None:
    """Issue 31: tensors an adapter keeps as buffers would be left out of its file and of merges silently;
    the kind is refused in one line naming it, the adapter and the buffer, and the model is left as it was."""
    from adapterhub_lite_lora import LoraLinear

    from adapterhub_lite import AdaptedModel, LoraConfig, UnsupportedModuleError

    class Buffered(LoraLinear):
        def create(self, name, config):
            module = super().create(name, config)
            module.register_buffer("running", torch.zeros(3))
            return module

    layer = AdaptedModule(nn.Linear(4, 3))
    with pytest.raises(UnsupportedModuleError, match="Buffered.create made adapter 'a' with buffers \\(running\\)"):
        layer.add("a", LoraConfig(targets=["*"], rank=1), Buffered)
    assert not layer.adapters and not layer.configs and not layer.families
    am = AdaptedModel(nn.Sequential(nn.Linear(4, 3)), registry=registry)
    am.add_adapter("ok", LoraConfig(targets=["0"], rank=1))  # first-party kinds hold parameters only


class Special(nn.Linear):
    """A module type only the test kinds below wrap."""


def _special_model_with(kind_name: str, layer: type, plugin_name: str) -> AdaptedModel:
    """One Special(4, 5) with a LoRA adapter "a" held by `layer`, a kind of plugin `plugin_name`."""
    import types

    import adapterhub_lite_lora

    from adapterhub_lite import AdapterKind, PluginManager, Registry, hookimpl

    layer.targets = (Special,)
    plugin = types.ModuleType(plugin_name.replace("-", "_"))
    plugin.register_adapter_types = hookimpl(lambda register: register(
        AdapterKind(name=kind_name, layer=layer, config=LoraConfig)))
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(plugin, name=plugin_name)
    pm.check()
    am = AdaptedModel(nn.Sequential(Special(4, 5)), registry=Registry(pm))
    am.add_adapter("a", LoraConfig(targets=["0"], rank=1))
    return am


def test_a_kind_whose_delta_has_the_wrong_shape_is_one_line_naming_kind_plugin_module_and_adapter() -> None:
    """Issue 31: a delta that broadcasts (here one column for five outputs) would pass silently through
    `base + delta`; it is refused in one line that names who to blame."""
    from adapterhub_lite_lora import LoraLinear

    from adapterhub_lite import AdapterLayer, LayerPolicy, PluginError

    class Narrow(LoraLinear):
        def add_deltas(self, live, x, out=None):
            return AdapterLayer.add_deltas(self, live, x, out)

        def delta(self, name, x):
            return super().delta(name, x)[..., :1]

    am = _special_model_with("narrow", Narrow, "narrow-plugin")
    am.policy = LayerPolicy(fold_limit=0)  # the plain path, where the delta is added
    with torch.no_grad(), pytest.raises(PluginError, match="kind 'narrow' of plugin 'narrow-plugin' on module '0', "
                                                           "adapter 'a': its delta has shape \\(2, 1\\) where the base "
                                                           "output has \\(2, 5\\)"):
        am(torch.randn(2, 4))


@pytest.mark.parametrize("path", ["low-rank", "merged-weights", "training"])
def test_a_kind_that_raises_is_one_line_naming_kind_plugin_module_and_adapter(path: str) -> None:
    """Issue 31, item 4: an exception from a kind's own code (here an IndexError in its math) comes out as a
    PluginError naming the kind, its plugin, the module and the adapter, on every path a forward takes."""
    from adapterhub_lite_lora import LoraLinear

    from adapterhub_lite import LayerPolicy, PluginError

    class Broken(LoraLinear):
        def add_deltas(self, live, x, out=None):
            raise IndexError("index 7 is out of bounds for dimension 0 with size 2")

        def folded_weights(self, weighted, allocate):
            raise IndexError("index 7 is out of bounds for dimension 0 with size 2")

    am = _special_model_with("broken", Broken, "broken-plugin")
    if path == "low-rank":
        am.policy = LayerPolicy(fold_limit=0)
    am.train(path == "training")
    with torch.set_grad_enabled(path == "training"), pytest.raises(PluginError) as caught:
        am(torch.randn(2, 4))
    message = str(caught.value)
    assert message.startswith("kind 'broken' of plugin 'broken-plugin' on module '0', adapter 'a': its ")
    assert "raised IndexError: index 7 is out of bounds" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, IndexError)
    am.policy = LayerPolicy(fold_limit=0)
    am.train(False)
    am.set_weight("a", 0.0)  # nothing live: the kind's code does not run, the base does
    with torch.no_grad():
        am(torch.randn(2, 4))


def test_the_folded_weight_cache_stays_within_its_model_wide_limit(registry) -> None:
    """Issue 32, item 2: the folded weights cached for inference hold at most `cache_limit` of the model's bytes
    (or `cache_floor`, so a small model is cached whole), the smallest layers first; the layers left out run the
    low-rank path, with the same outputs."""
    def adapted(policy: LayerPolicy) -> AdaptedModel:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 32), nn.Linear(32, 64), nn.Linear(64, 64))
        am = AdaptedModel(model, registry=registry, policy=policy).eval()
        am.add_adapter("a", LoraConfig(targets=["0", "1", "2", "3"], rank=2))
        randomize_adapters(am.model)
        return am

    x = torch.randn(4, 8)
    limited = adapted(LayerPolicy(cache_limit=0.25, cache_floor=0))
    model_bytes = 4 * sum(m.weight.numel() + m.bias.numel() for m in limited.base_modules().values())
    unlimited = adapted(LayerPolicy(cache_limit=None))
    with torch.no_grad():
        want = unlimited(x)  # the low-rank path and folded weights round differently: float32's tolerance
        torch.testing.assert_close(limited(x), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    cached = [name for name, layer in limited.layers().items() if layer.strategy.cache_bytes]
    assert cached == ["0", "1"]  # 288 + 1,152 bytes fit in a quarter of 26,528; the next layer's 8,448 do not
    assert 0 < limited.cache_bytes <= 0.25 * model_bytes
    assert len([layer for layer in unlimited.layers().values() if layer.strategy.cache_bytes]) == 4
    limited.policy = LayerPolicy()  # the default: 10% of the model, or 64 MiB if more
    with torch.no_grad():
        limited(x)
    assert all(layer.strategy.cache_bytes for layer in limited.layers().values())
    limited.delete_adapter("a")
    assert limited.cache_bytes == 0
    with pytest.raises(ConfigError, match="cache_limit must be a fraction"):
        LayerPolicy(cache_limit=-0.5)


def test_cache_after_folds_a_live_set_only_on_its_nth_call_in_a_row(registry) -> None:
    """Issue 32, item 2: with `LayerPolicy(cache_after=2)` the first inference call after a switch runs the
    low-rank path (no fold of every layer at once) and the second folds; the default folds on the first call, so
    repeated calls give the same bits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    am = AdaptedModel(model, registry=registry, policy=LayerPolicy(cache_after=2)).eval()
    for name in ("a", "b"):
        am.add_adapter(name, LoraConfig(targets=["0", "1"], rank=2), activate=False)
    randomize_adapters(am.model)
    x = torch.randn(3, 8)

    def folded_for(live: tuple) -> list[bool]:
        return [live in layer.strategy.cache.live_sets() for layer in am.layers().values()]

    with torch.no_grad():
        for active in (["a"], ["b"], ["a", "b"]):
            am.set_active(active)
            live = tuple((name, 1.0) for name in active)
            first = am(x)
            assert folded_for(live) == [False, False], active  # the low-rank path: nothing folded yet
            second = am(x)
            assert folded_for(live) == [True, True], active
            torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-5 * first.abs().max().item())
            assert torch.equal(am(x), second)  # from the cache on
        am.set_weight("a", 0.5)  # a new weight is a new live set: it waits again
        am(x)
        assert folded_for((("a", 0.5), ("b", 1.0))) == [False, False]
        am.policy = LayerPolicy()  # the default folds on the first call: repeated calls give the same bits
        once = am(x)
        assert folded_for((("a", 0.5), ("b", 1.0))) == [True, True] and torch.equal(am(x), once)
    with pytest.raises(ConfigError, match="cache_after must be a whole number"):
        LayerPolicy(cache_after=0)
