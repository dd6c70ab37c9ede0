"""CLI start-up: the reading commands against `python -c "import click"`, side by side in one run.

Each command runs as a fresh process (the installed `adapters` script, as a user types it), round-robin with
the click import, so the machine's drift cancels in the paired ratio. The zoo holds one RichBoyNet base and
one LoRA adapter. Target: <= 3x the click import for `--help`, `plugins`, `zoo list`, `zoo show`, `inspect`.
(That they import no torch is checked by tests/test_instant_cli.py on the module list.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from timing import interleaved, medians, paired_ratio


def _seed_zoo(root: Path) -> tuple[str, str]:
    """A zoo with a base and an adapter (written through the library, as train would)."""
    import torch
    from safetensors.torch import save_file

    from adapterhub_lite import AdaptedModel, LoraConfig, Zoo, get_registry, state_fingerprint
    from adapterhub_lite.zoo.loading import load_base

    registry, zoo = get_registry(), Zoo(root)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in registry.create_model("richboynet").state_dict().items()}
    base = zoo.add_version("richboynet", "base", lambda folder: save_file(state, str(folder / "model.safetensors")),
                           {"kind": "base", "config": {}, "fingerprint": state_fingerprint(state), "task": None})
    am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
    config = LoraConfig(targets=["linear1", "linear2"], rank=8)
    am.add_adapter("style", config)
    card = {"kind": "adapter", "family": "lora", "config": config.to_dict(), "modules": am.adapters["style"].modules,
            "base": {"ref": base.ref, "version": base.version, "fingerprint": base.card["fingerprint"]},
            "parents": [base.ref], "parameters": am.parameter_counts()["adapters"]["style"]}
    entry = zoo.add_version("richboynet", "style", lambda f: am.save_adapter("style", f / "adapter.safetensors"), card)
    return entry.ref, str(entry.weights)


def cli_group(repeats: int) -> list[dict[str, Any]]:
    adapters = shutil.which("adapters", path=str(Path(sys.executable).parent)) or "adapters"
    with tempfile.TemporaryDirectory() as tmp:
        ref, weights = _seed_zoo(Path(tmp) / "zoo")
        zoo = str(Path(tmp) / "zoo")
        commands = {"--help": ["--help"], "plugins": ["plugins"], "zoo list": ["zoo", "list", "--zoo", zoo],
                    "zoo show": ["zoo", "show", ref, "--zoo", zoo], "inspect": ["inspect", weights]}
        env = {**os.environ, "ADAPTERS_QUIET": "1"}

        def run(argv: list[str]) -> None:
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)

        fns = [lambda: run([sys.executable, "-c", "import click"])]
        fns += [lambda args=args: run([adapters, *args]) for args in commands.values()]
        times = interleaved(fns, repeats, warmup=1)
    click_s = medians(times)[0]
    rows = []
    for (label, _), t in zip(commands.items(), times[1:]):
        rows.append({"group": "cli", "command": f"adapters {label}", "click_ms": click_s * 1e3,
                     "command_ms": medians([t])[0] * 1e3, "vs_click": paired_ratio(t, times[0])})
        print(f"cli adapters {label}: {rows[-1]['command_ms']:.0f} ms, import click {click_s * 1e3:.0f} ms, "
              f"{rows[-1]['vs_click']:.2f}x", file=sys.stderr, flush=True)
    return rows
