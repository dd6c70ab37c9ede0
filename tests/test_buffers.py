"""Merge buffers: big ones on huge pages (same results), and merges into them stay exact."""

from __future__ import annotations

import mmap
import sys

import pytest
from conftest import reference_delta
import torch
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig
from adapterhub_lite.buffers import empty_weight_like
from adapterhub_lite.buffers import HUGE_PAGE, HUGE_PAGES_FROM


def test_small_tensors_come_from_torch_and_big_ones_from_an_aligned_mapping() -> None:
    small = torch.ones(16, 16)
    out = empty_weight_like(small)
    assert out.shape == small.shape and out.dtype == small.dtype and out.is_contiguous()
    big = torch.ones(HUGE_PAGES_FROM // 4 + 1024, dtype=torch.float32).view(-1, 1024)
    out = empty_weight_like(big)
    assert out.shape == big.shape and out.dtype == big.dtype and out.is_contiguous()
    out.copy_(big)
    assert torch.equal(out, big)
    if sys.platform == "linux" and hasattr(mmap, "MADV_HUGEPAGE"):
        assert out.data_ptr() % HUGE_PAGE == 0
    half = empty_weight_like(big.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.shape == big.shape


@pytest.mark.parametrize("keep", [True, False])
def test_big_layer_merge_is_exact_and_unmerge_bit_exact(keep, monkeypatch) -> None:
    from adapterhub_lite import LayerPolicy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 1100))  # 9 MB of weight: above the huge-page threshold
    original = model[0].weight.detach().clone()
    am = AdaptedModel(model, policy=LayerPolicy(keep_fold_buffers=keep))
    am.add_adapter("a", LoraConfig(targets=["0"], rank=4, alpha=8))
    layer = am.layers()["0"]
    with torch.no_grad():
        layer.adapters["a"].lora_B.normal_()
    want = original + reference_delta(layer, "a")["weight"].float()
    for _ in range(3):
        am.fold()
        torch.testing.assert_close(layer.base.weight, want, rtol=1e-5, atol=1e-5)
        am.unfold()
        assert torch.equal(layer.base.weight, original)
    am.fold()
    kept = layer.base.weight.detach()  # someone holds the merged tensor: the next merge must not write into it
    snapshot = kept.clone()
    am.unfold()
    am.set_weight("a", 0.5)
    am.fold()
    assert torch.equal(kept, snapshot)
    torch.testing.assert_close(layer.base.weight, original + 0.5 * reference_delta(layer, "a")["weight"].float(),
                               rtol=1e-5, atol=1e-5)
