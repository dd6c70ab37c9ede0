"""Commands that only read cards, file headers or the plugin table import no torch (issue: instant CLI).

Checked on the module list `python -X importtime` prints, not on a time: a time
is the benchmark's business (bench/cli.py), an import that creeps in is a bug.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import seed_adapter, seed_base

from adapterhub_lite import AdapterKind, DeferredTask, LoraConfig, PluginError, get_registry
from adapterhub_lite.zoo import Zoo


def imported_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "adapterhub_lite", *args],
                         capture_output=True, text=True, timeout=120)
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return modules - {"package"}, run


@pytest.fixture(scope="module")
def zoo_with_adapter(tmp_path_factory) -> tuple[Zoo, str, str]:
    zoo = Zoo(tmp_path_factory.mktemp("zoo"))
    registry = get_registry()
    base = seed_base(registry, zoo, "richboynet")
    adapter = seed_adapter(registry, zoo, base, "style", LoraConfig(targets=["linear1"], rank=2))
    return zoo, adapter.ref, str(adapter.weights)


def _commands(zoo: Zoo, ref: str, weights: str) -> list[list[str]]:
    return [["--help"], ["plugins"], ["plugins", "--json"], ["zoo", "list", "--zoo", str(zoo.root)],
            ["zoo", "show", ref, "--zoo", str(zoo.root)], ["inspect", weights]]


@pytest.mark.parametrize("index", range(6))
def test_reading_commands_import_no_torch(zoo_with_adapter, index: int) -> None:
    zoo, ref, weights = zoo_with_adapter
    args = _commands(zoo, ref, weights)[index]
    modules, run = imported_modules(*args)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip(), f"{args} printed nothing"
    assert "adapterhub_lite" in modules, "the importtime list was not read"  # the check below can fail
    heavy = sorted(m for m in modules if m == "torch" or m.startswith("torch.") or m.startswith("safetensors.torch"))
    assert not heavy, f"`adapters {' '.join(args)}` imported {heavy[:5]}"


def test_the_check_sees_torch_when_a_command_needs_it(zoo_with_adapter) -> None:
    """The same check on a command that loads a model does find torch: the list is the real one."""
    zoo, ref, _ = zoo_with_adapter
    modules, run = imported_modules("apply", ref, "--eval", "--zoo", str(zoo.root))
    assert "torch" in modules, run.stderr[-1000:]


def test_a_layer_given_by_reference_loads_on_first_use_and_a_typo_names_itself() -> None:
    lora = get_registry().get_kind("lora-linear")
    assert isinstance(lora.layer, str) and lora.layer_class.__name__ == "LoraLinear"
    broken = AdapterKind(name="broken-linear", layer="adapterhub_lite_lora.linear:NoSuchLayer", config=LoraConfig,
                         targets=("torch.nn.Linear",))
    assert broken.layer_name == "NoSuchLayer"
    with pytest.raises(PluginError, match="adapterhub_lite_lora.linear:NoSuchLayer"):
        broken.layer_class
    with pytest.raises(PluginError, match="needs targets"):
        AdapterKind(name="no-targets", layer="adapterhub_lite_lora.linear:LoraLinear", config=LoraConfig)


def test_a_target_named_by_string_matches_its_class_and_not_a_lookalike() -> None:
    import torch.nn as nn

    kind = get_registry().get_kind("lora-linear")
    assert kind.wraps(nn.Linear) and kind.accepts(nn.Linear(2, 2))
    assert not kind.wraps(nn.Conv1d)
    Linear = type("Linear", (nn.Module,), {})  # same short name, another class
    assert not kind.wraps(Linear)


def test_a_deferred_task_builds_its_task_once_and_checks_its_name() -> None:
    task = get_registry().get_model("mnist-cnn").task
    assert isinstance(task, DeferredTask) and task.name == "noisy-classify"
    assert task.resolve() is task.resolve() and task.resolve().noisy
    wrong = DeferredTask("classify", "adapterhub_lite_mnist.tasks:ClassifyTask", noisy=True)
    with pytest.raises(PluginError, match="named 'noisy-classify', registered as 'classify'"):
        wrong.splits
