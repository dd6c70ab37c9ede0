"""Parity with Hugging Face PEFT: the same LoRA weights give the same outputs here and there.

peft is in the `test` extra, so this runs in CI instead of skipping.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from conftest import TinyNet
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig


def _peft_to_ours(peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map PEFT's LoRA keys onto ours (attention's packed in_proj pair becomes q/k/v pairs sharing A)."""
    ours: dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        if "lora_" not in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".default.weight", "")
        module, _, factor = key.rpartition(".")
        if module.endswith(".base_layer.out_proj"):
            ours[f"{module.removesuffix('.base_layer.out_proj')}.out.{factor}"] = value
        elif module == "attn":
            for slot, part in zip("qkv", value.chunk(3) if factor == "lora_B" else (value,) * 3):
                ours[f"attn.{slot}.{factor}"] = part
        else:
            ours[f"{module}.{factor}"] = value
    return ours


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("targets", [["fc1", "fc2"], ["conv", "fc2"], ["attn"], ["conv", "attn", "fc1", "fc2"]])
def test_same_weights_same_outputs_as_peft(targets, rslora, registry) -> None:
    torch.manual_seed(0)
    base = TinyNet().eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=3, lora_alpha=5, target_modules=targets, use_rslora=rslora, init_lora_weights=False)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            if "out_proj.lora_B" in name:
                param.zero_()  # PEFT applies the out_proj delta twice (see test_peft_out_proj_bug below)

    am = AdaptedModel(base, registry=registry)
    am.add_adapter("default", LoraConfig(targets=targets, rank=3, alpha=5, rslora=rslora))
    am.load_adapter_state("default", _peft_to_ours(theirs.state_dict()))

    x = torch.randn(4, 3, 8, 8, generator=gen)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(am(x), expected, rtol=1e-5, atol=1e-6)
        theirs.merge_adapter()
        am.fold()
        torch.testing.assert_close(am(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_parity_covers_every_adapter_tensor(registry) -> None:
    base = TinyNet()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["conv", "attn", "fc1"]))
    am = AdaptedModel(base, registry=registry)
    am.add_adapter("default", LoraConfig(targets=["conv", "attn", "fc1"], rank=2))
    mapped = _peft_to_ours(theirs.state_dict())
    assert mapped.keys() == am.adapter_state("default").keys()
    assert isinstance(base.attn, nn.Module)


class Attend(nn.Module):
    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def test_peft_out_proj_bug_and_our_ground_truth(registry) -> None:
    """PEFT 0.21's MultiheadAttention adds the out_proj LoRA delta twice (huggingface/peft#3774).
    Ours equals the ground truth: a plain attention with W_out + dW set by hand."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).eval()
    reference = copy.deepcopy(mha)
    am = AdaptedModel(Attend(mha), registry=registry)
    am.add_adapter("default", LoraConfig(targets=["attn"], rank=2, alpha=2, attention_projections=("out",)))
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in am.adapter_state("default").items()}
    am.load_adapter_state("default", state)
    with torch.no_grad():
        reference.out_proj.weight += state["attn.out.lora_B"] @ state["attn.out.lora_A"]
        x = torch.randn(5, 3, 8, generator=gen)
        ours = am(x)
        torch.testing.assert_close(ours, reference(x, x, x)[0], rtol=1e-5, atol=1e-5)

        theirs = peft.get_peft_model(Attend(copy.deepcopy(mha)), peft.LoraConfig(
            r=2, lora_alpha=2, target_modules=["attn"])).eval()
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                key = "attn.out." + ("lora_A" if "lora_A" in name else "lora_B")
                param.copy_(state[key] if "out_proj" in name else torch.zeros_like(param))
        base = mha(x, x, x)[0]
        ratio = (theirs(x) - base) / (ours - base)
        peft_doubles = torch.allclose(ratio, torch.full_like(ratio, 2.0), atol=1e-3)
        peft_fixed = torch.allclose(theirs(x), ours, rtol=1e-5, atol=1e-5)
    assert peft_doubles or peft_fixed  # once PEFT is fixed, the two agree
