"""Plugins are found through installed entry points, first-party and third-party alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from adapterhub_lite import AdaptedModel, AdapterhubWarning, PluginError, Registry, load_plugins

FIXTURE = Path(__file__).parent / "fixtures" / "toy-plugin"
ADAPTERS = [sys.executable, "-m", "adapterhub_lite"]


def _run(args: list[str], extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    if extra_path is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(extra_path), environ.get("PYTHONPATH", "")])
    return subprocess.run(args, capture_output=True, text=True, env=environ, timeout=120)


def test_first_party_lora_plugin_is_discovered_through_its_entry_point() -> None:
    registry = Registry.from_entry_points()
    assert {"lora-linear", "lora-conv2d", "lora-mha"} <= set(registry.kinds)
    assert registry.kinds["lora-linear"].plugin == "lora"
    assert registry.pm.infos["lora"].distribution == "adapterhub-lite-lora"


def test_plugins_json_lists_the_lora_kinds() -> None:
    result = _run([*ADAPTERS, "plugins", "--json"])
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    kinds = {k["name"]: k["targets"] for k in plugins["lora"]["kinds"]}
    assert kinds == {"lora-linear": ["Linear"], "lora-conv1d": ["Conv1d"], "lora-conv2d": ["Conv2d"],
                     "lora-embedding": ["Embedding"], "lora-mha": ["MultiheadAttention"],
                     "lora-transformers-conv1d": ["Conv1D"]}


def test_load_plugins_env_filter(monkeypatch) -> None:
    monkeypatch.setenv("ADAPTERS_LOAD_PLUGINS", "")
    assert Registry(load_plugins()).kinds == {}
    monkeypatch.setenv("ADAPTERS_LOAD_PLUGINS", "adapterhub-lite-lora")  # a distribution name works too
    assert "lora-linear" in Registry(load_plugins()).kinds


def test_trace_plugins_env_prints_hook_calls() -> None:
    result = _run([*ADAPTERS, "plugins"], ADAPTERS_TRACE_PLUGINS="1")
    assert result.returncode == 0
    assert "register_adapter_types" in result.stderr


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """The toy plugin pip-installed into its own directory, as any outside package would be."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(FIXTURE)],
        check=True, capture_output=True, timeout=300,
    )
    assert list(target.glob("toy_adapter-0.0.1.dist-info/entry_points.txt"))
    return target


