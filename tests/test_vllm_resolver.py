"""The vLLM resolver plugin's own logic, without vLLM (tests/test_vllm.py runs it inside a real server): which
names it takes, that a name never becomes an option or a path, and that it hands vLLM a checked PEFT LoRA
folder from the zoo or refuses with the reason."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from capabilities import need_module

need_module("hf-plugin", "adapterhub_lite_hf")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from adapterhub_lite import AdaptedModel, LoraConfig  # noqa: E402
from adapterhub_lite_lycoris.config import LohaConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = str(Path(sys.executable).with_name("adapters"))


def resolver():
    """The plugin module, loaded from its folder (it is installed in vLLM's environment, not this one)."""
    spec = importlib.util.spec_from_file_location(
        "adapterhub_lite_vllm", ROOT / "plugins" / "adapterhub-lite-vllm" / "adapterhub_lite_vllm" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["--help/x", "model/--zoo", "../../etc/x", "a/b/c", "a/b=0.5", "a/b@3", "a",
                                  "a/b@v1 ", "/etc/passwd", "a/" + "b" * 200])
def test_names_that_are_not_zoo_refs_are_refused_before_anything_runs(name, tmp_path) -> None:
    plugin = resolver()
    with pytest.raises(plugin.ZooRefused, match="not a zoo adapter name"):
        asyncio.run(plugin.export_from_zoo(name, str(tmp_path), "/nonexistent/adapters", None, tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_the_export_command_keeps_the_name_one_argument() -> None:
    command = resolver().export_command("adapters", "/z", "m/n@v2", Path("/c/out"), "/served")
    assert command == ["adapters", "export", "m/n@v2", "--format", "peft", "--out", "/c/out", "--check-base",
                       "/served", "--json", "--zoo", "/z"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resolver")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1, vocab_size=32)).eval()
    model.save_pretrained(root / "llama")
    am = AdaptedModel(model, base_id="llama")
    am.add_adapter("chat", LoraConfig(targets=["model.layers.0.self_attn.q_proj"], rank=2))
    am.add_adapter("style", LohaConfig(targets=["model.layers.0.mlp.up_proj"], rank=2))
    for name in ("chat", "style"):
        am.save_adapter(name, root / f"{name}.safetensors")
    zoo = root / "zoo"
    for args in (["zoo", "add-base", "llama", "--from-pretrained", str(root / "llama")],
                 ["import", str(root / "chat.safetensors"), "--model", "llama", "--name", "chat"],
                 ["import", str(root / "style.safetensors"), "--model", "llama", "--name", "style"]):
        subprocess.run([ADAPTERS, *args, "--zoo", str(zoo)], check=True, capture_output=True)
    return {"root": root, "zoo": zoo}


def test_a_zoo_lora_becomes_a_checked_peft_folder_in_the_cache(zoo) -> None:
    plugin, cache = resolver(), zoo["root"] / "cache"
    path = asyncio.run(plugin.export_from_zoo("llama/chat", str(zoo["root"] / "llama"), ADAPTERS, str(zoo["zoo"]),
                                              cache))
    assert path.parent.parent == cache and path.name == "llama--chat@v1"
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    again = asyncio.run(plugin.export_from_zoo("llama/chat@v1", str(zoo["root"] / "llama"), ADAPTERS,
                                               str(zoo["zoo"]), cache))  # the version already in the cache
    assert again == path
    assert [p.name for p in cache.iterdir() if p.name.startswith(".export-")] == []  # scratch cleaned up


def test_a_loha_and_a_missing_adapter_are_refused_with_the_reason(zoo) -> None:
    plugin, cache = resolver(), zoo["root"] / "cache2"
    with pytest.raises(plugin.ZooRefused, match="adapters extract llama llama/style"):
        asyncio.run(plugin.export_from_zoo("llama/style", str(zoo["root"] / "llama"), ADAPTERS, str(zoo["zoo"]),
                                           cache))
    with pytest.raises(plugin.ZooRefused, match="missing"):
        asyncio.run(plugin.export_from_zoo("llama/missing", str(zoo["root"] / "llama"), ADAPTERS,
                                           str(zoo["zoo"]), cache))
    with pytest.raises(plugin.ZooRefused, match="not a local folder"):
        asyncio.run(plugin.export_from_zoo("llama/chat", "meta-llama/Llama-3-8B", ADAPTERS, str(zoo["zoo"]),
                                           cache))
    assert [p for p in cache.rglob("*") if p.is_file()] == []
