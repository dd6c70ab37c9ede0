"""Stable-Diffusion-shaped interop with the real diffusers package, on a tiny UNet2DConditionModel and a tiny CLIP
text encoder built from configs (random weights, nothing downloaded).

diffusers is the reference: a file is loaded by diffusers' own loaders (`lora_state_dict`, `load_lora_into_unet`,
`load_lora_into_text_encoder`, `set_adapters`) into fresh copies of the same models, and ours must give the same
UNet and text-encoder outputs.
"""

from __future__ import annotations

import json

import pytest
from capabilities import need_module
import torch
from safetensors import safe_open
from safetensors.torch import save_file

diffusers = need_module("diffusers", "diffusers")  # the hf plugin's dependency, installed by the README's command
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders import StableDiffusionLoraLoaderMixin as SD  # noqa: E402
from diffusers.utils.peft_utils import set_weights_and_activate_adapters  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from adapterhub_lite import AdaptedModel, LoraConfig, get_registry  # noqa: E402
from adapterhub_lite_hf.sources import PipelineModules  # noqa: E402

# kohya's default SD1 targets: the attention and feed-forward Linears of the UNet's transformer blocks and
# proj_in/proj_out, every Linear of the CLIP text encoder's layers
UNET_TARGETS = ["unet.*.to_q", "unet.*.to_k", "unet.*.to_v", "unet.*.to_out.0", "unet.*.ff.net.0.proj",
                "unet.*.ff.net.2", "unet.*.proj_in", "unet.*.proj_out"]
TE_TARGETS = ["text_encoder.*.q_proj", "text_encoder.*.k_proj", "text_encoder.*.v_proj", "text_encoder.*.out_proj",
              "text_encoder.*.fc1", "text_encoder.*.fc2"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4).eval()


def tiny_text_encoder() -> CLIPTextModel:
    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=2, max_position_embeddings=32, projection_dim=16,
                                        bos_token_id=0, eos_token_id=2, pad_token_id=1)).eval()


def ours() -> AdaptedModel:
    return AdaptedModel(PipelineModules({"unet": tiny_unet(), "text_encoder": tiny_text_encoder()}),
                        registry=get_registry())


INPUTS = {"ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(2)),
          "x": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)),
          "t": torch.tensor([10, 500]),
          "context": torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(4))}


def outputs(unet, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's hidden states on token ids, the UNet's noise prediction on a fixed context."""
    with torch.no_grad():
        hidden = text_encoder(INPUTS["ids"]).last_hidden_state
        noise = unet(INPUTS["x"], INPUTS["t"], encoder_hidden_states=INPUTS["context"]).sample
    return noise, hidden


def randomized(am: AdaptedModel, name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in am.adapter_parameters(name):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def diffusers_loaded(files: dict[str, str]) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Fresh copies of the models with each file loaded by diffusers under its adapter name."""
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    for name, path in files.items():  # as StableDiffusionPipeline.load_lora_weights does
        state, alphas, metadata = SD.lora_state_dict(path, return_lora_metadata=True)
        SD.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=metadata)
        if any(k.startswith("text_encoder.") for k in state):
            SD.load_lora_into_text_encoder(state, alphas, text_encoder, adapter_name=name, metadata=metadata)
    return unet, text_encoder


def import_file(am: AdaptedModel, path, fmt: str, name: str) -> None:
    bundle = am.registry.get_format(fmt).import_(path, am)
    am.add_bundle(bundle, name)


# LoCon-style: the UNet's convs too (3x3 resnet convs, the shortcut, down/upsamplers, conv_in/out, time embedding)
CONV_TARGETS = ["unet.*.resnets.*.conv1", "unet.*.resnets.*.conv2", "unet.*.time_emb_proj", "unet.*.conv_shortcut",
                "unet.conv_in", "unet.conv_out", "unet.*.downsamplers.0.conv", "unet.*.upsamplers.0.conv"]


@pytest.mark.parametrize("targets", [UNET_TARGETS + TE_TARGETS, UNET_TARGETS + CONV_TARGETS + TE_TARGETS],
                         ids=["attention-and-text", "with-convs"])
