"""Fusing adapters into a base checkpoint tensor by tensor (`--stream`) gives the in-memory fuse bit for bit."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import seed_adapter, seed_base
from safetensors.torch import load_file

from adapterhub_lite import IncompatibleAdapterError, LoraConfig, get_registry, state_fingerprint
from adapterhub_lite.cli import cli
from adapterhub_lite.zoo.fuse import fuse_streamed, fused_model
from adapterhub_lite.zoo.streaming import file_fingerprint
from adapterhub_lite.zoo import Zoo


@pytest.fixture
def zoo_with_stack(tmp_path) -> tuple[Zoo, list[str]]:
    registry, zoo = get_registry(), Zoo(tmp_path / "zoo")
    base = seed_base(registry, zoo, "richboynet")
    seed_adapter(registry, zoo, base, "style", LoraConfig(targets=["linear1", "linear2"], rank=4), seed=1)
    seed_adapter(registry, zoo, base, "task", LoraConfig(targets=["linear2"], rank=2), seed=2)
    ia3 = registry.config_class("ia3")(targets=["linear2"])  # another family on the same module
    seed_adapter(registry, zoo, base, "scales", ia3, seed=3)
    return zoo, ["richboynet/style=0.7", "richboynet/task=-0.5", "richboynet/scales"]


def test_streamed_fuse_equals_the_in_memory_fuse(zoo_with_stack, tmp_path) -> None:
    zoo, refs = zoo_with_stack
    registry = get_registry()
    info = fuse_streamed(registry, zoo, refs, tmp_path / "fused.safetensors")
    streamed = load_file(tmp_path / "fused.safetensors")
    in_memory = {k: v.detach().contiguous() for k, v in fused_model(registry, zoo, refs).state_dict().items()}
    assert set(streamed) == set(in_memory) and info["modules"] == 2
    for name, tensor in in_memory.items():
        assert torch.equal(streamed[name], tensor), name
    base = load_file(zoo.resolve("richboynet").weights)
    assert not torch.equal(streamed["linear2.weight"], base["linear2.weight"])  # the fuse did change it
    assert torch.equal(streamed["linear3.weight"], base["linear3.weight"])  # and copied the rest through
    assert info["fingerprint"] == state_fingerprint(in_memory) == file_fingerprint(tmp_path / "fused.safetensors")


def test_an_adapter_of_another_base_is_refused_per_module(zoo_with_stack, tmp_path) -> None:
    """The stream never loads the whole base, so each adapted module is checked against the fingerprint the
    adapter recorded: a base checkpoint swapped under the zoo's card is caught."""
    import shutil

    zoo, refs = zoo_with_stack
    registry = get_registry()
    other = seed_base(registry, zoo, "richboynet", seed=5, name="other")
    shutil.copyfile(other.weights, zoo.resolve("richboynet").weights)  # same shapes, other values
    with pytest.raises(IncompatibleAdapterError, match="was trained on another base: module 'linear1'"):
        fuse_streamed(registry, zoo, refs, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_the_cli_streams_export_and_into_base(zoo_with_stack, tmp_path) -> None:
    zoo, refs = zoo_with_stack
    runner = CliRunner()
    out = tmp_path / "merged.safetensors"
    result = runner.invoke(cli, ["export", *refs, "--format", "merged", "--stream", "--out", str(out),
                                 "--zoo", str(zoo.root)])
    assert result.exit_code == 0, result.output
    in_memory = tmp_path / "memory.safetensors"
    result = runner.invoke(cli, ["export", *refs, "--format", "merged", "--out", str(in_memory), "--zoo", str(zoo.root)])
    assert result.exit_code == 0, result.output
    assert file_fingerprint(out) == file_fingerprint(in_memory)
    result = runner.invoke(cli, ["fuse", "richboynet", *refs, "--stream", "--out", "fused",
                                 "--zoo", str(zoo.root), "--json"])
    assert result.exit_code == 0, result.output
    entry = zoo.resolve("richboynet/fused")
    assert entry.card["fingerprint"] == file_fingerprint(out) == file_fingerprint(entry.weights)
    assert entry.card["parents"][0] == "richboynet/base@v1" and entry.card["recipe"]["streamed"] is True
    result = runner.invoke(cli, ["merge", "richboynet", *refs, "--into-base", "--stream", "--eval", "--out", "f2",
                                 "--zoo", str(zoo.root)])
    assert result.exit_code != 0 and "--stream" in result.output and "richboynet/f2" not in str(list(zoo.scan()))


def test_a_base_over_the_threshold_streams_by_default(zoo_with_stack, tmp_path, monkeypatch) -> None:
    import json

    zoo, refs = zoo_with_stack
    runner = CliRunner()
    args = ["export", *refs, "--format", "merged", "--zoo", str(zoo.root), "--json", "--out"]
    below = json.loads(runner.invoke(cli, [*args, str(tmp_path / "a.safetensors")]).stdout)
    monkeypatch.setenv("ADAPTERS_STREAM_ABOVE", "1000")  # bytes: richboynet's 11 MB checkpoint is over it
    above = json.loads(runner.invoke(cli, [*args, str(tmp_path / "b.safetensors")]).stdout)
    assert "streamed" not in below and above["streamed"] is True
    assert below["fingerprint"] == above["fingerprint"]
    result = runner.invoke(cli, ["export", *refs, "--format", "peft", "--stream", "--out", str(tmp_path / "p"),
                                 "--zoo", str(zoo.root)])
    assert result.exit_code == 1 and "cannot be streamed" in result.output


def test_each_adapter_tensor_is_read_once_module_by_module(zoo_with_stack, tmp_path, monkeypatch) -> None:
    """A streamed fuse reads each module's own tensors from each adapter file, never a whole file per module
    (an SDXL LoRA of rank 128 is 700 MB over 722 modules)."""
    import adapterhub_lite.serialization as serialization

    zoo, refs = zoo_with_stack
    reads: list[str] = []
    real = serialization.load_tensors

    def counting(path, keys=None, header=None):
        tensors, meta = real(path, keys, header)
        reads.extend(f"{path}:{k}" for k in tensors)
        return tensors, meta

    monkeypatch.setattr(serialization, "load_tensors", counting)
    fuse_streamed(get_registry(), zoo, refs, tmp_path / "fused.safetensors")
    files = {e.ref: e.weights for e in (zoo.resolve(r.split("=")[0]) for r in refs)}
    every = [f"{path}:{k}" for path in files.values() for k in serialization.read_adapter_file(path).keys]
    assert sorted(reads) == sorted(every)  # each tensor once: none missed, none read twice


def test_a_files_modules_are_read_with_their_own_sub_named_tensors(tmp_path) -> None:
    """`AdapterFile.bundle(modules=...)`: a module's tensors may sit under sub-names (attention's q/k/v/out), and a
    module named like another's prefix takes only its own."""
    from torch import nn

    from adapterhub_lite import AdaptedModel
    from adapterhub_lite.serialization import read_adapter_file

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.attn_out = nn.Linear(8, 8)

    registry = get_registry()
    am = AdaptedModel(Net(), registry=registry)
    am.add_adapter("x", LoraConfig(targets=["attn", "attn_out"], rank=2))
    path = am.save_adapter("x", tmp_path / "x.safetensors")
    file = read_adapter_file(path)
    part = file.bundle(registry, modules=["attn"])
    assert set(part.configs) == {"attn"} and set(part.base_fingerprints) <= {"attn"}
    assert sorted(part.state) == sorted(k for k in file.keys if k.startswith("attn."))
    assert {k.split(".")[1] for k in part.state} == {"q", "k", "v", "out"}
    whole = file.bundle(registry)
    assert sorted(whole.state) == sorted(file.keys)
    assert all(torch.equal(part.state[k], whole.state[k]) for k in part.state)
