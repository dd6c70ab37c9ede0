"""The Hub, offline: the generated model card, the exact folder a push uploads, and pull from a local snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import seed_adapter, seed_base

from adapterhub_lite import LoraConfig, UnknownNameError, get_registry
from adapterhub_lite.zoo.hub import model_card, stage
from adapterhub_lite.zoo import Zoo


@pytest.fixture
def zoo(tmp_path) -> Zoo:
    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(get_registry(), zoo, "mnist-cnn")
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*"], rank=2), seed=1)
    return zoo


def test_model_card_comes_from_the_zoo_card(zoo) -> None:
    text = model_card(zoo.resolve("mnist-cnn/a"))
    assert text.startswith("---\nlibrary_name: adapterhub_lite\n")
    assert "- lora" in text and "# mnist-cnn/a@v1" in text and "An adapter from an adapterhub_lite zoo." in text
    assert "Base: `mnist-cnn/base@v1`" in text and '"rank": 2' in text


def test_push_stages_exactly_these_files(zoo, tmp_path) -> None:
    files = stage(zoo, "mnist-cnn/a", tmp_path / "stage")
    assert files == ["README.md", "adapter.safetensors", "card.json"]
    entry = zoo.resolve("mnist-cnn/a")
    assert (tmp_path / "stage" / "adapter.safetensors").read_bytes() == entry.weights.read_bytes()
    assert json.loads((tmp_path / "stage" / "card.json").read_text()) == entry.card


def _fake_snapshot(cache: Path, repo: str, folder: Path) -> None:
    """The layout huggingface_hub keeps in its cache: refs/main -> snapshots/<commit>/files."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def _adapters(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterhub_lite", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_pull_from_a_local_snapshot_offline(zoo, tmp_path) -> None:
    stage(zoo, "mnist-cnn/a", tmp_path / "stage-a")
    stage(zoo, "mnist-cnn/base", tmp_path / "stage-base")
    cache = tmp_path / "hf-cache"
    _fake_snapshot(cache, "me/cnn-a", tmp_path / "stage-a")
    _fake_snapshot(cache, "me/cnn-base", tmp_path / "stage-base")
    fresh = tmp_path / "fresh-zoo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "ADAPTERS_ZOO": str(fresh)}
    early = _adapters("pull", "me/cnn-a", env=env)  # its base is not here yet
    assert early.returncode == 1 and "which this zoo lacks: pull or build that base first" in early.stderr
    missing = _adapters("pull", "me/nothing", env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: could not download me/nothing")
    assert not fresh.exists() or not any(fresh.rglob("card.json"))
    for repo in ("me/cnn-base", "me/cnn-a@main"):
        result = _adapters("pull", repo, "--json", env=env)
        assert result.returncode == 0, result.stderr
    pulled = Zoo(fresh).resolve("mnist-cnn/a")
    assert pulled.card["imported_from"]["repo"] == "me/cnn-a@main"
    assert Zoo(fresh).resolve("mnist-cnn").card["imported_from"]["repo"] == "me/cnn-base"
    assert pulled.weights.read_bytes() != b"" and pulled.card["base"]["fingerprint"] == \
        zoo.resolve("mnist-cnn/base").card["fingerprint"]
    with pytest.raises(UnknownNameError, match="unknown mnist-cnn entry 'nope'"):
        stage(Zoo(fresh), "mnist-cnn/nope", tmp_path / "x")