def test_our_kohya_export_uses_sd_names_and_loads_in_diffusers_with_the_same_outputs(tmp_path, targets) -> None:
    am = ours()
    am.add_adapter("style", LoraConfig(targets=targets, rank=4, alpha=2))
    randomized(am, "style", 0)
    path = am.export("style", format="kohya", dest=tmp_path / "style.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.alpha" in keys
    assert not any(k.startswith(("lora_unet_unet", "lora_te_encoder")) for k in keys)

    unet, text_encoder = diffusers_loaded({"style": str(path)})
    base = outputs(tiny_unet(), tiny_text_encoder())
    for scale in (1.0, 0.6):
        am.set_active(["style"], [scale])
        unet.set_adapters(["style"], weights=[scale])
        set_weights_and_activate_adapters(text_encoder, ["style"], [scale])
        expected, got = outputs(unet, text_encoder), outputs(am.model.unet, am.model.text_encoder)
        for theirs, mine, plain in zip(expected, got, base):
            assert (mine - plain).abs().max() > 1e-2  # the adapter does change the outputs
            torch.testing.assert_close(mine, theirs, **TOL)


def _peft_lora(model, targets: list[str], rank: int, alpha: float, seed: int) -> dict:
    """A LoRA injected by peft itself (as diffusers' training scripts do), random factors; its config."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    config = PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return config.to_dict()


@pytest.mark.parametrize("with_metadata", [True, False])
def test_a_lora_diffusers_saves_imports_with_the_same_outputs(tmp_path, with_metadata) -> None:
    """save_lora_weights with PEFT state dicts (unet./text_encoder. prefixes); alpha != rank, so the metadata
    matters: without it diffusers (and we) read every module at scale 1."""
    from peft import get_peft_model_state_dict

    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    unet_config = _peft_lora(unet, ["to_q", "to_v", "to_out.0", "proj_in"], rank=4, alpha=8, seed=5)
    text_config = _peft_lora(text_encoder, ["q_proj", "out_proj", "fc1"], rank=2, alpha=1, seed=6)
    metadata = {"unet_lora_adapter_metadata": unet_config, "text_encoder_lora_adapter_metadata": text_config} \
        if with_metadata else {}
    SD.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(unet),
                         text_encoder_lora_layers=get_peft_model_state_dict(text_encoder), **metadata)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        assert any(k.startswith("unet.") for k in f.keys()) and any(k.startswith("text_encoder.") for k in f.keys())
        assert ("lora_adapter_metadata" in (f.metadata() or {})) == with_metadata

    am = ours()
    import_file(am, tmp_path, "diffusers", "saved")
    expected = outputs(*diffusers_loaded({"saved": str(path)}))
    for theirs, mine in zip(expected, outputs(am.model.unet, am.model.text_encoder)):
        torch.testing.assert_close(mine, theirs, **TOL)
    if with_metadata:  # and diffusers' outputs are the trained ones: the adapters as PEFT built them
        for theirs, trained in zip(expected, outputs(unet, text_encoder)):
            torch.testing.assert_close(theirs, trained, **TOL)


def _kohya_file(path, seed: int, rank: int, alpha: float) -> None:
    """A kohya/A1111 SD file written from kohya's naming rules alone (not by our exporter): lora_unet_<diffusers
    UNet path>, lora_te_text_model_<CLIP path>, '.' -> '_'."""
    gen = torch.Generator().manual_seed(seed)
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    modules = {f"lora_unet_{n.replace('.', '_')}": m for n, m in unet.named_modules()
               if n.endswith(("attn1.to_q", "attn1.to_k", "attn2.to_v", "to_out.0", "ff.net.2"))}
    modules.update({f"lora_te_text_model_{n.replace('.', '_')}": m for n, m in text_encoder.named_modules()
                    if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1"))})
    tensors = {}
    for flat, module in modules.items():
        tensors[f"{flat}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.3
        tensors[f"{flat}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.3
        tensors[f"{flat}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(alpha)})


def test_a_kohya_sd_file_imports_with_the_same_outputs_as_diffusers(tmp_path) -> None:
    path = tmp_path / "a1111.safetensors"
    _kohya_file(path, seed=7, rank=4, alpha=1.0)
    am = ours()
    import_file(am, path, "kohya", "a1111")
    expected = outputs(*diffusers_loaded({"a1111": str(path)}))
    for theirs, mine, plain in zip(expected, outputs(am.model.unet, am.model.text_encoder),
                                   outputs(tiny_unet(), tiny_text_encoder())):
        assert (mine - plain).abs().max() > 1e-2
        torch.testing.assert_close(mine, theirs, **TOL)


def test_stacked_sd_loras_with_weights_give_diffusers_set_adapters_outputs(tmp_path) -> None:
    files = {"one": tmp_path / "one.safetensors", "two": tmp_path / "two.safetensors"}
    _kohya_file(files["one"], seed=8, rank=4, alpha=2.0)
    _kohya_file(files["two"], seed=9, rank=2, alpha=2.0)
    am = ours()
    for name, path in files.items():
        import_file(am, path, "kohya", name)
    weights = [0.7, -0.4]
    am.set_active(["one", "two"], weights)
    unet, text_encoder = diffusers_loaded({n: str(p) for n, p in files.items()})
    unet.set_adapters(["one", "two"], weights=weights)
    set_weights_and_activate_adapters(text_encoder, ["one", "two"], weights)
    for theirs, mine in zip(outputs(unet, text_encoder), outputs(am.model.unet, am.model.text_encoder)):
        torch.testing.assert_close(mine, theirs, **TOL)


def test_sdxl_names_on_an_sd1_shaped_model_are_refused_by_the_first_unmatched_key(tmp_path) -> None:
    from adapterhub_lite import IncompatibleAdapterError

    tensors = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(2, 8),
               "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(8, 2),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
                   torch.randn(2, 8),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight":
                   torch.randn(8, 2)}
    save_file(tensors, str(tmp_path / "xl.safetensors"))
    am = ours()
    with pytest.raises(IncompatibleAdapterError, match="'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q'"
                                                       " names no module of this model.*nothing was imported"):
        am.registry.get_format("kohya").import_(tmp_path / "xl.safetensors", am)
    assert not am.adapters


def test_a_diffusers_file_for_parts_the_model_lacks_is_refused(tmp_path) -> None:
    from adapterhub_lite import IncompatibleAdapterError

    save_file({"text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 16),
               "text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(16, 2)},
              str(tmp_path / "x.safetensors"), metadata={"lora_adapter_metadata": json.dumps({})})
    am = ours()
    with pytest.raises(IncompatibleAdapterError, match="pipeline's text_encoder_2, which this model does not hold"):
        am.registry.get_format("diffusers").import_(tmp_path / "x.safetensors", am)


@pytest.mark.parametrize("policy", ["default", "cache-off"])
def test_a_training_step_on_a_kohya_sd_file_matches_diffusers(tmp_path, policy) -> None:
    """Parity beyond the merged path (issue 31, item 7): the same A1111 file loaded by diffusers and by us, in
    training mode with autograd on: the same outputs, and one SGD step on the same loss gives the same models
    (the gradients agree), with our merged-weight cache on or off."""
    from adapterhub_lite import LayerPolicy

    path = tmp_path / "a1111.safetensors"
    _kohya_file(path, seed=7, rank=4, alpha=1.0)
    am = ours()
    am.policy = LayerPolicy(fold_limit=0) if policy == "cache-off" else LayerPolicy()
    import_file(am, path, "kohya", "a1111")
    unet, text_encoder = diffusers_loaded({"a1111": str(path)})
    theirs_params = [p for m in (unet, text_encoder) for n, p in m.named_parameters() if "lora_" in n]
    for p in theirs_params:
        p.requires_grad_(True)
    steps = []
    for models, params in (((unet, text_encoder), theirs_params),
                           ((am.model.unet, am.model.text_encoder), am.trainable_parameters())):
        for model in models:
            model.train()
        hidden = models[1](INPUTS["ids"]).last_hidden_state
        noise = models[0](INPUTS["x"], INPUTS["t"], encoder_hidden_states=INPUTS["context"]).sample
        (noise.square().mean() + hidden.square().mean()).backward()
        torch.optim.SGD(params, lr=20.0).step()  # a long step: a gradient that differs shows beyond the tolerance
        steps.append((noise.detach(), hidden.detach()))
        for model in models:
            model.eval()
    assert len(params) == len(theirs_params)  # the same factors train on both sides
    for theirs, mine in zip(*steps):
        torch.testing.assert_close(mine, theirs, **TOL)
    after = outputs(unet, text_encoder), outputs(am.model.unet, am.model.text_encoder)
    for theirs, mine, before in zip(*after, steps[0]):
        assert (theirs - before).abs().max() > 2e-3  # the step changed the models beyond the tolerance
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
