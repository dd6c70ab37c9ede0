"""One word per concept (issue 30): fold (into a module's weights, reversibly), combine (a new adapter from
weighted adapters), fuse (a new base). The API and the command line say these words; every older name still
works, with a DeprecationWarning naming the new one, and gives the same result."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import randomize_adapters, seed_adapter, seed_base
from safetensors.torch import load_file
from torch import nn

from adapterhub_lite import (AdaptedModel, AdapterLayer, CombineMethod, LayerPolicy, LoraConfig, PluginManager,
                             Registry, get_registry, hookimpl)
from adapterhub_lite.host import AdaptedModule
from adapterhub_lite.zoo import Zoo

ROOT = Path(__file__).resolve().parent.parent


def _model(registry=None) -> AdaptedModel:
    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), registry=registry)
    for name in ("a", "b"):
        am.add_adapter(name, LoraConfig(targets=["0", "2"], rank=2))
    randomize_adapters(am.model)
    return am.eval()


def _old(call):
    """Run `call` expecting exactly the deprecation of an older name; its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    said = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert said and all("new name" in s or "now" in s for s in said), said
    return result


def test_the_old_model_names_still_work_and_say_the_new_ones() -> None:
    x = torch.randn(4, 6)
    new, old = _model(), _model()
    with torch.no_grad():
        new.fold()
        _old(lambda: old.merge())
        assert torch.equal(new(x), old(x)) and new.folded == ("a", "b") == _old(lambda: old.merged)
        new.unfold()
        _old(lambda: old.unmerge())
        assert new.folded == () and torch.equal(new(x), old(x))
    report_new = new.combine({"a": 1.0, "b": -0.5}, "ab", method="cat")
    report_old = _old(lambda: old.merge_adapters({"a": 1.0, "b": -0.5}, "ab", method="cat"))
    assert report_new["exact"] and report_old["exact"]
    for key, tensor in new.adapter_state("ab").items():
        assert torch.equal(tensor, old.adapter_state("ab")[key])
    fused_new = new.unload(fold=True)
    fused_old = _old(lambda: old.unload(merge=True))
    for (key, a), (_, b) in zip(fused_new.state_dict().items(), fused_old.state_dict().items()):
        assert torch.equal(a, b), key


def test_the_old_policy_names_still_work() -> None:
    policy = _old(lambda: LayerPolicy(merge_limit=0, keep_merge_buffers=True, merged_training=False))
    assert policy == LayerPolicy(fold_limit=0, keep_fold_buffers=True, folded_training=False)
    assert _old(lambda: policy.merge_limit) == 0 and _old(lambda: policy.keep_merge_buffers) is True
    with pytest.raises(TypeError, match="LayerPolicy has no option 'fold_limt'; its options: fold_limit"):
        LayerPolicy(fold_limt=0)


def test_the_old_host_registry_and_spec_names_still_work() -> None:
    am = _model()
    host = am.layers()["0"]
    _old(lambda: host.merge())
    assert host.folded == ("a", "b") == _old(lambda: host.merged)
    _old(lambda: host.unmerge())
    registry = get_registry()
    assert _old(lambda: registry.merges) is registry.combine_methods
    assert _old(lambda: registry.get_merge_method("cat")) is registry.get_combine_method("cat")
    import adapterhub_lite

    assert adapterhub_lite.MergeMethod is CombineMethod and adapterhub_lite.MergeInput is adapterhub_lite.CombineInput


def test_a_config_naming_its_family_the_old_way_still_works(tmp_path) -> None:
    """`kind = "..."` on a config class (the older name of `family`) warns once when the class is made, and the
    class works as before; files keep the on-disk key "kind", so every file written before reads unchanged."""
    from dataclasses import dataclass
    from typing import ClassVar

    from adapterhub_lite import AdapterConfig

    with pytest.warns(DeprecationWarning, match="a config names its family as `family` now"):
        @dataclass(frozen=True)
        class OldConfig(AdapterConfig):
            kind: ClassVar[str] = "old-family"

    assert OldConfig.family == "old-family" and OldConfig(targets=("x",)).to_dict()["kind"] == "old-family"
    assert LoraConfig.family == "lora" and _old(lambda: LoraConfig(targets=("x",)).kind) == "lora"
    registry, zoo = get_registry(), Zoo(tmp_path / "zoo")
    base = seed_base(registry, zoo, "mnist-cnn")
    assert base.entry_type == "base" and _old(lambda: base.kind) == "base"


class _NewWords(AdapterLayer):
    targets = (nn.Linear,)

    def create(self, name, config):
        return nn.ParameterDict({"d": nn.Parameter(torch.zeros_like(self.base.weight))})

    def delta(self, name, x):
        return x @ self.adapters[name]["d"].T

    def delta_weight(self, name):
        return self.adapters[name]["d"]


