"""Commands that make one thing of several: `combine` (a new adapter), `fuse` (a new base), `merge` (either,
the name the product's command line has always had) and `compose` (a named stack)."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import click

from .group import cli, echo_json
from .options import (
    PluginOptionsCommand,
    config_values,
    data_dir_option,
    first_positional,
    registry_and_zoo,
    summary_line,
    zoo_option,
)


REFS_HELP = "REFS: NAME, NAME@v2, NAME=0.5, NAME=-1 (subtract), or MODEL/NAME...; compositions too."
STREAM_HELP = ("fuse and write tensor by tensor, never holding the model (default: when the base checkpoint is over "
               "4 GiB, or $ADAPTERS_STREAM_ABOVE bytes; not with --eval or --dry-run).")


def _inputs_and_outputs(out_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The arguments and options `combine`, `fuse` and `merge` share."""
    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorate in reversed([
            click.argument("model"), click.argument("refs", nargs=-1, required=True),
            click.option("--out", "out", required=True, metavar="NAME", help=out_help),
            click.option("--dry-run", is_flag=True, help="Check and compute, print the plan, write nothing."),
            click.option("--eval", "do_eval", is_flag=True,
                         help="Evaluate the result and keep the metrics in its card."),
            click.option("--json", "as_json", is_flag=True, help="Print the plan or the new card as JSON."),
            data_dir_option, zoo_option,
        ]):
            command = decorate(command)
        return command
    return apply


@cli.command("combine", cls=PluginOptionsCommand, task=True, combine_methods=True, model_from=first_positional)
@_inputs_and_outputs("Name of the new adapter in the zoo.")
@click.option("--method", default=None, help="How to combine (`adapters plugins` lists the methods).")
def combine_command(model: str, refs: tuple[str, ...], out: str, dry_run: bool, do_eval: bool, as_json: bool,
                    data_dir: Path | None, zoo_dir: Path | None, method: str | None, **plugin_values: Any) -> None:
    """Combine adapters of MODEL into a new adapter version, with a combine method.

    \b
    REFS: NAME, NAME@v2, NAME=0.5, NAME=-1 (subtract), or MODEL/NAME...; compositions too.
    Every input must sit on the same base. The new card records parents, weights and method.
    Each method brings its own options (`adapters combine --method M --help` lists M's).
    Examples:
      adapters combine MODEL task=1 style=0.5 --method cat --out both
      adapters combine MODEL task --method svd --rank 1 --out task-r1   (resize)
      adapters combine MODEL task style --method ties --density 0.3 --out t --dry-run
    """
    _combine(model, refs, method, out, dry_run, do_eval, as_json, data_dir, zoo_dir, plugin_values)


@cli.command("fuse", cls=PluginOptionsCommand, task=True, model_from=first_positional)
@_inputs_and_outputs("Name of the new base in the zoo.")
@click.option("--stream/--no-stream", default=None, help=STREAM_HELP[0].upper() + STREAM_HELP[1:])
def fuse_command(model: str, refs: tuple[str, ...], out: str, dry_run: bool, do_eval: bool, as_json: bool,
                 data_dir: Path | None, zoo_dir: Path | None, stream: bool | None, **plugin_values: Any) -> None:
    """Fuse adapters of MODEL into its weights for good: write a new base version.

    \b
    REFS: NAME, NAME@v2, NAME=0.5, NAME=-1 (subtract), or MODEL/NAME...; compositions too.
    The exact weighted sum of every input, any family; the new base's card records what went in.
    Examples:
      adapters fuse MODEL style=0.5 --out half-styled
      adapters fuse MODEL style=0.5 --stream --out half-styled   (out of core)
    """
    _fuse(model, refs, stream, out, dry_run, do_eval, as_json, data_dir, zoo_dir, plugin_values)


@cli.command("merge", cls=PluginOptionsCommand, task=True, combine_methods=True, model_from=first_positional)
@_inputs_and_outputs("Name of the new adapter (or, with --into-base, of the new base) in the zoo.")
@click.option("--method", default=None, help="How to combine (`adapters plugins` lists the methods).")
@click.option("--into-base", is_flag=True, help="Fuse the adapters into the base weights: write a new base.")
@click.option("--stream/--no-stream", default=None, help="With --into-base: " + STREAM_HELP)
def merge_command(model: str, refs: tuple[str, ...], out: str, dry_run: bool, do_eval: bool, as_json: bool,
                  data_dir: Path | None, zoo_dir: Path | None, method: str | None, into_base: bool,
                  stream: bool | None, **plugin_values: Any) -> None:
    """Combine adapters of MODEL into a new adapter version, or (--into-base) fuse them into a new base.

    \b
    The same as `adapters combine` and, with --into-base, `adapters fuse`, which say one thing each.
    REFS: NAME, NAME@v2, NAME=0.5, NAME=-1 (subtract), or MODEL/NAME...; compositions too.
    Examples:
      adapters merge MODEL task=1 style=0.5 --method cat --out both
      adapters merge MODEL style=0.5 --into-base --out half-styled
    """
    if into_base:
        options = config_values(click.get_current_context().command, plugin_values, "combine")
        if method is not None or options:
            given = ", ".join(["--method", *("--" + k.replace("_", "-") for k in options)][0 if method else 1:])
            raise click.UsageError(f"--into-base fuses the exact weighted sum: drop {given}")
        _fuse(model, refs, stream, out, dry_run, do_eval, as_json, data_dir, zoo_dir, plugin_values)
        return
    if stream is not None:
        raise click.UsageError("--stream applies to --into-base (a combined adapter is small)")
    _combine(model, refs, method, out, dry_run, do_eval, as_json, data_dir, zoo_dir, plugin_values)


