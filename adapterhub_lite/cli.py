"""The `adapters` command line: thin commands over the library, one error boundary.

Any `AdapterhubError` becomes one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .errors import AdapterhubError
from .hookspecs import PROJECT


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
        from .plugins import call_each_plugin
        from .registry import get_registry

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


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins and everything each registers.

    \b
    ADAPTERS_LOAD_PLUGINS=a,b loads only those plugins (empty: none);
    ADAPTERS_TRACE_PLUGINS=1 traces every hook call on stderr.
    """
    from .registry import get_registry

    group = click.get_current_context().find_root().command
    owners = group.command_owners if isinstance(group, AdaptersGroup) else {}
    described = get_registry().describe(owners)
    if as_json:
        _echo_json(described)
        return
    if not described:
        click.echo(f"no plugins found (entry-point group {PROJECT!r}); install one, e.g. plugins/adapterhub-lite-lora")
        return
    labels = {"kinds": "adapter kinds", "models": "models", "merges": "merge methods", "formats": "formats"}
    for entry in described:
        source = f" ({entry['distribution']} {entry['version']})" if entry["distribution"] else ""
        click.echo(f"{entry['name']}{source}")
        for key, label in labels.items():
            for spec in entry[key]:
                extra = f" [{', '.join(spec['targets'])}]" if "targets" in spec else ""
                click.echo(f"  {label[:-1]}: {spec['name']}{extra}  {spec['description']}".rstrip())
        for command in entry["commands"]:
            click.echo(f"  command: {command}")


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Describe an adapter file (.safetensors) without loading a model."""
    from .serialization import read_adapter_file

    file = read_adapter_file(path)
    meta = dict(file.meta)
    meta["file"] = {"path": str(path), "bytes": path.stat().st_size, "tensors": len(file.keys)}
    if as_json:
        _echo_json(meta)
        return
    click.echo(f"{meta['name']}: {meta['family']} adapter for {meta.get('base_model', '?')} "
               f"(base {str(meta.get('base_fingerprint', '?'))[:12]}), {meta['file']['bytes']:,} bytes")
    click.echo(f"  written by adapterhub_lite {meta.get('library_version', '?')} at {meta.get('created', '?')}")
    for module, target in sorted(meta["targets"].items()):
        details = ", ".join(f"{k}={v}" for k, v in target.items() if k != "kind")
        click.echo(f"  {module}: {target['kind']}" + (f" ({details})" if details else ""))


def main() -> None:
    cli(prog_name="adapters")
