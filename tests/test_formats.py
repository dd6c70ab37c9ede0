"""Formats: native, peft (proved both ways with the real peft package), kohya, merged."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_matches_reference, reference_model, seed_adapter, seed_base
from safetensors.torch import load_file, save_file

from adapterhub_lite import AdapterFileError, IncompatibleAdapterError, LoraConfig, get_registry
from adapterhub_lite.cli import cli
from adapterhub_lite.zoo.exchange import export_refs, import_file
from adapterhub_lite.zoo.loading import load_base, stack
from adapterhub_lite.zoo import Zoo

import peft  # a test extra (pyproject's [test]): installed by the README's command, so it is never skipped
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def zoo(tmp_path) -> Zoo:
    """The MNIST CNN (Linear + Conv2d) with adapters of mixed rank, alpha and rsLoRA."""
    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(get_registry(), zoo, "mnist-cnn")
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*", "conv*"], rank=2, alpha=4), seed=1)
    seed_adapter(get_registry(), zoo, base, "b", LoraConfig(targets=["fc1", "conv2"], rank=4, alpha=3, rslora=True),
                 seed=2)
    return zoo


def ours(zoo: Zoo, refs: list[str]) -> torch.Tensor:
    am, _ = stack(get_registry(), zoo, refs)
    with torch.no_grad():
        return am(X)


def reference(zoo: Zoo, refs: list[str]) -> torch.Tensor:
    """The stack's output from the float64 reference model (tests/conftest.py), not from our forward."""
    am, _ = stack(get_registry(), zoo, refs)
    with torch.no_grad():
        return reference_model(am)(X.double())