def test_a_kind_written_with_the_old_contract_names_runs_unchanged() -> None:
    """A third-party kind that defines `combine` (calling the base's through `super()`), `merged_weights` and
    `train_on_merged_weights` gets them under the new names with one warning at class creation, and gives the
    same outputs as the same kind written with the new names."""
    calls = []
    with pytest.warns(DeprecationWarning, match="the kind contract now calls it add_deltas"):
        class OldWords(_NewWords):
            train_on_merged_weights = True

            def combine(self, live, x, out=None):
                calls.append("combine")
                return super().combine(live, x, out)

            def merged_weights(self, weighted, allocate):
                calls.append("merged_weights")
                return None

    assert OldWords.add_deltas is OldWords.combine and OldWords.train_on_folded_weights is True
    assert OldWords.folded_weights is OldWords.merged_weights
    outputs = []
    for layer_class in (_NewWords, OldWords):
        torch.manual_seed(0)
        host = AdaptedModule(nn.Linear(4, 3))
        host.add("a", LoraConfig(targets=["*"], rank=1), layer_class=layer_class)
        with torch.no_grad():
            host.adapters["a"]["d"].normal_()
            x = torch.randn(2, 4)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # super().combine says its new name
                plain = host(x)
            folded = host.forward_with(host.folded_tensors(host.live()), x)
        outputs.append((plain, folded))
    assert calls == ["combine", "merged_weights"]  # the old-named overrides ran, once each, and did not recurse
    for new, old in zip(*outputs):
        assert torch.equal(new, old)


def test_a_plugin_using_the_old_hook_name_still_registers_its_method() -> None:
    import adapterhub_lite_lora
    from adapterhub_lite_lora.merges import merge_cat

    plugin = types.ModuleType("old_hook_plugin")
    plugin.register_merge_methods = hookimpl(lambda register: register(
        CombineMethod(name="old-cat", fn=lambda inputs, rank=None: merge_cat(inputs), families=("lora",),
                      options=())))
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    with pytest.warns(DeprecationWarning, match="register_merge_methods is now called register_combine_methods"):
        pm.add(plugin, name="old")
    registry = Registry(pm)
    assert registry.combine_methods["old-cat"].plugin == "old"
    am = _model(registry)
    assert am.combine({"a": 1.0, "b": 1.0}, "ab", method="old-cat")["exact"]


@pytest.fixture
def zoo_root(tmp_path) -> Path:
    registry, zoo = get_registry(), Zoo(tmp_path / "zoo")
    base = seed_base(registry, zoo, "mnist-cnn")
    seed_adapter(registry, zoo, base, "a", LoraConfig(targets=["fc*", "conv*"], rank=2), seed=1)
    seed_adapter(registry, zoo, base, "b", LoraConfig(targets=["fc1", "conv2"], rank=4, alpha=8), seed=2)
    return zoo.root


def _tensors(root: Path, ref: str) -> dict[str, torch.Tensor]:
    entry = Zoo(root).resolve(ref)
    found: dict[str, torch.Tensor] = {}
    for path in sorted(entry.path.glob("*.safetensors")):
        found.update(load_file(path))
    assert found, ref
    return found


def test_combine_and_fuse_commands_do_what_merge_did(zoo_root) -> None:
    from adapterhub_lite.cli import cli

    runner, zoo = CliRunner(), ["--zoo", str(zoo_root)]

    def run(*args: str) -> dict:
        result = runner.invoke(cli, [*args, *zoo, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    combined = run("combine", "mnist-cnn", "a", "b=-0.5", "--method", "svd", "--rank", "3", "--out", "c")
    merged = run("merge", "mnist-cnn", "a", "b=-0.5", "--method", "svd", "--rank", "3", "--out", "m")
    assert combined["merge"] == merged["merge"] and combined["parents"] == merged["parents"]
    new, old = _tensors(zoo_root, "mnist-cnn/c"), _tensors(zoo_root, "mnist-cnn/m")
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    fused = run("fuse", "mnist-cnn", "a=0.5", "--out", "f")
    into_base = run("merge", "mnist-cnn", "a=0.5", "--into-base", "--out", "g")
    assert fused["fused"] == into_base["fused"]
    new, old = _tensors(zoo_root, "mnist-cnn/f"), _tensors(zoo_root, "mnist-cnn/g")
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    # each command takes only what its word means
    before = sorted(str(p) for p in zoo_root.rglob("*"))
    for args, message in [(["fuse", "mnist-cnn", "a", "--method", "svd", "--out", "x"], "No such option '--method'"),
                          (["combine", "mnist-cnn", "a", "--into-base", "--out", "x"], "No such option '--into-base'"),
                          (["combine", "mnist-cnn", "a", "--stream", "--out", "x"], "No such option '--stream'")]:
        result = runner.invoke(cli, [*args, *zoo])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert sorted(str(p) for p in zoo_root.rglob("*")) == before
    assert "\n  --density" in runner.invoke(cli, ["combine", "m", "a", "--method", "ties", "--out", "x",
                                                  "--help"]).output
    assert "--stream" in runner.invoke(cli, ["fuse", "--help"]).output


def test_the_public_surface_says_merge_only_in_older_names() -> None:
    """tools/shape.py counts the public names of the API classes, the specs, the hooks and the commands that say
    'merge': every one is an older name kept for compatibility (or the product's `merge` command)."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "shape.py"), "--json"], capture_output=True,
                         text=True, check=True).stdout
    words = json.loads(out)["names saying merge"]
    assert words["current"] == ["command merge"], words
    assert {"AdaptedModel.merge", "AdaptedModel.merge_adapters", "AdapterLayer.merged_weights",
            "hook register_merge_methods"} <= set(words["older names"])
