"""Training into the zoo and applying from it, end to end on real MNIST with tiny step counts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from capabilities import mnist_data, need
import torch
from click.testing import CliRunner

from adapterhub_lite import IncompatibleAdapterError, LoraConfig, get_registry
from adapterhub_lite.cli import cli
from adapterhub_lite.fingerprint import state_fingerprint
from adapterhub_lite.training import TrainOptions
from adapterhub_lite.zoo.evaluation import DataOptions
from adapterhub_lite.zoo.loading import load_base, stack
from adapterhub_lite.zoo.train import train_adapter, train_base
from adapterhub_lite.zoo import Zoo

need("mnist-data", mnist_data())
QUICK = TrainOptions(steps=40, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def zoo_with_base(tmp_path_factory) -> Zoo:
    zoo = Zoo(tmp_path_factory.mktemp("zoo"))
    train_base(get_registry(), zoo, "richboynet", QUICK, DataOptions(task={"classes": [0, 1, 9]}))
    train_adapter(get_registry(), zoo, "richboynet", "digit9", LoraConfig(targets=["linear*"], rank=1, alpha=1),
                  QUICK, DataOptions(task={"classes": [9]}))
    return zoo


def test_base_card_and_reproducibility(zoo_with_base, tmp_path) -> None:
    entry = zoo_with_base.resolve("richboynet")
    card = entry.card
    assert card["kind"] == "base" and card["parameters"] == 2_807_010
    assert card["recipe"] == {"command": "train-base", "epochs": 1, "steps": 40, "batch_size": 16, "lr": 0.001,
                              "seed": 0, "replay": 0, "schedule": "constant", "classes": [0, 1, 9],
                              "from": None}
    assert card["training"]["steps"] == 40 and card["training"]["world_size"] == 1
    assert set(card["metrics"]["per_class"]) == {"0", "1", "9"}  # evaluated on the classes it learned
    assert card["metrics"]["per_class"]["1"]["correct"] > 0
    assert card["splits"]["val"].startswith("5,000 MNIST train images held out")
    val = card["validation"]  # measured on the held-out split too, for choosing recipes
    assert set(val["per_class"]) == {"0", "1", "9"} and val["total"] < card["metrics"]["total"]
    assert card["training"]["threads"] == torch.get_num_threads()
    again = train_base(get_registry(), Zoo(tmp_path), "richboynet", QUICK, DataOptions(task={"classes": [0, 1, 9]}))
    assert again.card["fingerprint"] == card["fingerprint"]  # same seed, same weights, bit for bit
    assert again.card["metrics"] == card["metrics"]


def test_adapter_training_leaves_the_base_alone(zoo_with_base) -> None:
    registry = get_registry()
    base_entry = zoo_with_base.resolve("richboynet")
    card = zoo_with_base.resolve("richboynet/digit9@v1").card
    assert card["base"] == {"ref": "richboynet/base@v1", "version": 1, "fingerprint": base_entry.card["fingerprint"]}
    assert card["modules"] == ["linear1", "linear2", "linear3"] and card["parameters"] == 6794
    assert card["trainable_percent"] == pytest.approx(0.242, abs=0.001)
    assert set(card["metrics"]) == {"all", "trained_classes"} == set(card["validation"])
    assert card["metrics"]["trained_classes"]["total"] == 1009
    after = state_fingerprint(load_base(registry, base_entry).state_dict())  # load_base checks the file too
    assert after == base_entry.card["fingerprint"]
    am, base = stack(registry, zoo_with_base, ["richboynet/digit9"])
    assert base.ref == "richboynet/base@v1" and am.active == {"digit9": 1.0}


def test_cli_train_and_apply_json(zoo_with_base) -> None:
    runner = CliRunner()
    zoo = str(zoo_with_base.root)
    result = runner.invoke(cli, ["train", "richboynet", "nines", "--rank", "1", "--alpha", "1", "--targets", "linear*",
                                 "--classes", "9", "--steps", "20", "--batch-size", "10", "--zoo", zoo])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote richboynet/nines@v1  accuracy ")
    bare = runner.invoke(cli, ["apply", "richboynet", "--eval", "--json", "--zoo", zoo])
    adapted = runner.invoke(cli, ["apply", "richboynet/nines", "--eval", "--json", "--zoo", zoo])
    off = runner.invoke(cli, ["apply", "richboynet/nines=0", "--eval", "--json", "--zoo", zoo])
    bare, adapted, off = (json.loads(r.stdout) for r in (bare, adapted, off))
    assert set(adapted["per_class"]["9"]) == {"correct", "total", "errors"}
    assert 0 <= adapted["accuracy"] <= 1 and adapted["adapters"] == {"nines": 1.0}
    assert sum(v["total"] for v in bare["per_class"].values()) == 10_000
    assert off["per_class"] == bare["per_class"]  # weight 0 is exactly the base
    base_card = zoo_with_base.resolve("richboynet").card["metrics"]  # measured on its classes 0, 1, 9
    assert {d: bare["per_class"][d] for d in base_card["per_class"]} == base_card["per_class"]


def test_adapters_from_another_base_are_refused(zoo_with_base, tmp_path) -> None:
    zoo = Zoo(tmp_path)
    shutil.copytree(zoo_with_base.root / "richboynet", tmp_path / "richboynet")
    train_base(get_registry(), zoo, "richboynet", TrainOptions(steps=5, batch_size=8, seed=1, progress=False),
               DataOptions(task={"classes": [0, 1]}))
    with pytest.raises(IncompatibleAdapterError, match="trained on richboynet/base@v1, not richboynet/base@v2"):
        stack(get_registry(), zoo, ["richboynet@v2", "richboynet/digit9"])


def test_cli_errors_leave_the_zoo_untouched(zoo_with_base) -> None:
    runner = CliRunner()
    zoo = str(zoo_with_base.root)
    listing = sorted(str(p) for p in Path(zoo).rglob("*"))
    cases = [
        (["train", "richboynet", "x", "--targets", "linaer*", "--steps", "1", "--zoo", zoo], "did you mean"),
        (["train", "richboynet", "base", "--steps", "1", "--zoo", zoo], "'base' is reserved"),
        (["train", "richbynet", "x", "--zoo", zoo], "unknown model 'richbynet'; did you mean 'richboynet'"),
        (["apply", "richboynet/digit9@v9", "--eval", "--zoo", zoo], "has no v9; versions: v1"),
        (["apply", "richboynet/digit9=abc", "--eval", "--zoo", zoo], "bad weight 'abc'"),
        (["train", "richboynet", "x", "--rank", "0", "--zoo", zoo], "rank must be a positive integer"),
        (["train-base", "richboynet", "--data-dir", "/nonexistent", "--steps", "1", "--zoo", zoo],
         "MNIST is not readable under /nonexistent"),
        (["train-base", "richboynet", "--model-arg", "depth=2", "--steps", "1", "--zoo", zoo],
         "model 'richboynet' takes no argument 'depth'; it takes: hidden1, hidden2, num_classes"),
        (["train-base", "richboynet", "--model-arg", "hidden1=wide", "--steps", "1", "--zoo", zoo],
         "model 'richboynet' cannot be built with hidden1='wide'"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert sorted(str(p) for p in Path(zoo).rglob("*")) == listing
    usage = runner.invoke(cli, ["train", "richboynet", "x", "--classes", "12", "--zoo", zoo])
    assert usage.exit_code == 2 and "digits are 0 to 9" in usage.stderr
    for model_arg, message in [("hidden1", "is not KEY=VALUE"), ("hidden1=NaN", "NaN is not a finite number"),
                               ("1x=8", "is not an argument name")]:
        usage = runner.invoke(cli, ["train-base", "richboynet", "--model-arg", model_arg, "--zoo", zoo])
        assert usage.exit_code == 2 and message in usage.stderr, usage.stderr
    usage = runner.invoke(cli, ["train-base", "richboynet", "--from", "richboynet/base@v1", "--model-arg",
                                "hidden1=8", "--zoo", zoo])
    assert usage.exit_code == 2 and "--from fine-tunes a base with its own config" in usage.stderr
    assert sorted(str(p) for p in Path(zoo).rglob("*")) == listing


def test_train_base_model_args_build_the_network_and_stay_in_its_card(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["train-base", "richboynet", "--model-arg", "hidden1=16", "--model-arg",
                                      "hidden2=8", "--steps", "2", "--batch-size", "4", "--classes", "0,1",
                                      "--zoo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    entry = Zoo(tmp_path).resolve("richboynet")
    assert entry.card["config"] == {"hidden1": 16, "hidden2": 8}  # JSON values, not text
    model = load_base(get_registry(), entry)
    assert model.linear1.out_features == 16 and model.linear2.out_features == 8


def test_torchrun_two_processes_write_exactly_one_version(tmp_path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "adapterhub_lite", "train-base",
         "richboynet", "--steps", "6", "--batch-size", "8", "--classes", "0,1", "--zoo", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    zoo = Zoo(tmp_path)
    assert zoo.versions("richboynet", "base") == [1]
    card = zoo.resolve("richboynet").card
    assert card["training"]["world_size"] == 2
    assert result.stdout.count("wrote richboynet/base@v1") == 1


def test_zoo_list_and_show(zoo_with_base) -> None:
    runner = CliRunner()
    zoo = str(zoo_with_base.root)
    listing = runner.invoke(cli, ["zoo", "list", "--zoo", zoo])
    assert listing.exit_code == 0
    assert "richboynet/base@v1  accuracy " in listing.stdout and "2,807,010 params" in listing.stdout
    rows = json.loads(runner.invoke(cli, ["zoo", "list", "richboynet", "--json", "--zoo", zoo]).stdout)
    base_row = next(r for r in rows if r["ref"] == "richboynet/base@v1")
    assert base_row["kind"] == "base" and base_row["bytes"] > 11_000_000
    adapter_row = next(r for r in rows if r["ref"] == "richboynet/digit9@v1")
    assert adapter_row["base"] == "richboynet/base@v1" and adapter_row["bytes"] < 100_000
    shown = runner.invoke(cli, ["zoo", "show", "richboynet/digit9", "--zoo", zoo])
    assert shown.exit_code == 0 and "trained classes accuracy" in shown.stdout and "errors per digit" in shown.stdout
    card = json.loads(runner.invoke(cli, ["zoo", "show", "richboynet/digit9@v1", "--json", "--zoo", zoo]).stdout)
    assert card["version"] == 1 and card["files"]["adapter.safetensors"] > 0
    missing = runner.invoke(cli, ["zoo", "list", "richbonet", "--zoo", zoo])
    assert missing.exit_code == 1 and "did you mean 'richboynet'" in missing.stderr


def test_unet_sampling_grid(tmp_path) -> None:
    runner = CliRunner()
    zoo = str(tmp_path)
    trained = runner.invoke(cli, ["train-base", "ddpm-unet", "--steps", "2", "--batch-size", "4",
                                  "--eval-samples", "4", "--zoo", zoo])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "grid.png"
    result = runner.invoke(cli, ["apply", "ddpm-unet", "--sample", "4", "--sample-steps", "3", "--out", str(out),
                                 "--zoo", zoo])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.png"
    runner.invoke(cli, ["apply", "ddpm-unet", "--sample", "4", "--sample-steps", "3", "--out", str(again),
                        "--zoo", zoo])
    assert again.read_bytes() == out.read_bytes()  # fixed seed: grids compare across weights
    checked = runner.invoke(cli, ["apply", "ddpm-unet", "--zoo", zoo])  # no action: the stack is loaded, described
    assert checked.exit_code == 0 and "ddpm-unet/base@v1 with no adapters" in checked.output
    assert "needs --out" in runner.invoke(cli, ["apply", "ddpm-unet", "--sample", "2", "--zoo", zoo]).stderr
    no_samples = runner.invoke(cli, ["apply", "richboynet", "--sample", "2", "--out", str(out), "--zoo", zoo])
    assert no_samples.exit_code == 1


def test_summary_line_shows_metrics_measured_on_selected_classes() -> None:
    """An adapter evaluated with --classes (extract --eval --classes 5-9) keeps 'selected_classes': list it."""
    from types import SimpleNamespace

    from adapterhub_lite.cli.options import summary_line

    entry = SimpleNamespace(ref="m/x@v1", card={"metrics": {"selected_classes": {"accuracy": 0.93211}}})
    assert summary_line(entry) == "m/x@v1  selected classes accuracy 0.9321"
