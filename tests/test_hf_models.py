"""Your own model into the zoo (`adapters zoo add-base`, the hf plugin's transformers/diffusers/timm sources),
then apply, merge, export and import on it, through the command line. Models are tiny and built from configs
or saved locally first (nothing is downloaded)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from capabilities import need_module
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

need_module("hf-plugin", "adapterhub_lite_hf")
import peft  # noqa: E402
import timm  # noqa: E402
from test_hostile import tree  # noqa: E402
from test_sd_interop import _kohya_file, tiny_text_encoder, tiny_unet  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from adapterhub_lite.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()  # tied head: lm_head is wte
    gpt2.save_pretrained(root / "gpt2")
    (root / "gpt2.json").write_text(json.dumps(gpt2.config.to_dict()))
    pipeline = root / "sd"
    tiny_unet().save_pretrained(pipeline / "unet")
    tiny_text_encoder().save_pretrained(pipeline / "text_encoder")
    (pipeline / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "unet": ["diffusers",
        "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"], "vae": [None, None],
        "scheduler": [None, None], "tokenizer": [None, None]}))
    (root / "unet.json").write_text((pipeline / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2)
    (root / "vit").mkdir()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit" / "model.safetensors"))
    vit_config = {"architecture": "vit_tiny_patch16_224", "num_classes": 5, "model_args": {"img_size": 32, "depth": 2}}
    (root / "vit" / "config.json").write_text(json.dumps(vit_config))
    (root / "pickled").mkdir()
    (root / "pickled" / "config.json").write_text((root / "gpt2" / "config.json").read_text())
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle, and never opened")
    (root / "rejected.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 30, "n_head": 4}))
    return root


@pytest.fixture
def adapters(tmp_path):
    runner = CliRunner()
    zoo = tmp_path / "zoo"

    def run(*args: str, code: int = 0):
        result = runner.invoke(cli, [*args, "--zoo", str(zoo)])
        assert result.exit_code == code, (args, result.output, result.exception)
        assert "Traceback" not in result.output
        return result

    run.zoo = zoo
    return run


def _logits(path: Path) -> torch.Tensor:
    return load_file(str(path))["logits"]


def test_a_gpt2_from_its_folder_through_the_zoo(folders, adapters, tmp_path) -> None:
    """add-base, then a PEFT adapter peft made: import, apply on token ids, merge, fuse, export both ways."""
    added = json.loads(adapters("zoo", "add-base", "my-gpt2", "--from-pretrained", str(folders / "gpt2"),
                                "--json").stdout)
    assert added["source"] == "transformers" and added["config"]["class"] == "GPT2LMHeadModel"
    gpt2 = GPT2LMHeadModel.from_pretrained(folders / "gpt2").eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, str(tmp_path / "ids.safetensors"))
    adapters("apply", "my-gpt2", "--inputs", str(tmp_path / "ids.safetensors"),
             "--out", str(tmp_path / "b.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(_logits(tmp_path / "b.safetensors"), gpt2(ids).logits, rtol=0, atol=0)

    expected = {}
    for name, targets in {"chat": ["c_attn", "c_proj"], "tokens": ["wte"]}.items():
        theirs = peft.get_peft_model(copy.deepcopy(gpt2), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True, init_lora_weights=False)).eval()
        theirs.save_pretrained(tmp_path / f"{name}-peft")
        with torch.no_grad():
            expected[name] = theirs(ids).logits
        adapters("import", str(tmp_path / f"{name}-peft"), "--format", "peft", "--model", "my-gpt2", "--name", name)
        out = tmp_path / f"{name}.safetensors"
        adapters("apply", f"my-gpt2/{name}", "--inputs", str(tmp_path / "ids.safetensors"), "--out", str(out))
        torch.testing.assert_close(_logits(out), expected[name], rtol=1e-5, atol=1e-5)

    # GPT-2's lm_head is its token table: folding the token-table adapter in would change the head too
    before = tree(adapters.zoo)
    for stream in ([], ["--stream"]):
        refused = adapters("merge", "my-gpt2", "tokens", "--into-base", "--out", "fused", *stream, code=1)
        assert "tied to 'lm_head.weight'" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert tree(adapters.zoo) == before
    expected = expected["chat"]

    adapters("export", "my-gpt2/chat", "--format", "peft", "--out", str(tmp_path / "back"))
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(gpt2), tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-5, atol=1e-5)

    adapters("merge", "my-gpt2", "chat=0.5", "--method", "linear", "--out", "half")
    adapters("merge", "my-gpt2", "chat", "--into-base", "--out", "fused")  # the tied head is written once each
    adapters("export", "my-gpt2/fused", "--format", "merged", "--out", str(tmp_path / "fused.safetensors"))
    bare = GPT2LMHeadModel(gpt2.config).eval()
    bare.load_state_dict(load_file(str(tmp_path / "fused.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(bare(ids).logits, expected, rtol=1e-4, atol=1e-4)
    listing = adapters("zoo", "list", "my-gpt2").stdout
    assert all(f"my-gpt2/{n}@v1" in listing for n in ("base", "chat", "tokens", "half", "fused"))


def test_export_checks_the_folder_another_engine_will_serve(folders, adapters, tmp_path) -> None:
    """`export --check-base DIR`: written only when DIR holds exactly the adapter's base weights (what the vLLM
    resolver asks before serving an export); a folder one weight away and a missing folder are one line each,
    with nothing written."""
    adapters("zoo", "add-base", "my-gpt2", "--from-pretrained", str(folders / "gpt2"))
    gpt2 = GPT2LMHeadModel.from_pretrained(folders / "gpt2").eval()
    peft.get_peft_model(copy.deepcopy(gpt2), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                                              init_lora_weights=False)).save_pretrained(tmp_path / "p")
    adapters("import", str(tmp_path / "p"), "--format", "peft", "--model", "my-gpt2", "--name", "chat")
    info = json.loads(adapters("export", "my-gpt2/chat", "--format", "peft", "--out", str(tmp_path / "ok"),
                               "--check-base", str(folders / "gpt2"), "--json").stdout)
    card = json.loads(adapters("zoo", "show", "my-gpt2/base", "--json").stdout)
    assert info["checked_base"]["fingerprint"] == card["fingerprint"] and (tmp_path / "ok").is_dir()
    with torch.no_grad():
        gpt2.transformer.h[1].mlp.c_proj.weight[3, 4] += 1e-3
    gpt2.save_pretrained(tmp_path / "nudged")
    before = tree(adapters.zoo)
    for folder, says in ((tmp_path / "nudged", "does not hold the weights of my-gpt2/base@v1"),
                         (tmp_path / "nowhere", "nothing at"), (folders / "gpt2" / "config.json", "not a folder")):
        refused = adapters("export", "my-gpt2/chat", "--format", "peft", "--out", str(tmp_path / "no"),
                           "--check-base", str(folder), code=1)
        assert says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "no").exists() and tree(adapters.zoo) == before


def test_an_sd_pipeline_folder_and_its_kohya_lora_through_the_zoo(folders, adapters, tmp_path) -> None:
    added = json.loads(adapters("zoo", "add-base", "sd-tiny", "--from-pretrained", str(folders / "sd"),
                                "--json").stdout)
    assert added["source"] == "diffusers" and sorted(added["config"]["pipeline"]) == ["text_encoder", "unet"]
    _kohya_file(tmp_path / "a1111.safetensors", seed=3, rank=4, alpha=2.0)
    adapters("import", str(tmp_path / "a1111.safetensors"), "--format", "kohya", "--model", "sd-tiny",
             "--name", "style")
    adapters("export", "sd-tiny/style", "--format", "kohya", "--out", str(tmp_path / "again.safetensors"))
    written, read = load_file(str(tmp_path / "again.safetensors")), load_file(str(tmp_path / "a1111.safetensors"))
    assert written.keys() == read.keys() and all(torch.equal(written[k], read[k]) for k in read)

    inputs = {"sample": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([3]),
              "encoder_hidden_states": torch.randn(1, 5, 16)}
    save_file(inputs, str(tmp_path / "in.safetensors"))
    adapters("apply", "sd-tiny/style=0.5", "--inputs", str(tmp_path / "in.safetensors"), "--module", "unet",
             "--out", str(tmp_path / "noise.safetensors"))
    from adapterhub_lite import AdaptedModel, get_registry
    from adapterhub_lite_hf.sources import PipelineModules

    am = AdaptedModel(PipelineModules({"unet": tiny_unet(), "text_encoder": tiny_text_encoder()}),
                      registry=get_registry())
    am.add_bundle(get_registry().get_format("kohya").import_(tmp_path / "a1111.safetensors", am), "style")
    am.set_active(["style"], [0.5])
    with torch.no_grad():
        expected = am.model.unet(**inputs).sample
    torch.testing.assert_close(load_file(str(tmp_path / "noise.safetensors"))["sample"], expected, rtol=1e-5, atol=1e-6)


def test_bases_from_configs_are_reproducible_and_timm_folders_load(folders, adapters, tmp_path) -> None:
    one = json.loads(adapters("zoo", "add-base", "unet-a", "--config", str(folders / "unet.json"), "--json").stdout)
    two = json.loads(adapters("zoo", "add-base", "unet-b", "--config", str(folders / "unet.json"), "--json").stdout)
    assert one["fingerprint"] == two["fingerprint"] and one["config"]["class"] == "UNet2DConditionModel"
    shifted = {k: v + 0.5 if v.is_floating_point() else v for k, v in tiny_unet().state_dict().items()}
    weights = tmp_path / "shifted.safetensors"
    save_file(shifted, str(weights))
    loaded = json.loads(adapters("zoo", "add-base", "unet-w", "--config", str(folders / "unet.json"), "--weights",
                                 str(weights), "--json").stdout)
    assert loaded["fingerprint"] != one["fingerprint"] and loaded["recipe"]["weights"] == str(weights)
    stored = load_file(str(adapters.zoo / "unet-w" / "base" / "v1" / "model.safetensors"))
    assert stored.keys() == shifted.keys() and all(torch.equal(stored[k], shifted[k]) for k in shifted)
    wrong = adapters("zoo", "add-base", "unet-x", "--config", str(folders / "gpt2.json"), "--weights", str(weights),
                     code=1)
    assert "does not fit model 'GPT2LMHeadModel'" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    vit = json.loads(adapters("zoo", "add-base", "vit", "--from-pretrained", str(folders / "vit"), "--json").stdout)
    from_config = json.loads(adapters("zoo", "add-base", "vit-c", "--config", str(folders / "vit" / "config.json"),
                                      "--weights", str(folders / "vit" / "model.safetensors"), "--json").stdout)
    assert from_config["fingerprint"] == vit["fingerprint"] and from_config["source"] == "timm"
    assert vit["source"] == "timm" and vit["config"]["architecture"] == "vit_tiny_patch16_224"
    image = torch.randn(2, 3, 32, 32)
    save_file({"x": image}, str(tmp_path / "img.safetensors"))
    adapters("apply", "vit", "--inputs", str(tmp_path / "img.safetensors"), "--out", str(tmp_path / "o.safetensors"))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2).eval()
    model.load_state_dict(load_file(str(folders / "vit" / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(load_file(str(tmp_path / "o.safetensors"))["output"], model(image), rtol=0, atol=0)
    # no task: training says so in one line
    refused = adapters("train", "vit", "x", "--targets", "head", code=1)
    assert "registers no task" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["--from-pretrained", "{root}/nowhere"], "nothing at {root}/nowhere"),
    (["--from-pretrained", "{root}/pickled"], "holds only pickled weights (pytorch_model.bin), which are never "
                                              "unpickled here: convert them to safetensors"),
    (["--config", "{root}/rejected.json"], "transformers rejects {root}/rejected.json: ValueError"),
    (["--from-pretrained", "{root}/gpt2/config.json"], "a config file goes to --config"),
    (["--config", "{root}/gpt2.json", "--source", "nosuch"], "unknown model source 'nosuch'"),
])
def test_bad_model_input_is_one_line_and_leaves_the_zoo_as_it_was(folders, adapters, args, message) -> None:
    adapters("zoo", "add-base", "kept", "--config", str(folders / "gpt2.json"))
    before = tree(adapters.zoo)
    result = adapters("zoo", "add-base", "new", *[a.format(root=folders) for a in args], code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(root=folders) in lines[0], result.stderr
    assert tree(adapters.zoo) == before


def test_sdxl_names_on_the_sd1_shaped_zoo_base_name_the_first_unmatched_key(folders, adapters, tmp_path) -> None:
    adapters("zoo", "add-base", "sd-tiny", "--from-pretrained", str(folders / "sd"))
    flat = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{flat}.lora_down.weight": torch.randn(2, 8), f"{flat}.lora_up.weight": torch.randn(8, 2),
               f"{flat}.alpha": torch.tensor(2.0)}, str(tmp_path / "xl.safetensors"))
    before = tree(adapters.zoo)
    result = adapters("import", str(tmp_path / "xl.safetensors"), "--format", "kohya", "--model", "sd-tiny",
                      "--name", "xl", code=1)
    assert f"'{flat}' names no module of this model" in result.stderr and len(result.stderr.splitlines()) == 1
    assert tree(adapters.zoo) == before



def test_a_hub_id_is_downloaded_only_when_its_source_is_named_and_failures_are_one_line(
        folders, adapters, monkeypatch, tmp_path) -> None:
    """The download path users with a network take, tried against a dead endpoint and offline (never a real
    download here)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    not_named = adapters("zoo", "add-base", "g", "--from-pretrained", "someone/tiny-gpt2", code=1)
    assert "to download a Hub model, give its id owner/name and its source" in not_named.stderr
    dead = adapters("zoo", "add-base", "g", "--from-pretrained", "someone/tiny-gpt2", "--source", "transformers",
                    code=1)
    assert "could not download someone/tiny-gpt2 from the Hub: check the name, the network" in dead.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = adapters("zoo", "add-base", "g", "--from-pretrained", "someone/tiny-gpt2@main", "--source", "timm",
                       code=1)
    assert "HF_HUB_OFFLINE is set and it is not in the local cache" in offline.stderr
    for result in (not_named, dead, offline):
        assert len(result.stderr.strip().splitlines()) == 1
    assert not adapters.zoo.exists() or not any(adapters.zoo.iterdir())
