"""The command line, black-box through click's runner: exit codes, one-line errors, --help, --json."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TinyNet, randomize_adapters

from adapterhub_lite import AdaptedModel, LoraConfig
from adapterhub_lite.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def adapter_file(tmp_path, registry):
    torch.manual_seed(0)
    model = TinyNet()
    am = AdaptedModel(model, base_id="tiny", registry=registry)
    am.add_adapter("style", LoraConfig(targets=["fc*"], rank=2, alpha=4))
    randomize_adapters(model)
    return am.save_adapter("style", tmp_path / "style.safetensors")


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_help_teaches_every_command(runner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in cli.list_commands(None):
        assert command in result.output
        sub = runner.invoke(cli, [command, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output


def test_version(runner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_plugins_text(runner) -> None:
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "lora (adapterhub-lite-lora" in result.output
    assert "adapter kind: lora-conv2d [Conv2d]" in result.output


def test_inspect_text_and_json(runner, adapter_file) -> None:
    text = runner.invoke(cli, ["inspect", str(adapter_file)])
    assert text.exit_code == 0, text.output
    assert text.output.startswith("style: lora adapter for tiny (base ")
    assert "  fc1: lora-linear (rank=2, alpha=4.0)" in text.output
    data = json.loads(runner.invoke(cli, ["inspect", str(adapter_file), "--json"]).output)
    assert data["targets"]["fc2"] == {"kind": "lora-linear", "rank": 2, "alpha": 4.0}
    assert data["file"]["tensors"] == 4 and data["file"]["bytes"] == adapter_file.stat().st_size


def test_inspect_bad_input_is_one_line(runner, tmp_path) -> None:
    line = _one_error_line(runner.invoke(cli, ["inspect", str(tmp_path / "missing.safetensors")]))
    assert "no adapter file at" in line
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 10)
    assert "not a readable safetensors file" in _one_error_line(runner.invoke(cli, ["inspect", str(garbage)]))


def test_unknown_command_is_a_usage_error(runner) -> None:
    result = runner.invoke(cli, ["plugin"])
    assert result.exit_code == 2 and "No such command 'plugin'" in result.stderr


def test_startup_and_listing_never_import_torchvision() -> None:
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from adapterhub_lite.cli import cli; "
            "r = CliRunner().invoke(cli, ['plugins', '--json']); assert r.exit_code == 0, r.output; "
            "print('torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_a_reader_that_stops_early_gets_no_error_message() -> None:
    """`adapters plugins | head -1`: the closed pipe is not an error worth a line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "adapterhub_lite", "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away (as head does after its lines) before the command writes at all
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


@pytest.mark.parametrize(("options", "message"), [
    (["--dial-draws", "4"], "dial draws sets how many dial weights each batch trains: it needs --dial"),
    (["--dial", "--dial-draws", "0"], "dial draws is a whole number of weights per batch (1 or more), got 0"),
    (["--dial-power", "2"], "dial power sets how dial weights are drawn: it needs --dial"),
])
def test_train_dial_options_are_refused_before_the_zoo_is_touched(runner, tmp_path, options, message) -> None:
    zoo = tmp_path / "zoo"
    line = _one_error_line(runner.invoke(cli, ["train", "richboynet", "style", *options, "--zoo", str(zoo)]))
    assert message in line
    assert not zoo.exists()
