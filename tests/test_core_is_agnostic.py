"""The core names no adapter family and no dataset: a plugin brings its own, through the hooks."""

from __future__ import annotations

import re
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "adapterhub_lite"
FORBIDDEN = {
    "the LoRA family's config": re.compile(r"LoraConfig"),
    "a dataset": re.compile(r"mnist", re.I),
    "a first-party model": re.compile(r"richboynet|ddpm|unet", re.I),
    "a digit class list": re.compile(r"range\(10\)|\(0, 1, 2, 3|\[0, 1, 2, 3"),
    "digits as classes": re.compile(r"\bdigit\b|(?<!letters, )\bdigits\b", re.I),
}
LAZY_REEXPORT = 'LoraConfig": "adapterhub_lite_lora"'  # the one allowed mention, in __init__.py


def test_no_core_module_names_a_family_a_dataset_or_its_classes() -> None:
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LAZY_REEXPORT in line:
                continue
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(CORE.parent)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
