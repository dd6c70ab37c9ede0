"""The `adapters` command line: thin commands over the library.

One module per group of commands; each adds itself to the `cli` group on import.
"""

from __future__ import annotations

from . import applying, inspecting, merging, sharing, training, zoo  # noqa: F401  (each adds its commands to `cli`)
from .group import AdaptersGroup, cli

__all__ = ["AdaptersGroup", "cli", "main"]


def main() -> None:
    cli(prog_name="adapters")
