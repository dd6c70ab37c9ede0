"""Commands that look at what is installed and at files: `plugins`, `inspect`."""

from __future__ import annotations

from pathlib import Path

import click

from ..hookspecs import PROJECT
from .group import AdaptersGroup, cli, echo_json


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins and everything each registers.

    \b
    ADAPTERS_LOAD_PLUGINS=a,b loads only those plugins (empty: none);
    ADAPTERS_TRACE_PLUGINS=1 traces every hook call on stderr;
    ADAPTERS_STRICT_PLUGINS=1 makes a plugin that cannot load an error (default:
    set aside with one warning, listed here as NOT LOADED).
    """
    from ..registry import get_registry

    group = click.get_current_context().find_root().command
    owners = group.command_owners if isinstance(group, AdaptersGroup) else {}
    registry = get_registry()
    described = registry.describe(owners)
    broken = [{"name": name, "loaded": False, "error": why} for name, why in registry.pm.broken.items()]
    if as_json:
        echo_json(described + broken)
        return
    for entry in broken:
        click.echo(f"{entry['name']}  NOT LOADED: {entry['error']}")
    if not described:
        click.echo(f"no plugins found (entry-point group {PROJECT!r}); install one, e.g. plugins/adapterhub-lite-lora")
        return
    labels = {"kinds": "adapter kinds", "models": "models", "combine_methods": "combine methods", "formats": "formats",
              "sources": "model sources"}
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
    from ..serialization import read_adapter_file

    file = read_adapter_file(path)
    meta = dict(file.meta)
    meta["file"] = {"path": str(path), "bytes": path.stat().st_size, "tensors": len(file.keys)}
    if as_json:
        echo_json(meta)
        return
    click.echo(f"{meta['name']}: {meta['family']} adapter for {meta.get('base_model', '?')} "
               f"(base {str(meta.get('base_fingerprint', '?'))[:12]}), {meta['file']['bytes']:,} bytes")
    click.echo(f"  written by adapterhub_lite {meta.get('library_version', '?')} at {meta.get('created', '?')}")
    for module, target in sorted(meta["targets"].items()):
        details = ", ".join(f"{k}={v}" for k, v in target.items() if k != "kind")
        click.echo(f"  {module}: {target['kind']}" + (f" ({details})" if details else ""))