def test_third_party_plugin_end_to_end(toy_site, monkeypatch, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(toy_site))
    registry = Registry.from_entry_points()
    assert registry.kinds["dense-linear"].plugin == "toy"
    assert registry.models["toy-mlp"].plugin == "toy"
    assert registry.pm.infos["toy"].distribution == "toy-adapter"

    import toy_adapter  # only now importable: it lives in the pip target directory

    torch.manual_seed(0)
    model = registry.create_model("toy-mlp", width=5)
    am = AdaptedModel(model, base_id="toy-mlp", registry=registry)
    assert am.add_adapter("d", toy_adapter.DenseConfig(target_types=["Linear"])) == ["0", "2"]
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with torch.no_grad():
        base_out = am(x)
    opt = torch.optim.SGD(am.trainable_parameters(), lr=0.5)
    for _ in range(5):
        loss = nn.functional.cross_entropy(am(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = am(x)
        assert not torch.allclose(trained, base_out)
        am.fold()
        torch.testing.assert_close(am(x), trained, rtol=1e-5, atol=1e-6)
        am.unfold()
    path = am.save_adapter("d", tmp_path / "d.safetensors")
    fresh = AdaptedModel(am.unload(), base_id="toy-mlp", registry=registry)
    with torch.no_grad():
        assert torch.equal(fresh(x), base_out)  # unload gave back the base exactly
        fresh.load_adapter(path)
        assert torch.equal(fresh(x), trained)

    listing = _run([*ADAPTERS, "plugins", "--json"], toy_site)
    assert listing.returncode == 0, listing.stderr
    toy = next(p for p in json.loads(listing.stdout) if p["name"] == "toy")
    assert [k["name"] for k in toy["kinds"]] == ["dense-linear"]
    assert [m["name"] for m in toy["models"]] == ["toy-mlp"]
    assert toy["commands"] == ["toy-hello"]
    hello = _run([*ADAPTERS, "toy-hello"], toy_site)
    assert (hello.returncode, hello.stdout) == (0, "hello from toy\n")
    inspected = _run([*ADAPTERS, "inspect", str(path), "--json"], toy_site)
    assert json.loads(inspected.stdout)["targets"]["0"]["kind"] == "dense-linear"


def _fake_dist(root: Path, name: str, module_source: str, entry_name: str) -> None:
    """A minimal installed distribution: a module plus dist-info with an entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[adapterhub_lite]\n{entry_name} = {name}\n")


def test_a_plugin_that_fails_to_import_is_set_aside_and_named(tmp_path, monkeypatch) -> None:
    """Issue 31: one broken install no longer takes every command down. By default it is set aside with one
    warning line naming it, `plugins` lists it with the reason, every other plugin works; strict (CI, plugin
    authors: ADAPTERS_STRICT_PLUGINS=1) it is the error it was."""
    _fake_dist(tmp_path, "broken_plugin", "raise RuntimeError('boom')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'broken' \(broken_plugin\) failed to import: RuntimeError: boom"):
        load_plugins(strict=True)
    with pytest.warns(AdapterhubWarning, match="plugin 'broken' is not loaded: broken_plugin failed to import"):
        pm = load_plugins(strict=False)
    assert "broken" in pm.broken and pm.has_plugin("lora")
    result = _run([*ADAPTERS, "plugins"], tmp_path, ADAPTERS_STRICT_PLUGINS="0")
    assert result.returncode == 0, result.stderr
    assert "broken  NOT LOADED: broken_plugin failed to import: RuntimeError: boom" in result.stdout
    assert "adapter kind: lora-linear" in result.stdout
    assert result.stderr.count("warning:") == 1 and "plugin 'broken' is not loaded" in result.stderr
    strict = _run([*ADAPTERS, "plugins"], tmp_path, ADAPTERS_STRICT_PLUGINS="1")
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines() == [
        "Error: plugin 'broken' (broken_plugin) failed to import: RuntimeError: boom"]


def test_duplicate_kind_from_another_plugin_is_refused(tmp_path, monkeypatch) -> None:
    _fake_dist(tmp_path, "copycat", """
        from torch import nn
        from adapterhub_lite import AdapterKind, LoraConfig, hookimpl
        from adapterhub_lite_lora import LoraLinear

        @hookimpl
        def register_adapter_types(register):
            register(AdapterKind(name="lora-linear", layer=LoraLinear, config=LoraConfig))
    """, "copycat")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="'lora-linear' is registered by both 'lora' and 'copycat'|"
                                          "'lora-linear' is registered by both 'copycat' and 'lora'"):
        Registry.from_entry_points()


def test_misspelt_hook_name_is_refused(tmp_path, monkeypatch) -> None:
    _fake_dist(tmp_path, "typo_plugin", """
        from adapterhub_lite import hookimpl

        @hookimpl
        def register_adapter_typos(register):
            pass
    """, "typo")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="typo.*register_adapter_typos"):
        load_plugins(strict=True)
    with pytest.warns(AdapterhubWarning, match="plugin 'typo' is not loaded: .*register_adapter_typos"):
        pm = load_plugins(strict=False)
    assert not pm.has_plugin("typo") and "typo" in pm.broken and pm.has_plugin("lora")


def test_hooks_go_through_pluggy_wrappers_and_ordering_apply() -> None:
    """A wrapper plugin sees every registration call; tryfirst/trylast decide the order plugins register in."""
    from adapterhub_lite import ModelSpec, PluginManager, hookimpl

    calls: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        def register_models(self, register) -> None:
            calls.append("first")
            register(ModelSpec(name="m-first", build=nn.Identity))

    class Last:
        @hookimpl(trylast=True)
        def register_models(self, register) -> None:
            calls.append("last")
            register(ModelSpec(name="m-last", build=nn.Identity))

    class Middle:
        @hookimpl
        def register_models(self, register) -> None:
            calls.append("middle")
            register(ModelSpec(name="m-middle", build=nn.Identity))

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_models(self, register):
            calls.append("wrap-before")
            result = yield
            calls.append("wrap-after")
            return result

    pm = PluginManager()
    for name, plugin in (("last", Last()), ("first", First()), ("middle", Middle()), ("wrapper", Wrapper())):
        pm.add(plugin, name=name)
    pm.check()
    registry = Registry(pm)
    assert calls == ["wrap-before", "first", "wrap-after", "wrap-before", "middle", "wrap-after",
                     "wrap-before", "last", "wrap-after"]
    assert {n: o.plugin for n, o in registry.models.items()} == {"m-first": "first", "m-middle": "middle",
                                                                 "m-last": "last"}


SCALE_FIXTURE = Path(__file__).parent / "fixtures" / "scale-plugin"


@pytest.fixture(scope="module")
def scale_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("scale-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(SCALE_FIXTURE)],
                   check=True, capture_output=True, timeout=300)
    return target


def test_the_scale_fixture_uses_only_public_names() -> None:
    import ast

    import adapterhub_lite

    tree = ast.parse((SCALE_FIXTURE / "scale_plugin" / "__init__.py").read_text())
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module or "").startswith("adapterhub_lite")]
    assert imported and all(module == "adapterhub_lite" and name in adapterhub_lite.__all__
                            for module, name in imported), imported


def test_a_third_party_family_model_and_task_through_the_command_line(scale_site, tmp_path) -> None:
    """Family options (--init), task options (--variant, --points) and the task's own metrics, all from the
    plugin; the core names none of them."""
    zoo = tmp_path / "zoo"

    def adapters(*args: str) -> subprocess.CompletedProcess:
        result = _run([*ADAPTERS, *args], scale_site, ADAPTERS_ZOO=str(zoo))
        assert result.returncode == 0, (args, result.stderr)
        return result

    plugins = {p["name"]: p for p in json.loads(adapters("plugins", "--json").stdout)}
    scale = plugins["scale"]
    assert scale["distribution"] == "scale-adapter"
    assert [k["name"] for k in scale["kinds"]] == ["scale-linear"] and scale["kinds"][0]["family"] == "scale"
    assert [m["name"] for m in scale["models"]] == ["wave"] and scale["models"][0]["task"] == "regress"
    assert [m["name"] for m in scale["combine_methods"]] == ["scale-sum"]
    helped = adapters("train", "wave", "x", "--family", "scale", "--help").stdout
    assert "--init FLOAT" in helped and "Starting value of every scale" in helped and "--rank INTEGER" not in helped
    assert "--variant [plain|shifted]" in helped and "--points INTEGER" in helped

    adapters("train-base", "wave", "--steps", "300", "--batch-size", "64", "--lr", "0.02")
    base = json.loads(adapters("apply", "wave", "--eval", "--json", "--variant", "shifted").stdout)
    adapters("train", "wave", "up", "--family", "scale", "--init", "0.1", "--variant", "shifted", "--steps",
             "200", "--batch-size", "64", "--lr", "0.05")
    adapters("train", "wave", "up2", "--variant", "shifted", "--steps", "50", "--lr", "0.05")  # default family
    card = json.loads(adapters("zoo", "show", "wave/up", "--json").stdout)
    assert card["family"] == "scale" and card["config"]["init"] == 0.1 and card["recipe"]["variant"] == "shifted"
    adapted = json.loads(adapters("apply", "wave/up", "--eval", "--json", "--variant", "shifted").stdout)
    assert adapted["mse"] < 0.5 * base["mse"]  # the adapter learned the shift
    text = adapters("apply", "wave/up", "--eval", "--variant", "shifted").stdout
    assert f"mean squared error {adapted['mse']:.5f} on 512 points" in text  # the task's own report

    merged = json.loads(adapters("combine", "wave", "up=0.5", "up2=0.5", "--method", "scale-sum", "--out", "both",
                                 "--json").stdout)
    assert merged["merge"]["exact"] is True and merged["parents"] == ["wave/up@v1", "wave/up2@v1"]
    # the family's own default method, with the flag that method declares
    clipped = json.loads(adapters("combine", "wave", "up=0.5", "up2=0.5", "--clip", "0.01", "--out", "clipped",
                                  "--json").stdout)
    assert clipped["recipe"]["method"] == "scale-sum" and clipped["recipe"]["clip"] == 0.01
    assert clipped["merge"]["exact"] is False
    assert "--clip" in adapters("combine", "wave", "up", "--method", "scale-sum", "--out", "x", "--help").stdout
    refused = _run([*ADAPTERS, "merge", "wave", "up", "--method", "linear", "--out", "x"], scale_site,
                   ADAPTERS_ZOO=str(zoo))
    assert refused.returncode == 1 and "'scale' adapter; method 'linear' combines 'lora' adapters only" in \
        refused.stderr

    adapters("export", "wave/up", "--format", "native", "--out", str(tmp_path / "up.safetensors"))
    adapters("import", str(tmp_path / "up.safetensors"), "--model", "wave", "--name", "back")
    back = json.loads(adapters("apply", "wave/back", "--eval", "--json", "--variant", "shifted").stdout)
    assert back["mse"] == adapted["mse"]  # the file holds the same adapter, bit for bit
    listing = adapters("zoo", "list").stdout
    assert f"wave/up@v1  mse {card['headline']['all']['mse']:.4f}" in listing and "wave/both@v1  " in listing
