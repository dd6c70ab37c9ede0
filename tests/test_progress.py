"""One progress display: redrawn on a terminal, a flushed line every few seconds into a file, silent with
--quiet, never on stdout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from capabilities import mnist_data, need

from adapterhub_lite import progress as progress_module
from adapterhub_lite.progress import PIPED_INTERVAL, Progress, set_quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_into_a_file_a_whole_line_every_few_seconds_and_the_last_one(clock) -> None:
    log = io.StringIO()
    with Progress(100, "train", stream=log) as bar:
        for step in range(1, 101):
            clock.now += 0.25  # 4 steps a second: 25 s in all
            bar.update(step, loss=1.0 / step)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == int(25 // PIPED_INTERVAL) + 1  # one per interval, then the final line
    assert lines[0].startswith("train [") and f"{int(PIPED_INTERVAL * 4)}/100 steps 4 steps/s ETA" in lines[0]
    assert lines[-1].startswith("train [" + "#" * 24 + "] 100/100 steps in 0:25 loss 0.01")


def test_on_a_terminal_it_redraws_in_place_at_most_ten_times_a_second(clock) -> None:
    term = Terminal()
    with Progress(50, "fuse", unit="tensors", stream=term) as bar:
        for done in range(1, 51):
            clock.now += 1 / 32  # exact in binary: a redraw is due every 4th update (0.125 s >= 0.1 s)
            bar.update(done)
    text = term.getvalue()
    assert text.count("\r") == 50 // 4 + 1 and text.endswith("50/50 tensors in 0:02\n")  # and the last
    assert text.count("\n") == 1


def test_quiet_silences_it_and_an_error_leaves_a_clean_line(clock) -> None:
    log = io.StringIO()
    set_quiet(True)
    try:
        with Progress(10, "quiet", stream=log) as bar:
            clock.now += 60
            bar.update(10)
    finally:
        set_quiet(False)
    assert log.getvalue() == ""
    term = Terminal()
    with pytest.raises(RuntimeError), Progress(10, "fails", stream=term) as bar:
        clock.now += 1
        bar.update(3)
        raise RuntimeError("boom")
    assert term.getvalue().endswith("3/10 steps 3 steps/s ETA 0:02\n")  # the error prints on its own line


BUILD = {"profiles": {"p": {"seeds": [0], "steps": [
    {"id": "rb", "command": "train-base", "model": "richboynet", "options": {"steps": 20, "batch_size": 8},
     "data": {"classes": [0, 1]}},
    {"id": "nines", "command": "train", "model": "richboynet", "base": "rb",
     "adapter": {"rank": 1, "alpha": 1, "targets": ["linear*"]}, "options": {"steps": 5, "batch_size": 8},
     "data": {"classes": [9]}},
]}}}


@pytest.mark.parametrize("flags", [[], ["--quiet"]], ids=["progress", "quiet"])
def test_a_piped_build_reports_steps_and_progress_and_json_stays_clean(flags, tmp_path) -> None:
    need("mnist-data", mnist_data())
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(BUILD))
    run = subprocess.run([sys.executable, "-m", "adapterhub_lite", *flags, "zoo", "build", "--profile", "p",
                          "--recipes", str(recipes), "--zoo", str(tmp_path / "zoo"), "--json"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "ADAPTERS_QUIET": ""})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["profile"] == "p"  # stdout: the JSON and nothing else
    announced = "[1/2] seed 0 rb: train-base ..." in run.stderr
    trained = "richboynet base [" + "#" * 24 + "] 20/20 steps in " in run.stderr
    assert "[2/2] seed 0 nines: accuracy" in run.stderr  # results print either way
    assert (announced, trained) == ((False, False) if flags else (True, True))