def peft_outputs(zoo: Zoo, folder: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(load_base(get_registry(), zoo.resolve("mnist-cnn")), str(folder))
    with torch.no_grad():
        return model.eval()(X)


def deltas(zoo: Zoo, ref: str) -> dict[str, torch.Tensor]:
    am, _ = stack(get_registry(), zoo, [ref])
    return {f"{m}.{p}": d.detach() for m, layer in am.layers().items() for n, _ in layer.live()
            for p, d in layer.delta_weights(n).items()}


@pytest.mark.parametrize("refs", [["mnist-cnn/a"], ["mnist-cnn/b"], ["mnist-cnn/a=0.5", "mnist-cnn/b=-1"]],
                         ids=["plain", "rslora", "mixed-ranks-via-cat"])
def test_our_peft_export_loads_in_peft_with_the_same_outputs(zoo, tmp_path, refs) -> None:
    folder, info = export_refs(get_registry(), zoo, refs, "peft", tmp_path / "out",
                               method="cat" if len(refs) == 2 else None)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"].startswith("^(")
    if len(refs) == 2:  # per-module ranks and alphas travel in rank_pattern / alpha_pattern
        assert info["combined"] == "cat" and config["r"] == 6 and config["rank_pattern"] == {
            "^conv1": 2, "^conv3": 2, "^fc2": 2, "^fc3": 2, "^fc4": 2}
    base = ours(zoo, ["mnist-cnn"])
    want = ours(zoo, refs)
    assert not torch.allclose(want, base)  # the adapter does something
    # ours runs small layers on merged weights at inference: float rounding, relative to the output's size
    torch.testing.assert_close(peft_outputs(zoo, folder), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_an_adapter_trained_and_saved_by_peft_imports_with_the_same_outputs(zoo, tmp_path) -> None:
    base_model = load_base(get_registry(), zoo.resolve("mnist-cnn"))
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["fc1", "fc2", "conv2"], rank_pattern={"conv2": 3},
                             alpha_pattern={"fc2": 7}, use_rslora=True)
    model = peft.get_peft_model(base_model, config)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):  # train, so B is no longer zero
        loss = model(X).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = tmp_path / "trained-by-peft"
    model.save_pretrained(str(folder), safe_serialization=True)
    with torch.no_grad():
        want = model(X)
    entry = import_file(get_registry(), zoo, folder, "peft", "mnist-cnn", "from-peft")
    assert entry.card["imported_from"]["format"] == "peft"
    assert {m: c["rank"] for m, c in _module_configs(entry).items()} == {"conv2": 3, "fc1": 2, "fc2": 2}
    torch.testing.assert_close(ours(zoo, [entry.ref]), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def _module_configs(entry) -> dict[str, dict]:
    from adapterhub_lite import read_adapter_file

    meta = read_adapter_file(entry.weights).meta
    return {m: {"rank": t["rank"], "alpha": t["alpha"]} for m, t in meta["targets"].items()}


def test_native_peft_kohya_native_keeps_every_delta(zoo, tmp_path) -> None:
    registry = get_registry()
    refs = ["mnist-cnn/a=0.5", "mnist-cnn/b=-1"]  # cat of mixed ranks, one rsLoRA: the hardest case
    native, _ = export_refs(registry, zoo, refs, "native", tmp_path / "one.safetensors")
    step1 = import_file(registry, zoo, native, "native", "mnist-cnn", "step1")
    folder, _ = export_refs(registry, zoo, [step1.ref], "peft", tmp_path / "peft")
    step2 = import_file(registry, zoo, folder, "peft", "mnist-cnn", "step2")
    kohya, _ = export_refs(registry, zoo, [step2.ref], "kohya", tmp_path / "k.safetensors")
    keys = load_file(str(kohya))
    assert {"lora_unet_fc1.lora_down.weight", "lora_unet_fc1.lora_up.weight", "lora_unet_fc1.alpha"} <= set(keys)
    step3 = import_file(registry, zoo, kohya, "kohya", "mnist-cnn", "step3")
    back, _ = export_refs(registry, zoo, [step3.ref], "native", tmp_path / "back.safetensors")
    final = import_file(registry, zoo, back, "native", "mnist-cnn", "final")
    first, last = deltas(zoo, step1.ref), deltas(zoo, final.ref)
    assert set(first) == set(last) and len(first) == 7
    for key in first:
        torch.testing.assert_close(last[key], first[key], rtol=1e-6, atol=1e-6)
    kohya_b = export_refs(registry, zoo, ["mnist-cnn/b"], "kohya", tmp_path / "b.safetensors")[0]
    assert float(load_file(str(kohya_b))["lora_unet_fc1.alpha"]) == pytest.approx(3 * 2)  # rsLoRA: alpha*sqrt(r)


def test_merged_export_loads_into_the_bare_model_class(zoo, tmp_path) -> None:
    path, info = export_refs(get_registry(), zoo, ["mnist-cnn/a=0.5", "mnist-cnn/b=-1"], "merged",
                             tmp_path / "fused.safetensors")
    plain = get_registry().create_model("mnist-cnn")
    plain.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        assert_matches_reference(plain.eval()(X), reference(zoo, ["mnist-cnn/a=0.5", "mnist-cnn/b=-1"]))
    entry = import_file(get_registry(), zoo, path, "merged", "mnist-cnn", "fused")
    assert entry.is_base and entry.card["fingerprint"] == info["fingerprint"]


def test_imports_refuse_what_they_cannot_represent(zoo, tmp_path) -> None:
    registry = get_registry()
    folder, _ = export_refs(registry, zoo, ["mnist-cnn/a"], "peft", tmp_path / "p")
    config = json.loads((folder / "adapter_config.json").read_text())
    for field_name, value, message in [("use_dora", True, "DoRA module 'conv1' has no lora_magnitude_vector"),
                                       ("bias", "all", "trains biases"),
                                       ("modules_to_save", ["fc4"], "fully trained modules")]:
        (folder / "adapter_config.json").write_text(json.dumps({**config, field_name: value}))
        with pytest.raises(IncompatibleAdapterError, match=message):
            import_file(registry, zoo, folder, "peft", "mnist-cnn", "x")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    save_file({**tensors, "base_model.model.fc1.lora_magnitude_vector": torch.ones(288)},
              str(folder / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleAdapterError, match="is not a LoRA factor"):
        import_file(registry, zoo, folder, "peft", "mnist-cnn", "x")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterFileError, match="a pickle, which is never loaded here"):
        import_file(registry, zoo, folder, "peft", "mnist-cnn", "x")
    # a native file trained on another base: refused by fingerprint unless forced
    other = Zoo(tmp_path / "other")
    other_base = seed_base(registry, other, "mnist-cnn", seed=9)
    foreign = seed_adapter(registry, other, other_base, "f", LoraConfig(targets=["fc1"], rank=2), seed=1)
    with pytest.raises(IncompatibleAdapterError, match="trained on another base"):
        import_file(registry, zoo, foreign.weights, "native", "mnist-cnn", "f")
    assert import_file(registry, zoo, foreign.weights, "native", "mnist-cnn", "f", force=True).ref == "mnist-cnn/f@v1"


def test_kohya_refuses_attention_and_both_refuse_grouped_conv(tiny_registry, tmp_path) -> None:
    """peft holds attention LoRA in its own packed layout (tests/test_lora_kinds.py); kohya has none."""
    zoo = Zoo(tmp_path / "tiny")
    base = seed_base(tiny_registry, zoo, "tiny")
    seed_adapter(tiny_registry, zoo, base, "attn", LoraConfig(targets=["attn"], rank=2), seed=1)
    seed_adapter(tiny_registry, zoo, base, "dw", LoraConfig(targets=["depthwise"], rank=1), seed=1)
    registry = get_registry()  # the formats plugin; the tiny model comes from tiny_registry
    registry.models.update(tiny_registry.models)
    try:
        with pytest.raises(IncompatibleAdapterError, match=r"'attn' is attention \(one pair per q/k/v/out"):
            export_refs(registry, zoo, ["tiny/attn"], "kohya", tmp_path / "kohya")
        for fmt in ("peft", "kohya"):
            with pytest.raises(IncompatibleAdapterError, match="groups > 1"):
                export_refs(registry, zoo, ["tiny/dw"], fmt, tmp_path / fmt)
    finally:
        del registry.models["tiny"]


def test_cli_export_import_and_errors_leave_the_zoo_alone(zoo, tmp_path) -> None:
    runner, root = CliRunner(), str(zoo.root)
    out = runner.invoke(cli, ["export", "mnist-cnn/a", "--format", "kohya", "--out", str(tmp_path / "a.safetensors"),
                              "--zoo", root])
    assert out.exit_code == 0 and "wrote" in out.output, out.output
    before = sorted(str(p) for p in Path(root).rglob("*"))
    cases = [
        (["export", "mnist-cnn/a", "--format", "pef", "--out", str(tmp_path / "x")], "did you mean 'peft'"),
        (["export", "mnist-cnn", "--format", "peft", "--out", str(tmp_path / "x")], "name an adapter to export"),
        (["import", str(tmp_path / "missing"), "--format", "peft", "--model", "mnist-cnn", "--name", "x"],
         "nothing at"),
        (["import", str(tmp_path / "a.safetensors"), "--format", "native", "--model", "mnist-cnn", "--name", "x"],
         "no adapterhub_lite metadata"),
        (["import", str(tmp_path / "a.safetensors"), "--format", "kohya", "--model", "richboynet", "--name", "x"],
         "unknown zoo model 'richboynet'"),
        (["import", str(tmp_path / "a.safetensors"), "--format", "kohya", "--model", "mnist-cnn", "--name", "base"],
         "'base' is reserved"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, [*args, "--zoo", root])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(str(p) for p in Path(root).rglob("*")) == before
    imported = runner.invoke(cli, ["import", str(tmp_path / "a.safetensors"), "--format", "kohya", "--model",
                                   "mnist-cnn", "--name", "from-kohya", "--json", "--zoo", root])
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.output)["recipe"]["format"] == "kohya"


class Nested(torch.nn.Module):
    """Module names whose suffixes collide: PEFT reads a pattern key `block.lin0` as `(.*\\.)?(block.lin0)$`,
    which also matches `outer.block.lin0`."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = torch.nn.Linear(6, 6)
        self.block = torch.nn.Module()
        self.block.lin0 = torch.nn.Linear(6, 6)
        self.outer = torch.nn.Module()
        self.outer.block = torch.nn.Module()
        self.outer.block.lin0 = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.block.lin0(torch.relu(self.block.lin0(torch.relu(self.lin0(x)))))


@pytest.mark.parametrize("per_module", ["alpha", "rank", "both"])
def test_peft_export_patterns_hit_only_their_own_module(tmp_path, per_module) -> None:
    from adapterhub_lite import AdaptedModel

    torch.manual_seed(0)
    model = Nested().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    am = AdaptedModel(model, registry=get_registry())
    # lin0 sets the defaults (r, lora_alpha); block.lin0 differs and lands in a pattern; outer.block.lin0 must not
    ranks = {"lin0": 2, "block.lin0": 1 if per_module != "alpha" else 2, "outer.block.lin0": 2}
    alphas = {"lin0": 8.0, "block.lin0": 2.0 if per_module != "rank" else 8.0, "outer.block.lin0": 8.0}
    bundle_configs = {m: LoraConfig(targets=[m], rank=ranks[m], alpha=alphas[m]) for m in ranks}
    from adapterhub_lite import AdapterBundle

    gen = torch.Generator().manual_seed(2)
    state = {}
    for m, c in bundle_configs.items():
        fan_out, fan_in = model.get_submodule(m).weight.shape
        state[f"{m}.lora_A"] = torch.randn(c.rank, fan_in, generator=gen)
        state[f"{m}.lora_B"] = torch.randn(fan_out, c.rank, generator=gen)
    am.add_bundle(AdapterBundle(name="p", family="lora", configs=bundle_configs, state=state))
    with torch.no_grad():
        want = reference_model(am)(x.double())
    folder = am.export("p", format="peft", dest=tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert all(key.startswith("^") for key in [*config["rank_pattern"], *config["alpha_pattern"]])
    plain_state = {k: v.clone() for k, v in am.unload().state_dict().items()}
    fresh = Nested().eval()
    fresh.load_state_dict(plain_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(fresh, str(folder)).eval()
    with torch.no_grad():
        assert_matches_reference(loaded(x), want)
    # and back: the folder imports into ours with the same outputs
    from adapterhub_lite_formats import peft as peft_format

    again = Nested().eval()
    again.load_state_dict(plain_state)
    back = AdaptedModel(again, registry=get_registry())
    back.add_bundle(peft_format.import_(folder, back))
    with torch.no_grad():
        assert_matches_reference(back(x), want)


def test_kohya_header_alpha_matches_its_tensors_for_rslora(zoo, tmp_path) -> None:
    path, _ = export_refs(get_registry(), zoo, ["mnist-cnn/b"], "kohya", tmp_path / "b.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        alphas = {float(handle.get_tensor(k)) for k in handle.keys() if k.endswith(".alpha")}
    assert alphas == {3 * 4 ** 0.5} and float(header["ss_network_alpha"]) == 3 * 4 ** 0.5  # alpha 3, r 4, rsLoRA


def test_peft_export_says_when_modules_differ_in_dropout(zoo, tmp_path) -> None:
    from adapterhub_lite import AdaptedModel, AdapterBundle

    am, _ = stack(get_registry(), zoo, ["mnist-cnn/a"])
    bundle = am.bundle("a")
    configs = {m: c.replace(dropout=0.1 if m == "fc1" else 0.0) for m, c in bundle.configs.items()}
    fresh = AdaptedModel(am.unload(), registry=get_registry())
    fresh.add_bundle(AdapterBundle(name="d", family="lora", configs=configs, state=bundle.state))
    with pytest.warns(UserWarning, match=r"lora_dropout \[0.0, 0.1\]; PEFT has one lora_dropout per adapter"):
        folder = fresh.export("d", format="peft", dest=tmp_path / "d")
    assert json.loads((folder / "adapter_config.json").read_text())["lora_dropout"] == 0.1