def _data(do_eval: bool, data_dir: Path | None, plugin_values: dict[str, Any]) -> Any:
    from ..zoo.evaluation import DataOptions

    task_options = config_values(click.get_current_context().command, plugin_values, "task")
    return DataOptions(data_dir, task_options) if do_eval else None


def _fuse(model: str, refs: tuple[str, ...], stream: bool | None, out: str, dry_run: bool, do_eval: bool,
          as_json: bool, data_dir: Path | None, zoo_dir: Path | None, plugin_values: dict[str, Any]) -> None:
    from ..zoo.fuse import fuse

    registry, zoo = registry_and_zoo(zoo_dir)
    data = _data(do_eval, data_dir, plugin_values)
    plan, entry = fuse(registry, zoo, model, list(refs), out, dry_run=dry_run, data=data, stream=stream)
    if as_json:
        echo_json(plan if entry is None else entry.card)
    elif entry is None:
        fused = " + ".join(f"{f['weight']:g} x {f['ref']}" for f in plan["fused"])
        click.echo(f"would write {plan['out']} (a base): {plan['base']} with {fused} folded in, "
                   f"{plan['parameters']:,} parameters, {plan['bytes']:,} bytes; nothing written")
    else:
        click.echo(f"wrote {summary_line(entry)}")


def _combine(model: str, refs: tuple[str, ...], method: str | None, out: str, dry_run: bool, do_eval: bool,
             as_json: bool, data_dir: Path | None, zoo_dir: Path | None, plugin_values: dict[str, Any]) -> None:
    from ..zoo.combine import plan_combine, write_combined

    registry, zoo = registry_and_zoo(zoo_dir)
    options = config_values(click.get_current_context().command, plugin_values, "combine")
    data = _data(do_eval, data_dir, plugin_values)
    zoo.check_new(model, out, "adapter", writable=not dry_run)
    plan = plan_combine(registry, zoo, model, list(refs), method, None, options)
    described = plan.describe()
    method = plan.method.name
    if dry_run:
        if as_json:
            echo_json({**described, "out": f"{model}/{out}", "ranks": plan.result.report.get("ranks")})
            return
        inputs = ", ".join(f"{i['weight']:g} x {i['ref']}" + _fields(i) for i in described["inputs"])
        click.echo(f"would write {model}/{out}: {method} of {inputs} on {described['base']}")
        click.echo(f"  {_quality(described)}{described['modules'] or 'all'} modules, {described['parameters']:,} "
                   f"parameters, {described['bytes']:,} bytes")
        click.echo("  nothing written")
        return
    entry = write_combined(registry, zoo, plan, out, data)
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}  [{method}, {described['parameters']:,} params"
                   + (f", energy kept {described['energy_kept']:.4f}]" if "energy_kept" in described else "]"))


def _fields(item: dict) -> str:
    """An input's family-named fields in a word, e.g. ' (rank 2, alpha 4)'."""
    named = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in item.items()
             if k not in ("ref", "weight")]
    return f" ({', '.join(named)})" if named else ""


def _quality(described: dict) -> str:
    """What the method reports of the result (ranks, exactness, energy kept), as far as it reports it."""
    parts = []
    ranks = described.get("rank")
    if ranks:
        parts.append(f"rank {ranks['min']}" if ranks["min"] == ranks["max"] else f"rank {ranks['min']}-{ranks['max']}")
    if "exact" in described:
        checked = described.get("exact_deviation")
        parts.append(f"exact: {'yes' if described['exact'] else 'no'}"
                     + (f" (checked: largest deviation {checked:.1e})" if checked is not None else ""))
    if "energy_kept" in described:
        worst = described.get("min_energy_kept")
        parts.append(f"energy kept {described['energy_kept']:.4f}" + (f" (worst weight {worst:.4f})" if worst else ""))
    return "; ".join(parts) + "; " if parts else ""


@cli.command("compose")
@click.argument("model")
@click.argument("name")
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the new card as JSON.")
@zoo_option
def compose_command(model: str, name: str, refs: tuple[str, ...], as_json: bool, zoo_dir: Path | None) -> None:
    """Save a named stack of adapters (exact versions and weights, no tensors) as MODEL/NAME@vN.

    \b
    apply, merge and export accept it wherever they accept an adapter.
    Example: adapters compose MODEL half-styled style=0.5
    """
    from ..zoo.compositions import compose
    from ..zoo.store import Zoo

    entry = compose(Zoo(zoo_dir), model, name, list(refs))
    if as_json:
        echo_json(entry.card)
        return
    parts = " + ".join(f"{p['weight']:g} x {p['ref']}" for p in entry.card["parts"])
    click.echo(f"wrote {entry.ref} = {parts}")
