"""The native safetensors adapter file: round trips, metadata, fingerprints, and refusing bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TinyNet, randomize_adapters
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from adapterhub_lite import (
    AdaptedModel,
    AdapterFileError,
    IncompatibleAdapterError,
    LoraConfig,
    UnknownNameError,
    WriteError,
    __version__,
    read_adapter_file,
)


def _trained(registry, dtype=torch.float32, seed=0) -> tuple[TinyNet, AdaptedModel]:
    torch.manual_seed(seed)
    model = TinyNet().eval().to(dtype)
    am = AdaptedModel(model, base_id="tiny", registry=registry)
    am.add_adapter("style", LoraConfig(targets=["*"], rank=3, alpha=6, attention_projections=("q", "out")))
    randomize_adapters(model, seed=seed + 1)
    return model, am


def _fresh(registry, dtype=torch.float32, seed=0) -> tuple[TinyNet, AdaptedModel]:
    torch.manual_seed(seed)
    model = TinyNet().eval().to(dtype)
    return model, AdaptedModel(model, base_id="tiny", registry=registry)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bit_exact(tmp_path, registry, dtype) -> None:
    model, am = _trained(registry, dtype)
    x = torch.randn(2, 3, 8, 8).to(dtype)
    with torch.no_grad():
        expected = am(x)
    path = am.save_adapter("style", tmp_path / "style.safetensors")
    _, am2 = _fresh(registry, dtype)
    assert am2.load_adapter(path) == "style"
    saved, loaded = am.adapter_state("style"), am2.adapter_state("style")
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) and loaded[k].dtype == dtype for k in saved)
    with torch.no_grad():
        assert torch.equal(am2(x), expected)


def test_header_describes_the_adapter(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        keys = set(f.keys())
    assert header["family"] == "lora" and header["rank"] == "3" and header["alpha"] == "6.0"
    meta = json.loads(header["adapterhub_lite"])
    assert header["base_fingerprint"] == meta["base_fingerprint"] == am.base_fingerprint("style")
    assert meta["name"] == "style" and meta["base_model"] == "tiny" and meta["library_version"] == __version__
    assert meta["targets"]["fc1"] == {"kind": "lora-linear", "rank": 3, "alpha": 6.0}
    assert meta["targets"]["attn"] == {"kind": "lora-mha", "rank": 3, "alpha": 6.0, "projections": ["q", "out"]}
    assert meta["targets"]["depthwise"]["kind"] == "lora-conv2d"
    assert set(meta["base_module_fingerprints"]) == {"conv", "depthwise", "attn", "fc1", "fc2"}
    assert "created" in meta and meta["config"]["rank"] == 3
    assert "fc1.lora_A" in keys and "attn.q.lora_B" in keys and "attn.k.lora_A" not in keys


def test_fingerprint_ignores_merging(registry) -> None:
    _, am = _trained(registry)
    before = am.base_fingerprint("style")
    am.fold()
    assert am.base_fingerprint("style") == before


def test_wrong_base_is_refused_naming_the_module_and_override_works(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    model2, am2 = _fresh(registry)
    with torch.no_grad():
        model2.fc1.weight[0, 0] += 1e-3
    before = _state(model2)
    with pytest.raises(IncompatibleAdapterError, match=r"trained on base 'tiny'.*module 'fc1' differs.*skip the check"):
        am2.load_adapter(path)
    assert am2.adapters == {} and not am2.layers()
    assert all(torch.equal(v, before[k]) for k, v in model2.state_dict().items())
    am2.load_adapter(path, ignore_fingerprint=True)
    assert am2.active == {"style": 1.0}


def test_shape_mismatch_is_refused_and_leaves_the_model_untouched(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    other = TinyNet()
    other.fc2 = nn.Linear(16, 5)  # one more class
    am2 = AdaptedModel(other, registry=registry)
    modules_before = dict(other.named_modules())
    with pytest.raises(IncompatibleAdapterError, match=r"'lora_B' has shape \(4, 3\), this layer needs \(5, 3\)"):
        am2.load_adapter(path, ignore_fingerprint=True)
    assert am2.adapters == {} and dict(other.named_modules()) == modules_before


def test_missing_module_gets_close_matches(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    renamed = nn.Sequential()
    model = TinyNet()
    for name, child in model.named_children():
        renamed.add_module("fc_1" if name == "fc1" else name, child)
    am2 = AdaptedModel(renamed, registry=registry)
    with pytest.raises(UnknownNameError, match=r"unknown module 'fc1'; did you mean 'fc_1'"):
        am2.load_adapter(path)
    assert not am2.layers()


def test_newer_file_with_unknown_fields_loads_with_one_warning_and_keeps_them(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["adapterhub_lite"])
    meta["library_version"] = "9.0"
    meta["provenance"] = {"dataset": "mnist-9"}
    meta["config"]["quantum_flux"] = 3
    header["adapterhub_lite"] = json.dumps(meta)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata=header)

    _, am2 = _fresh(registry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        am2.load_adapter(newer)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "provenance" in messages[0] and "config.quantum_flux" in messages[0]
    resaved = am2.save_adapter("style", tmp_path / "resaved.safetensors")
    assert read_adapter_file(resaved).meta["provenance"] == {"dataset": "mnist-9"}


def test_per_target_ranks_round_trip(tmp_path, registry) -> None:
    _, am = _trained(registry)
    layer = am.layers()["fc2"]
    layer.remove("style")
    layer.add("style", LoraConfig(targets=["*"], rank=7, alpha=1, attention_projections=("q", "out")))
    randomize_adapters(layer, seed=5)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    meta = read_adapter_file(path).meta
    assert meta["targets"]["fc2"] == {"kind": "lora-linear", "rank": 7, "alpha": 1.0, "config": {"rank": 7, "alpha": 1.0}}
    _, am2 = _fresh(registry)
    am2.load_adapter(path)
    assert am2.layers()["fc2"].adapters["style"].lora_A.shape == (7, 16)
    assert am2.layers()["fc1"].adapters["style"].lora_A.shape == (3, 8)
    assert torch.equal(am2.adapter_state("style")["fc2.lora_B"], am.adapter_state("style")["fc2.lora_B"])


def test_load_under_another_name_and_refuse_duplicates(tmp_path, registry) -> None:
    _, am = _trained(registry)
    path = am.save_adapter("style", tmp_path / "a.safetensors")
    am.load_adapter(path, name="style2", activate=False)
    assert set(am.adapters) == {"style", "style2"} and am.active == {"style": 1.0}
    with pytest.raises(Exception, match="already exists"):
        am.load_adapter(path)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_garbage_files_are_one_clear_error(tmp_path, registry, content) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    _, am = _fresh(registry)
    with pytest.raises(AdapterFileError, match="not a readable safetensors file"):
        am.load_adapter(path)


def test_foreign_safetensors_and_missing_files_are_refused(tmp_path, registry) -> None:
    foreign = tmp_path / "peft.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    _, am = _fresh(registry)
    with pytest.raises(AdapterFileError, match="not a native adapter file"):
        am.load_adapter(foreign)
    with pytest.raises(AdapterFileError, match="no adapter file at"):
        am.load_adapter(tmp_path / "nope.safetensors")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, registry, monkeypatch) -> None:
    _, am = _trained(registry)
    target = tmp_path / "a.safetensors"
    am.save_adapter("style", target)
    original = target.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", explode)  # imported when save_adapter runs
    with pytest.raises(WriteError, match=r"cannot write .*a\.safetensors: disk full; nothing was written"):
        am.save_adapter("style", target)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_base_fingerprints_are_cached_until_the_base_changes(registry) -> None:
    from adapterhub_lite import AdaptedModel, LoraConfig, state_fingerprint

    am = AdaptedModel(nn.Sequential(nn.Linear(8, 8)), registry=registry)
    am.add_adapter("a", LoraConfig(targets=["0"], rank=2))
    first = am.base_fingerprints(["0"])
    assert am.base_fingerprints(["0"]) == first and "0" in am._fingerprints
    with torch.no_grad():
        am.layers()["0"].base.weight.add_(1.0)  # in place: a new version
    assert am.base_fingerprints(["0"]) != first
    am.layers()["0"].base.weight.data = torch.zeros(8, 8)  # swapped: another tensor
    assert am.base_fingerprints(["0"])["0"] == state_fingerprint(
        {k: v for k, v in am.layers()["0"].base.named_parameters()})


@pytest.mark.parametrize("edit", ["data-element", "bias", "row-swap"])
def test_fingerprints_never_go_stale_whatever_path_edits_the_base(registry, tmp_path, edit) -> None:
    """Issue 31: an in-place change through `.data` bumps no version counter and a sampled check can miss one
    element; the same AdaptedModel must refuse an adapter made for the old base, as a fresh model would."""
    from adapterhub_lite import AdaptedModel, IncompatibleAdapterError, LoraConfig, state_fingerprint

    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Embedding(64, 24), nn.Linear(24, 100)), registry=registry)
    am.add_adapter("a", LoraConfig(targets=["0", "1"], rank=2))
    path = am.save_adapter("a", tmp_path / "a.safetensors")  # records (and caches) the base's fingerprints
    before = am.base_fingerprints(["0", "1"])
    table, linear = am.layers()["0"].base.weight, am.layers()["1"].base
    version = table._version
    if edit == "data-element":
        linear.weight.data[3, 5] += 1e-3
    elif edit == "bias":
        linear.bias.data[7] += 1e-3
    else:  # two rows of the token table swapped: same values, other places
        table.data[[11, 13]] = table.data[[13, 11]]
    assert table._version == version  # no counter moved
    after = am.base_fingerprints(["0", "1"])
    assert after != before
    assert after == {m: state_fingerprint(dict(am.layers()[m].base.named_parameters())) for m in ("0", "1")}
    with pytest.raises(IncompatibleAdapterError, match="fingerprint"):
        am.load_adapter(path, name="again")


def test_a_file_written_before_the_core_knew_no_family_still_loads(registry) -> None:
    """tests/fixtures/written-before: a LoRA adapter saved by the version whose core still held LoraConfig
    (commit 0f97041), with the outputs it gave then; it loads today and gives the same outputs."""
    import json

    from safetensors.torch import load_file

    from adapterhub_lite import AdaptedModel

    folder = Path(__file__).parent / "fixtures" / "written-before"
    expected = json.loads((folder / "expected.json").read_text())
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model.load_state_dict(load_file(str(folder / "base.safetensors")))
    am = AdaptedModel(model.eval(), base_id="two-layer", registry=registry)
    assert am.load_adapter(folder / "old.safetensors") == "old"
    assert am.adapters["old"].config.rslora and am.adapters["old"].config.alpha == 3.0
    with torch.no_grad():
        out = am(torch.tensor(expected["input"]))
    torch.testing.assert_close(out, torch.tensor(expected["output"]), rtol=1e-6, atol=1e-6)
