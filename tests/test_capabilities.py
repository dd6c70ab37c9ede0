"""tests/capabilities.py: a missing capability skips here and fails where ADAPTERS_REQUIRE names it (issue 31,
item 8: CI runs what it claims)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
NEEDY = '''
from capabilities import need, need_module
need_module("diffusers", "no_such_module_for_this_test")

def test_runs():
    pass
'''


def _run(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_needy.py").write_text(NEEDY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERS_REQUIRE")}
    env["PYTHONPATH"] = str(TESTS)
    if require is not None:
        env["ADAPTERS_REQUIRE"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           str(tmp_path / "test_needy.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_a_missing_capability_skips_with_a_way_to_get_it(tmp_path) -> None:
    result = _run(tmp_path, None)
    assert result.returncode in (0, 5) and "1 skipped" in result.stdout, result.stdout  # 5: no test ran
    assert "needs diffusers (installed by the README's command" in result.stdout


def test_a_required_capability_that_is_missing_fails_the_run(tmp_path) -> None:
    result = _run(tmp_path, "browser, diffusers")
    assert result.returncode != 0 and "skipped" not in result.stdout.splitlines()[-1], result.stdout
    assert "ADAPTERS_REQUIRE names 'diffusers' but this machine lacks it" in result.stdout


def test_an_unknown_capability_is_a_usage_error(tmp_path) -> None:
    result = _run(tmp_path, "difusers")
    assert result.returncode != 0
    assert "ADAPTERS_REQUIRE names 'difusers'; known: browser, diffusers" in result.stdout + result.stderr


@pytest.mark.parametrize("capability", ["mount-namespace", "diffusers", "hf-plugin", "mnist-data", "browser"])
def test_ci_requires_every_capability(capability) -> None:
    """.ci/run names each capability a test here can skip for (mount namespaces when its machine makes one)."""
    ci = (TESTS.parent / ".ci" / "run").read_text()
    assert capability in ci.split("ADAPTERS_REQUIRE=", 1)[1].split("\n", 1)[0] or \
        (capability == "mount-namespace" and "ADAPTERS_REQUIRE=\"$ADAPTERS_REQUIRE,mount-namespace\"" in ci)
