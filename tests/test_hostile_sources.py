"""Hostile model folders, configs, cards and Hub servers (issue 28): no code runs, no pickle is opened, nothing is
written outside the zoo, the Hub cache or --out, nothing hangs, and each refusal is one line.

In-process cases run under a deadline (a SIGALRM that fails the test); the Hub cases run `adapters` in a
subprocess against a local server (tests/fake_hub.py) that can be told to lie, with a timeout. A custom-code
module and a pickle gadget would each write a marker file if they ever ran: the markers must never appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from capabilities import need_module
import torch
from click.testing import CliRunner
from fake_hub import FakeHub
from safetensors.torch import load_file, save_file
from test_hostile import refused, tree

need_module("hf-plugin", "adapterhub_lite_hf")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from adapterhub_lite import ZooError, parse_json  # noqa: E402
from adapterhub_lite.cli import cli  # noqa: E402
from adapterhub_lite.zoo import Zoo  # noqa: E402


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the block runs longer than `seconds`."""
    def expired(*_: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Gadget:
    """Unpickling this writes the marker file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)).eval()
    gpt2.save_pretrained(root / "gpt2")
    config = json.loads((root / "gpt2" / "config.json").read_text())
    (root / "gpt2.json").write_text(json.dumps(config))
    # custom code that leaves a marker when imported: transformers would import it through auto_map
    code = root / "custom"
    code.mkdir()
    (code / "evil.py").write_text(f"open({str(root / 'CODE-RAN')!r}, 'w').close()\n"
                                  "from transformers import GPT2Model as EvilModel\n")
    (code / "config.json").write_text(json.dumps({**config, "model_type": "evil-custom", "_name_or_path": str(code),
                                                  "auto_map": {"AutoModel": "evil.EvilModel",
                                                               "AutoConfig": "evil.EvilConfig"}}))
    (root / "auto_map_gpt2.json").write_text(json.dumps({**config, "architectures": ["AutoModel"],
                                                         "_name_or_path": str(code),
                                                         "auto_map": {"AutoModel": "evil.EvilModel"}}))
    with open(root / "gadget.pth", "wb") as handle:
        pickle.dump({"state_dict": _Gadget(root / "PICKLE-OPENED")}, handle)
    return root


def run(zoo: Path | None, *args: str, seconds: int = 120):
    """`adapters ARGS [--zoo ZOO]` in-process, under a deadline."""
    with deadline(seconds):
        return CliRunner().invoke(cli, [*args, *(["--zoo", str(zoo)] if zoo is not None else [])])


def no_markers(corpus: Path) -> None:
    assert not (corpus / "CODE-RAN").exists(), "code from a model folder ran"
    assert not (corpus / "PICKLE-OPENED").exists(), "a pickle was opened"


def _folder_variant(corpus: Path, tmp_path: Path, config: dict[str, Any] | None = None,
                    tensors: Any = None) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(corpus / "gpt2", folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors(load_file(str(folder / "model.safetensors"))), str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    return folder


def _config(corpus: Path, tmp_path: Path, name: str, data: Any, text: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else json.dumps(data))
    return path


# --- 1. no code runs ----------------------------------------------------------------------------------------------
def test_custom_code_configs_and_folders_are_one_line_and_run_nothing(corpus, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("a prompt was shown"))
    zoo = tmp_path / "zoo"
    gpt2 = json.loads((corpus / "gpt2.json").read_text())
    folder = _folder_variant(corpus, tmp_path, {**gpt2, "auto_map": {"AutoModel": "evil.EvilModel"},
                                                "_name_or_path": str(corpus / "custom")})
    for args in (["--config", str(corpus / "custom" / "config.json")],
                 ["--config", str(corpus / "auto_map_gpt2.json")],
                 ["--from-pretrained", str(folder)]):
        start = time.monotonic()
        refused(run(zoo, "zoo", "add-base", "evil", *args), "custom code", "never run")
        assert time.monotonic() - start < 60
    no_markers(corpus)
    assert not zoo.exists()


@pytest.mark.parametrize("field, value, needle", [
    ("architectures", ["AutoTokenizer"], "tokenizers, pipelines and trainers are not models"),
    ("architectures", ["Trainer"], "tokenizers, pipelines and trainers are not models"),
    ("architectures", ["pipeline"], "tokenizers, pipelines and trainers are not models"),
    ("architectures", ["__class__"], "no model class"),
    ("model_type", "no-such-type", "knows no model_type 'no-such-type'"),
])
def test_only_model_classes_are_built(corpus, tmp_path, field, value, needle) -> None:
    config = {**json.loads((corpus / "gpt2.json").read_text()), field: value}
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(_config(corpus, tmp_path, "c.json", config))),
            needle)
    assert not (tmp_path / "zoo").exists()


def test_diffusers_pipelines_and_schedulers_are_not_models(corpus, tmp_path) -> None:
    for name in ("DiffusionPipeline", "StableDiffusionPipeline", "DDPMScheduler", "__init__"):
        path = _config(corpus, tmp_path, "d.json", {"_class_name": name, "_diffusers_version": "0.42.1"})
        refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(path)), "not models")
    assert not (tmp_path / "zoo").exists()


# --- 2. no pickle is opened, no network unless asked ---------------------------------------------------------------
def test_timm_checkpoint_arguments_are_refused_and_never_loaded(corpus, tmp_path, monkeypatch) -> None:
    def spy(*args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"torch.load was called: {args}")

    monkeypatch.setattr(torch, "load", spy)
    cases = [({"architecture": "resnet18", "model_args": {"checkpoint_path": str(corpus / "gadget.pth")}},
              "'checkpoint_path' would make timm load a checkpoint"),
             ({"architecture": "resnet18", "model_args": {"pretrained_cfg_overlay": {"file": "x.pth"}}},
              "'pretrained_cfg_overlay'"),
             ({"architecture": "resnet18", "model_args": {"pretrained": True}}, "'pretrained'"),
             ({"architecture": "hf-hub:me/evil"}, "timm has no model 'hf-hub:me/evil'"),
             ({"architecture": "local-dir:" + str(corpus)}, "timm has no model"),
             ({"architecture": "resnet18", "model_args": ["not", "an", "object"]}, "model_args is not an object")]
    cases += [({"architecture": "resnet18", "model_args": {key: "x"}}, f"'{key}'")
              for key in ("cache_dir", "weights_file", "config_url", "hub_id", "path")]
    for config, needle in cases:
        refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config",
                    str(_config(corpus, tmp_path, "t.json", config))), needle)
    no_markers(corpus)
    assert not (tmp_path / "zoo").exists()
    fine = {"architecture": "resnet18", "num_classes": 3, "model_args": {"drop_path_rate": 0.1}}
    result = run(tmp_path / "zoo", "zoo", "add-base", "ok", "--config", str(_config(corpus, tmp_path, "ok.json", fine)))
    assert result.exit_code == 0, result.output  # a rate named like a path is an ordinary argument


def _adapters(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterhub_lite", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)


def _one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return lines[0]


@pytest.fixture
def hub_env(tmp_path):
    def make(hub: FakeHub, **extra: str) -> dict[str, str]:
        return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "hf_x",
                "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
                "HF_HUB_DISABLE_XET": "1", "ADAPTERS_ZOO": str(tmp_path / "zoo"), **extra}
    return make


def test_local_configs_and_folders_never_reach_the_network(corpus, tmp_path, hub_env) -> None:
    """A config naming a Hub model (timm's hf-hub:, transformers' auto_map with a repo) asks the server nothing."""
    (tmp_path / "remote.json").write_text(json.dumps({**json.loads((corpus / "gpt2.json").read_text()),
                                                      "auto_map": {"AutoModel": "me/evil--evil.EvilModel"}}))
    (tmp_path / "hf-hub.json").write_text(json.dumps({"architecture": "hf-hub:me/evil"}))
    with FakeHub({"me/evil": corpus / "custom"}) as hub:
        for config in ("remote.json", "hf-hub.json"):
            _one_line(_adapters("zoo", "add-base", "x", "--config", str(tmp_path / config), env=hub_env(hub)))
        ok = _adapters("zoo", "add-base", "good", "--from-pretrained", str(corpus / "gpt2"), env=hub_env(hub))
        assert ok.returncode == 0, ok.stderr
        assert hub.requests == []
    no_markers(corpus)


# --- 3. nothing written outside the Hub cache, the zoo or --out; downloads bounded ------------------------------
@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> dict[str, Path]:
    """Folders as `adapters push` uploads them: an adapter and its base, and a transformers base."""
    from conftest import seed_adapter, seed_base

    from adapterhub_lite import LoraConfig, get_registry
    from adapterhub_lite.zoo.hub import stage

    root = tmp_path_factory.mktemp("pushed")
    zoo = Zoo(root / "zoo")
    base = seed_base(get_registry(), zoo, "mnist-cnn")
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*"], rank=2), seed=1)
    stage(zoo, "mnist-cnn/a", root / "adapter")
    stage(zoo, "mnist-cnn/base", root / "base")
    return {"adapter": root / "adapter", "base": root / "base", "zoo": root / "zoo"}


def _outside(tmp_path: Path) -> dict[str, Any]:
    """Everything in the sandbox except the Hub cache and the zoo."""
    return {k: v for k, v in tree(tmp_path).items() if not k.startswith(("cache", "zoo"))}


def test_a_pull_from_an_honest_local_hub_works(pushed, tmp_path, hub_env) -> None:
    with FakeHub({"me/base": pushed["base"], "me/a": pushed["adapter"]}) as hub:
        for repo in ("me/base", "me/a@main"):
            result = _adapters("pull", repo, env=hub_env(hub))
            assert result.returncode == 0, result.stderr
    assert Zoo(tmp_path / "zoo").resolve("mnist-cnn/a").card["imported_from"]["repo"] == "me/a@main"


@pytest.mark.parametrize("spec", ["me/a@../../escape", "me/a@..", "me/a@/abs", "me/a@x//y", "../me/a", "me/../a",
                                  "me/a b"])
def test_bad_revisions_and_repo_ids_are_refused_before_any_request(pushed, tmp_path, hub_env, spec) -> None:
    with FakeHub({"me/a": pushed["adapter"]}) as hub:
        before = _outside(tmp_path)
        _one_line(_adapters("pull", spec, env=hub_env(hub)), "bad re")
        assert hub.requests == [] and _outside(tmp_path) == before


@pytest.mark.parametrize("lie, needle", [
    ({"sha": "../../../../escape"}, "not a 40-character hex sha"),
    ({"commit": "../../../../escape"}, "not a 40-character hex sha"),
    ({"etag": "../../../../escape"}, "not a plain token"),
    ({"oid": "../../../../escape"}, "not a plain token"),
    ({"files": ["../../../../escape.json"]}, "not a path inside the repo"),
    ({"content_length": "within the free space", "drip": 64}, "broke off the download"),
])
def test_lying_hub_servers_are_refused_and_nothing_escapes_the_cache(pushed, tmp_path, hub_env, lie, needle) -> None:
    if lie.get("content_length") == "within the free space":  # a size the disk could hold, so the download starts
        lie = {**lie, "content_length": min(10 << 30, shutil.disk_usage(tmp_path).free // 4)}
    with FakeHub({"me/a": pushed["adapter"]}) as hub:
        hub.lies.update(lie)
        before = _outside(tmp_path)
        start = time.monotonic()
        _one_line(_adapters("pull", "me/a", env=hub_env(hub)), needle)
        assert time.monotonic() - start < 90
    assert _outside(tmp_path) == before
    assert not (tmp_path / "escape").exists() and not list(tmp_path.parent.glob("escape*"))
    assert not (tmp_path / "zoo").exists()


def test_downloads_are_bounded_in_size(pushed, tmp_path, hub_env) -> None:
    with FakeHub({"me/a": pushed["adapter"]}) as hub:
        hub.lies.update({"content_length": 10 << 30})
        _one_line(_adapters("pull", "me/a", env=hub_env(hub, ADAPTERS_MAX_DOWNLOAD_GB="1")),
                  "over the 1,073,741,824 this download may take (ADAPTERS_MAX_DOWNLOAD_GB)")
        assert not any(method == "GET" and "/resolve/" in path and "card" not in path
                       for method, path in hub.requests[-1:])


@pytest.mark.parametrize("text, needle", [("9" * 5000, "characters long"), ("[" * 5000 + "]" * 5000, "nested"),
                                         ('"\\u001b[2J"', "lacks model, name or kind")])
def test_a_pulled_card_with_hostile_json_is_one_line(pushed, tmp_path, hub_env, text, needle) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(pushed["adapter"], repo)
    card = (repo / "card.json").read_text()
    (repo / "card.json").write_text(card.replace('"model":', f'"x": {text}, "model":', 1) if "lacks" not in needle
                                    else text)
    with FakeHub({"me/a": repo}) as hub:
        _one_line(_adapters("pull", "me/a", env=hub_env(hub)), needle)
    assert not (tmp_path / "zoo").exists()


def _base_card(pushed: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "hostile-base"
    shutil.copytree(pushed, folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(change(card)))
    return folder


def test_pulled_base_cards_naming_code_or_other_classes_are_refused(corpus, tmp_path, hub_env) -> None:
    """A transformers base pushed from a zoo, its card then edited to name custom code or a non-model class."""
    zoo = tmp_path / "src-zoo"
    ok = _adapters("zoo", "add-base", "tiny", "--from-pretrained", str(corpus / "gpt2"),
                   env={**os.environ, "ADAPTERS_ZOO": str(zoo)})
    assert ok.returncode == 0, ok.stderr
    staged = tmp_path / "staged"
    assert _adapters("push", "tiny/base", "--repo", "me/t", "--dry-run", str(staged),
                     env={**os.environ, "ADAPTERS_ZOO": str(zoo), "HF_HUB_OFFLINE": "1"}).returncode == 0
    custom = {"model_type": "gpt2", "auto_map": {"AutoModel": "me/evil--evil.EvilModel"},
              "_name_or_path": str(corpus / "custom")}
    repos = {"me/auto": _base_card(staged, tmp_path / "1", lambda c: {
                 **c, "config": {**c["config"], "class": "AutoModel", "config": {**c["config"]["config"], **custom}}}),
             "me/trainer": _base_card(staged, tmp_path / "2", lambda c: {
                 **c, "config": {**c["config"], "class": "Trainer"}}),
             "me/honest": staged}
    with FakeHub(repos) as hub:
        _one_line(_adapters("pull", "me/auto", env=hub_env(hub)), "custom code")
        _one_line(_adapters("pull", "me/trainer", env=hub_env(hub)), "not models")
        good = _adapters("pull", "me/honest", env=hub_env(hub))
        assert good.returncode == 0, good.stderr
    no_markers(corpus)


# --- 4. warnings never loop ---------------------------------------------------------------------------------------
def test_a_foreign_warning_prints_once_in_one_line() -> None:
    import click

    from adapterhub_lite.cli import AdaptersGroup

    @click.group(cls=AdaptersGroup)
    def group() -> None: ...

    @group.command("warns")
    def warns() -> None:
        for _ in range(3):
            warnings.warn("torch says something\nover two lines", UserWarning, stacklevel=1)
        warnings.warn("another thing", DeprecationWarning, stacklevel=1)

    group._plugins_loaded = True
    with deadline(20):
        result = CliRunner().invoke(group, ["warns"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["warning: UserWarning: torch says something over two lines",
                                          "warning: DeprecationWarning: another thing"]


# --- 5. bounded work on hostile metadata --------------------------------------------------------------------------
def test_catastrophic_pattern_keys_are_refused_at_once(tmp_path) -> None:
    from test_hostile import MODEL, _peft_variant

    from adapterhub_lite import LoraConfig, get_registry
    from conftest import seed_adapter, seed_base

    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(get_registry(), zoo, MODEL)
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*"], rank=2), seed=1)
    files = tmp_path / "files"
    assert CliRunner().invoke(cli, ["export", f"{MODEL}/a", "--format", "peft", "--out", str(files / "a-peft"),
                                    "--zoo", str(zoo.root)]).exit_code == 0
    before = tree(zoo.root)
    for key in ("(.*.*.*.*.*.*.*.*)*X", "(a+)+$", "(fc|fc)*1", r"(\w+)\1", ".*.*.*fc1"):
        for field in ("alpha_pattern", "rank_pattern"):
            folder = _peft_variant(files, lambda c, f=field, k=key: {**c, f: {k: 2}})
            start = time.monotonic()
            refused(run(zoo.root, "import", str(folder), "--format", "peft", "--model", MODEL, "--name", "p",
                        seconds=20), "pattern")
            assert time.monotonic() - start < 10
            shutil.rmtree(folder)
    hostile_targets = LoraConfig(targets=["re:(.*.*.*.*.*)*X"], rank=1)
    from adapterhub_lite import AdaptedModel, ConfigError, load_base

    am = AdaptedModel(load_base(get_registry(), base), registry=get_registry())
    with deadline(10), pytest.raises(ConfigError, match="can backtrack without bound"):
        am.add_adapter("x", hostile_targets)
    assert tree(zoo.root) == before


@pytest.mark.parametrize("text, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),
    ('{"model_type": "gpt2", "n_embd": ' + "9" * 5000 + "}", "an integer 5,000 characters long"),
    ('{"model_type": "gpt2", "x": ' + "[" * 80 + "]" * 80 + "}", "nested more than 64 levels"),
])
def test_deep_or_huge_json_in_configs_is_one_line(corpus, tmp_path, text, needle) -> None:
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config",
                str(_config(corpus, tmp_path, "j.json", None, text)), "--source", "transformers"), needle)
    folder = _folder_variant(corpus, tmp_path)
    (folder / "config.json").write_text(text)
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--from-pretrained", str(folder), "--source",
                "transformers"), needle)
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(text)
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--from-pretrained", str(pipeline)), needle)
    assert not (tmp_path / "zoo").exists()


def test_configs_too_large_for_a_card_are_refused_before_any_write(corpus, tmp_path) -> None:
    gpt2 = json.loads((corpus / "gpt2.json").read_text())
    big = _config(corpus, tmp_path, "big.json", {**gpt2, "extra": list(range(1_500_000))})
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(big), seconds=60), "no installed model "
            "source recognises")  # detection reads no oversize file either
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(big), "--source", "transformers",
                seconds=60), "over the 4,194,304")
    many = _config(corpus, tmp_path, "many.json", {**gpt2, "extra": [0] * 1_100_000})
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(many), "--source", "transformers",
                seconds=60), "more than 1,000,000 values")
    assert not (tmp_path / "zoo").exists()
    zoo = Zoo(tmp_path / "zoo2")  # the card writer itself: a card the zoo could not read back is never written
    with pytest.raises(ZooError, match="refusing to write a card"):
        zoo.add_version("m", "base", lambda folder: (folder / "model.safetensors").write_bytes(b""),
                        {"kind": "base", "fingerprint": "0" * 64, "config": {"x": "y" * (17 << 20)}})
    assert not zoo.root.exists()


@pytest.mark.parametrize("change, needle", [
    ({"n_layer": 10_000_000}, "more than 5,000 modules"),
    ({"vocab_size": 1 << 40, "n_embd": 1 << 10}, "over the limit of"),
])
def test_a_small_config_declaring_a_huge_model_is_refused_before_allocating(corpus, tmp_path, monkeypatch, change,
                                                                             needle) -> None:
    import resource

    from adapterhub_lite import model_budget

    monkeypatch.setattr(model_budget, "MAX_MODULES", 5_000)  # the default, 50,000, takes a while to reach

    config = {**json.loads((corpus / "gpt2.json").read_text()), **change}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config",
                str(_config(corpus, tmp_path, "huge.json", config)), seconds=60), needle)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB: the peak moved by at most this
    assert grown < 1 << 20, f"peak memory grew by {grown >> 10} MB"
    assert not (tmp_path / "zoo").exists()


def test_the_model_size_limit_is_stated_and_settable(corpus, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADAPTERS_MAX_MODEL_GB", "0.00001")
    line = refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--config", str(corpus / "gpt2.json")),
                   "ADAPTERS_MAX_MODEL_GB")
    assert "over the limit of 0.0 GB" in line
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--from-pretrained", str(corpus / "gpt2")),
            "whose weights files hold")


# --- 6. bases are what the folder holds -------------------------------------------------------------------------
@pytest.mark.parametrize("change, needle", [
    (lambda t: {k: v for k, v in t.items() if not k.endswith("attn.c_attn.weight")}, "lack tensors"),
    (lambda t: {**t, "unrelated.weight": torch.zeros(3)}, "unexpected tensors"),
    (lambda t: {"unrelated.weight": torch.zeros(3)}, "lack tensors"),
    (lambda t: {k: (v * 100).to(torch.int32) if v.dim() == 2 else v for k, v in t.items()}, "refusing to cast"),
    (lambda t: {k: v[:-1] if k.endswith("wpe.weight") else v for k, v in t.items()}, "mis-shaped"),
])
def test_a_folder_whose_weights_do_not_fill_the_model_is_refused(corpus, tmp_path, change, needle) -> None:
    folder = _folder_variant(corpus, tmp_path, tensors=change)
    refused(run(tmp_path / "zoo", "zoo", "add-base", "x", "--from-pretrained", str(folder)), needle)
    assert not (tmp_path / "zoo").exists()


def test_a_diffusers_folder_whose_weights_do_not_fill_the_model_is_refused(tmp_path) -> None:
    from test_sd_interop import tiny_unet

    tiny_unet().save_pretrained(tmp_path / "unet")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    for change, needle in ((lambda t: {k: v for k, v in t.items() if k != "conv_in.weight"}, "lack tensors"),
                           (lambda t: {**t, "junk.weight": torch.zeros(2)}, "unexpected tensors"),
                           (lambda t: {**t, "conv_in.weight": (t["conv_in.weight"] * 100).int()}, "refusing to cast")):
        save_file(change(tensors), str(weights), metadata={"format": "pt"})
        refused(run(tmp_path / "zoo", "zoo", "add-base", "u", "--from-pretrained", str(tmp_path / "unet")), needle)
    assert not (tmp_path / "zoo").exists()


def test_two_adds_of_one_folder_give_one_fingerprint(corpus, tmp_path) -> None:
    prints = []
    for name in ("one", "two"):
        result = run(tmp_path / "zoo", "zoo", "add-base", name, "--from-pretrained", str(corpus / "gpt2"), "--json")
        assert result.exit_code == 0, result.output
        prints.append(json.loads(result.stdout)["fingerprint"])
    assert prints[0] == prints[1]


# --- 7. one line, never a traceback; control characters neutralised; the report goes on ------------------------
def test_control_characters_from_a_card_never_reach_the_terminal(pushed, tmp_path) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(pushed["zoo"], zoo)
    card_path = zoo / "mnist-cnn" / "a" / "v1" / "card.json"
    card = json.loads(card_path.read_text())
    card["created"] = "\x1b]0;pwned\x07\x1b[2J\rspoof \u202e"
    card["headline"] = {"all": {"accuracy\x1b[31m": 0.5, "note": "\x9b2J\x00"}}
    card_path.write_text(json.dumps(card))
    for args in (["zoo", "show", "mnist-cnn/a"], ["zoo", "list"]):
        result = run(zoo, *args)
        assert result.exit_code == 0, result.output
        assert not any(c in result.output for c in "\x1b\x07\r\u202e"), repr(result.output)
    assert "\\x1b]0;pwned\\x07" in run(zoo, "zoo", "show", "mnist-cnn/a").stdout


@pytest.mark.parametrize("where, value", [
    ("curve", ["a", {"b": 1}, None, [0, "x"], ["y", 1], [0, {"z": 1}]]),
    ("curve", '[[0, 1e999], [1e999, 1], [2, 1]]'), ("curve", [[0, 1.0], [0, 0.5]]),
    ("curve", [[0, 1.0], [10**30, 0.5]]), ("curve", "not a list"), ("curve", [[True, 1], [-5, 2], [3, 1]]),
    ("headline", [1, 2]), ("headline", {"accuracy": "x" * 100}), ("headline", {"all": {"acc": [1]}}),
    ("headline", "text"),
])
def test_the_report_shows_a_damaged_card_as_damaged_and_goes_on(pushed, tmp_path, where, value) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(pushed["zoo"], zoo)
    card_path = zoo / "mnist-cnn" / "a" / "v1" / "card.json"
    card = json.loads(card_path.read_text())
    card["training" if where == "curve" else "headline"] = "PLACEHOLDER"
    raw = value if isinstance(value, str) and value.startswith("[") else json.dumps(value)
    text = json.dumps(card).replace('"PLACEHOLDER"', '{"curve": ' + raw + "}" if where == "curve" else raw)
    card_path.write_text(text)
    result = run(zoo, "zoo", "report", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, (result.output, result.exception)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "mnist-cnn/base@v1" in page and "mnist-cnn/a@v1" in page


@pytest.mark.parametrize("text", ["9" * 5000, "[" * 5000 + "]" * 5000])
def test_huge_integers_and_deep_nesting_in_any_card_leave_zoo_list_working(pushed, tmp_path, text) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(pushed["zoo"], zoo)
    card_path = zoo / "mnist-cnn" / "a" / "v1" / "card.json"
    card_path.write_text(card_path.read_text().replace('"parents"', f'"x": {text}, "parents"', 1))
    listing = run(zoo, "zoo", "list")
    refused(listing, "1 damaged entry")
    assert "mnist-cnn/base@v1  " in listing.stdout and "mnist-cnn/a@v1  DAMAGED" in listing.stdout
    with pytest.raises(ValueError):
        parse_json(card_path.read_bytes())


HOSTILE_JSON = {"deep": "[" * 5000 + "]" * 5000, "integer": "9" * 5000}


@pytest.mark.parametrize("case", HOSTILE_JSON)
def test_huge_integers_and_deep_nesting_in_adapter_files_are_one_line(tmp_path, case) -> None:
    """A PEFT config and a native file's metadata (the CLI), a diffusers file's metadata (the library)."""
    from test_hostile import MODEL, _native_variant, _peft_variant

    from adapterhub_lite import AdapterhubError, LoraConfig, get_registry
    from conftest import seed_adapter, seed_base

    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(get_registry(), zoo, MODEL)
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*"], rank=2), seed=1)
    files = tmp_path / "files"
    for fmt, out in (("native", "a.safetensors"), ("peft", "a-peft")):
        assert CliRunner().invoke(cli, ["export", f"{MODEL}/a", "--format", fmt, "--out", str(files / out),
                                        "--zoo", str(zoo.root)]).exit_code == 0
    before = tree(zoo.root)
    peft_folder = _peft_variant(files, None)
    text = (peft_folder / "adapter_config.json").read_text()
    (peft_folder / "adapter_config.json").write_text(text.replace('"r":', f'"x": {HOSTILE_JSON[case]}, "r":', 1))
    refused(run(zoo.root, "import", str(peft_folder), "--format", "peft", "--model", MODEL, "--name", "p"),
            "characters long" if case == "integer" else "nested")

    def hostile_metadata(tensors, metadata):
        return tensors, {**metadata, "adapterhub_lite": metadata["adapterhub_lite"].replace(
            '"name":', f'"x": {HOSTILE_JSON[case]}, "name":', 1)}

    native = _native_variant(files, "bad", hostile_metadata)
    refused(run(zoo.root, "import", str(native), "--model", MODEL, "--name", "n"),
            "characters long" if case == "integer" else "nested")
    refused(run(None, "inspect", str(native)), "characters long" if case == "integer" else "nested")
    assert tree(zoo.root) == before

    from diffusers.loaders import StableDiffusionLoraLoaderMixin as SD
    from peft import get_peft_model_state_dict
    from test_sd_interop import _peft_lora, import_file, ours, tiny_unet

    unet = tiny_unet()
    config = _peft_lora(unet, ["to_q"], rank=2, alpha=4, seed=5)
    SD.save_lora_weights(tmp_path / "sd", unet_lora_layers=get_peft_model_state_dict(unet),
                         unet_lora_adapter_metadata=config)
    path = tmp_path / "sd" / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    saved = metadata["lora_adapter_metadata"]
    patterned = json.dumps({**json.loads(saved), "unet.alpha_pattern": {"(.*.*.*.*.*)*X": 2}})
    for hostile in ('{"x": ' + HOSTILE_JSON[case] + ", " + saved.lstrip()[1:], patterned):
        save_file(tensors, str(path), metadata={**metadata, "lora_adapter_metadata": hostile})
        am = ours()
        with deadline(20), pytest.raises(AdapterhubError, match="characters long|nested|pattern"):
            import_file(am, path, "diffusers", "d")
