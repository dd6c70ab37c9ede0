"""LoRA-plugin specifics: fused stack vs naive sum, cache freshness, dropout, init, scaling, conv geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from adapterhub_lite_lora import LoraConv2d, LoraLinear, LoraMultiheadAttention
from conftest import randomize_adapters
from torch import nn

from adapterhub_lite import AdaptedModel, AdaptedModule, ConfigError, LayerPolicy, LoraConfig, UnsupportedModuleError
from adapterhub_lite.forward import FoldedWeights


def _linear_with(n: int, seed: int = 0) -> LoraLinear:
    torch.manual_seed(seed)
    layer = AdaptedModule(nn.Linear(6, 5))
    for i in range(n):
        layer.add(f"a{i}", LoraConfig(targets="*", rank=i + 1, alpha=2.0 + i), LoraLinear)
    randomize_adapters(layer, seed)
    return layer.eval()


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_fused_stack_matches_naive_sum(n: int) -> None:
    layer = _linear_with(n)
    weights = [0.5 - i * 0.3 for i in range(n)]
    for i, w in enumerate(weights):
        layer.set_weight(f"a{i}", w)
    x = torch.randn(7, 6)
    with torch.no_grad():
        fused = layer.kinds[0].add_deltas(layer.live(), x)
        naive = sum(layer.kinds[0].delta(f"a{i}", x) * w for i, w in enumerate(weights))
    torch.testing.assert_close(fused, naive, rtol=1e-5, atol=1e-6)


def test_stack_runs_one_pair_of_products_for_many_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _linear_with(8)  # made by hand: no strategy, so the low-rank path (not a merged-weight cache)
    calls = []
    original = layer.kinds[0].down
    monkeypatch.setattr(layer.kinds[0], "down", lambda x, a: calls.append(a.shape) or original(x, a))
    with torch.no_grad():
        layer(torch.randn(3, 6))
    assert calls == [torch.Size([sum(range(1, 9)), 6])]  # one down-product with all ranks stacked


@pytest.mark.parametrize("limit", [0, 1 << 22], ids=["low-rank-stack", "merged-weights"])
def test_cache_follows_weights_parameters_and_active_set(limit: int) -> None:
    layer = _linear_with(2).eval()
    layer.strategy = FoldedWeights(LayerPolicy(fold_limit=limit))
    x = torch.randn(4, 6)

    def fresh() -> torch.Tensor:  # reference with no cache involved
        return layer.base(x) + sum(layer.kinds[0].delta(n, x) * w for n, w in layer.live())

    with torch.no_grad():
        torch.testing.assert_close(layer(x), fresh())
        layer.set_weight("a0", -2.0)
        torch.testing.assert_close(layer(x), fresh())
        layer.adapters["a1"].lora_B.mul_(3.0)  # in-place change, as an optimizer makes
        torch.testing.assert_close(layer(x), fresh())
        layer.disable("a0")
        torch.testing.assert_close(layer(x), fresh())
        layer.base.weight.add_(0.5)  # even the base changing in place
        torch.testing.assert_close(layer(x), fresh())
    assert (not layer.strategy.cache) == (limit == 0)


def test_small_layers_run_inference_on_merged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """One base-sized product instead of base + adapters; training and big layers keep the low-rank path."""
    layer = _linear_with(3).eval()
    layer.strategy = FoldedWeights(LayerPolicy())  # as an AdaptedModel serves it
    calls = []
    original = layer.kinds[0].down
    monkeypatch.setattr(layer.kinds[0], "down", lambda x, a: calls.append(a.shape) or original(x, a))
    x = torch.randn(3, 6)
    with torch.no_grad():
        first = layer(x)
        second = layer(x)
    assert calls == [] and layer.strategy.cache
    assert torch.equal(first, second)
    layer.train()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), first)  # training mode (dropout possible): the low-rank path
    assert len(calls) == 1


def test_training_never_uses_a_stale_stack() -> None:
    layer = _linear_with(3).train()
    opt = torch.optim.SGD(layer.adapters.parameters(), lr=0.1)
    x, target = torch.randn(8, 6), torch.randn(8, 5)
    for _ in range(3):
        with torch.no_grad():
            layer(x)  # an evaluation between steps fills the cache
        loss = F.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.adapters.parameters())
        opt.step()
        with torch.no_grad():
            expected = layer.base(x) + sum(layer.kinds[0].delta(n, x) * w for n, w in layer.live())
            torch.testing.assert_close(layer(x), expected)


def test_dropout_acts_on_the_adapter_path_in_training_only() -> None:
    torch.manual_seed(0)
    layer = AdaptedModule(nn.Linear(32, 8))
    layer.add("d", LoraConfig(targets="*", rank=4, dropout=0.5), LoraLinear)
    randomize_adapters(layer)
    x = torch.randn(16, 32)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b), "dropout must change the training forward"
    with torch.no_grad():
        layer.eval()
        clean = layer(x)
        assert torch.equal(layer(x), clean)
        # the base path is never dropped: only the adapter's input is
        layer.train()
        base = layer.base(x)
        no_adapter_input = layer.adapters["d"].dropout(torch.zeros_like(x))
        assert torch.equal(no_adapter_input, torch.zeros_like(x))
        assert not torch.equal(layer(x) - base, clean - base)


def test_dropout_in_attention_adapters() -> None:
    torch.manual_seed(0)
    layer = AdaptedModule(nn.MultiheadAttention(8, 2))
    layer.add("d", LoraConfig(targets="*", rank=2, dropout=0.5), LoraMultiheadAttention)
    randomize_adapters(layer)
    x = torch.randn(5, 2, 8)
    layer.train()
    assert not torch.equal(layer(x, x, x)[0], layer(x, x, x)[0])
    layer.eval()
    assert torch.equal(layer(x, x, x)[0], layer(x, x, x)[0])


def test_b_starts_at_zero_and_init_choices() -> None:
    torch.manual_seed(0)
    layer = AdaptedModule(nn.Linear(400, 3))
    layer.add("k", LoraConfig(targets="*", rank=4, init="kaiming"), LoraLinear)
    layer.add("g", LoraConfig(targets="*", rank=4, init="gaussian"), LoraLinear)
    for name in ("k", "g"):
        assert torch.count_nonzero(layer.adapters[name].lora_B) == 0
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) == nn.Linear's init: U(-bound, bound)
    kaiming = layer.adapters["k"].lora_A
    assert kaiming.abs().max() <= bound and kaiming.abs().max() > 0.95 * bound  # fills its range
    assert abs(kaiming.std().item() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)  # a uniform's std
    assert abs(kaiming.mean().item()) < 0.1 * bound
    gaussian = layer.adapters["g"].lora_A
    assert abs(gaussian.std().item() - 0.25) < 0.02 and abs(gaussian.mean().item()) < 0.03  # N(0, 1/r)
    assert torch.linalg.matrix_rank(kaiming) == 4 and torch.linalg.matrix_rank(gaussian) == 4  # A can learn


def test_scale_and_rslora() -> None:
    assert LoraConfig(targets="*", rank=4, alpha=8).scale == 2.0
    assert LoraConfig(targets="*", rank=4, alpha=8, rslora=True).scale == 4.0
    layer = AdaptedModule(nn.Linear(3, 3))
    layer.add("r", LoraConfig(targets="*", rank=4, alpha=8, rslora=True), LoraLinear)
    randomize_adapters(layer)
    f = layer.adapters["r"]
    torch.testing.assert_close(layer.kinds[0].delta_weight("r"), 4.0 * f.lora_B @ f.lora_A)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (3, 2, 2, 2),
                                                             (1, "same", 2, 4), (2, 1, 1, 4)])
def test_conv_lora_equals_conv_with_merged_kernel(stride, padding, dilation, groups) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, (3, 5), stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer = AdaptedModule(conv)
    layer.add("c", LoraConfig(targets="*", rank=3, alpha=6), LoraConv2d)
    randomize_adapters(layer)
    x = torch.randn(2, 4, 11, 12)
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight + layer.kinds[0].delta_weight("c"), conv.bias, stride, padding, dilation, groups)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert layer.adapters["c"].lora_A.shape == (3 * groups, 4 // groups, 3, 5)
    assert layer.adapters["c"].lora_B.shape == (8, 3, 1, 1)


def test_attention_out_proj_cannot_be_targeted_alone(registry) -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    am = AdaptedModel(model, registry=registry)
    with pytest.raises(UnsupportedModuleError, match="target '0' itself"):
        am.add_adapter("x", LoraConfig(targets="0.out_proj"))
    assert am.adapters == {} and not am.layers()
    # a type match skips the out_proj (torch would never call it) and wraps the real Linear
    assert am.add_adapter("y", LoraConfig(target_types="Linear")) == ["1"]


def test_attention_with_bias_kv_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedModuleError, match="add_bias_kv"):
        LoraMultiheadAttention(nn.MultiheadAttention(8, 2, add_bias_kv=True))


@pytest.mark.parametrize("bad", [dict(rank=0), dict(rank=1.5), dict(alpha=-1), dict(dropout=1.0),
                                 dict(init="xavier"), dict(attention_projections=("q", "x")),
                                 dict(attention_projections=())])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ConfigError):
        LoraConfig(targets="*", **bad)


def test_adapters_created_under_inference_mode_still_run_and_never_serve_a_stale_stack(registry) -> None:
    """Inference tensors have no version counter, so the fused-stack cache cannot key on them."""
    from adapterhub_lite import AdaptedModel, LoraConfig

    torch.manual_seed(0)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        am = AdaptedModel(nn.Sequential(nn.Linear(8, 4)), registry=registry)
        am.add_adapter("a", LoraConfig(targets=["0"], rank=2))
        am.add_adapter("b", LoraConfig(targets=["0"], rank=1))
        layer = am.layers()["0"]
        first = am(x)
        layer.adapters["a"].lora_B.fill_(0.5)  # an in-place change the cache cannot see
        second = am(x)
    assert not torch.equal(first, second)
    with torch.no_grad():
        torch.testing.assert_close(second, layer.base(x) + layer.kinds[0].delta("a", x) + layer.kinds[0].delta("b", x))


def test_conv_training_on_merged_weights_gives_the_low_rank_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small convs train through W + delta built inside autograd: same loss and gradients as base + B(A x)."""
    from adapterhub_lite import AdapterLayer

    torch.manual_seed(0)
    layer = AdaptedModule(nn.Conv2d(3, 6, 3, padding=1))
    assert LoraConv2d.train_on_folded_weights is True
    layer.add("a", LoraConfig(targets="*", rank=2, alpha=4), LoraConv2d)
    layer.add("b", LoraConfig(targets="*", rank=3, rslora=True), LoraConv2d)
    randomize_adapters(layer)
    layer.set_weight("b", -0.5)
    x = torch.randn(2, 3, 8, 8)

    def grads(merged: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        layer.strategy = FoldedWeights(LayerPolicy(folded_training=merged))  # what an AdaptedModel serves
        layer.zero_grad()
        out = layer.train()(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in layer.adapters.named_parameters()}

    out_merged, g_merged = grads(True)
    out_low, g_low = grads(False)
    torch.testing.assert_close(out_merged, out_low, rtol=1e-5, atol=1e-5)
    for name in g_low:
        torch.testing.assert_close(g_merged[name], g_low[name], rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in layer.base.parameters())
    assert AdapterLayer.train_on_folded_weights is False  # kinds opt in; the core default is off


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_attention_per_head_mask_and_padding_match_torch_on_merged_weights(batch_first, need_weights) -> None:
    """A 3-D (N*H, L, S) attn_mask plus a key_padding_mask: our attention equals torch's on the merged weights."""
    torch.manual_seed(0)
    n, heads, L, embed = 3, 2, 4, 8  # n != heads: a mask read in the wrong (H, N) order fails
    mha = nn.MultiheadAttention(embed, heads, batch_first=batch_first).eval()
    am = AdaptedModel(nn.Sequential(mha))
    am.add_adapter("a", LoraConfig(targets=["0"], rank=2, alpha=4))
    randomize_adapters(am.model)
    x = torch.randn((n, L, embed) if batch_first else (L, n, embed))
    per_head = torch.randn(n * heads, L, L)
    pad = torch.tensor([[False, False, True, False], [False, True, False, False], [False, False, False, True]])
    layer = am.layers()["0"]
    am.policy = LayerPolicy(fold_limit=0)  # our attention code
    with torch.no_grad():
        ours, ours_weights = layer(x, x, x, attn_mask=per_head, key_padding_mask=pad, need_weights=need_weights)
        am.policy = LayerPolicy()  # torch's own attention on merged projections
        want, want_weights = layer(x, x, x, attn_mask=per_head, key_padding_mask=pad, need_weights=need_weights)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(ours_weights, want_weights, rtol=1e-5, atol=1e-5)
    else:
        assert ours_weights is None and want_weights is None
