"""The `adapters` click group: plugin commands added on first use, one error boundary.

Any `AdapterhubError` becomes one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import AdapterhubError


class AdaptersGroup(click.Group):
    """A click group that adds plugin commands on first use and owns the error boundary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_owners: dict[str, list[str]] = {}
        self._plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from ..plugins import call_each_plugin
        from ..registry import get_registry

        try:
            before = set(self.commands)
            for name in call_each_plugin(get_registry().pm, "register_commands", cli=self):
                self.command_owners[name] = sorted(set(self.commands) - before)
                before = set(self.commands)
        except AdapterhubError as exc:
            raise click.ClickException(str(exc)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdapterhubError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from exc


@click.group(cls=AdaptersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapterhub-lite", prog_name="adapters")
def cli() -> None:
    """Manage LoRA adapters on PyTorch models: train, stack, merge, export, share.

    \b
    Plugins add adapter kinds, models, merge methods, formats and commands;
    `adapters plugins` shows what is installed.
    """


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))
