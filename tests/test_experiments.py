"""The quick zoo build on real MNIST, with the claims it must support (slow: a few minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capabilities import mnist_data, need
from click.testing import CliRunner

from adapterhub_lite.cli import cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
need("mnist-data", mnist_data())


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    zoo = tmp_path_factory.mktemp("zoo")
    result = CliRunner().invoke(cli, ["zoo", "build", "--quick", "--recipes", str(ROOT / "zoo" / "recipes.json"),
                                      "--zoo", str(zoo)])
    assert result.exit_code == 0, result.output
    return json.loads((zoo / "results-quick.json").read_text())["per_seed"]["0"], zoo


def test_richboynet_and_the_digit9_adapters(quick) -> None:
    runs, _ = quick
    base = runs["richboynet-base"]["metrics"]
    digit9 = runs["digit9"]["metrics"]["all"]
    keep = runs["digit9-keep"]["metrics"]["all"]
    assert base["accuracy"] > 0.9
    assert digit9["per_class"]["9"]["errors"] < base["per_class"]["9"]["errors"] / 2
    assert keep["per_class"]["9"]["errors"] < base["per_class"]["9"]["errors"]
    assert keep["accuracy"] > digit9["accuracy"]  # replay limits the forgetting
    assert runs["digit9"]["parameters"] == 6794


def test_bare_base_is_unchanged_by_its_adapters(quick) -> None:
    runs, zoo = quick
    result = CliRunner().invoke(cli, ["apply", "richboynet", "--eval", "--json", "--zoo", str(zoo)])
    bare = json.loads(result.stdout)
    assert bare["per_class"] == runs["richboynet-base"]["metrics"]["per_class"]


def test_cnn_adapter_learns_the_new_digits(quick) -> None:
    runs, _ = quick
    assert runs["mnist-cnn-base"]["metrics"]["accuracy"] > 0.9  # noisy 0-4
    adapted = runs["digits5to9"]
    assert adapted["metrics"]["trained_classes"]["accuracy"] > 0.6  # noisy 5-9 after one epoch, fc layers only
    assert adapted["trainable_percent"] < 5


def test_unet_style_adapter_runs_and_writes_a_grid(quick) -> None:
    runs, _ = quick
    half = runs["inverted-w0.5"]
    assert Path(half["grid"]).is_file()
    assert 0 <= half["metrics"]["light_background"] <= 1 and "recognisable" in half["metrics"]
