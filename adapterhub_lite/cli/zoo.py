"""The `zoo` command group: `zoo list`, `zoo show`, `zoo report` look at the zoo; `zoo add-base` brings a model in;
`zoo build` runs a recipe profile into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import registry_and_zoo, summary_line, zoo_option


@cli.group("zoo")
def zoo_group() -> None:
    """Browse and build the versioned zoo of bases and adapters."""


@zoo_group.command("list")
@click.argument("model", required=False)
@zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def zoo_list(model: str | None, zoo_dir: Path | None, as_json: bool) -> None:
    """List every base and adapter version (of MODEL, or of all models).

    \b
    A damaged entry (a card that is not valid, a missing or linked data file)
    is listed as DAMAGED with the reason, after which the command exits with
    status 1; every other entry is still listed.
    """
    from ..errors import UnknownNameError, ZooError
    from ..zoo.store import DamagedEntry, Zoo

    zoo = Zoo(zoo_dir)
    if model and model not in zoo.models():
        raise UnknownNameError("zoo model", model, zoo.models(), f"The zoo at {zoo.root} has no such model")
    found = list(zoo.scan(model))
    rows: list[dict[str, Any]] = []
    for entry in found:
        if isinstance(entry, DamagedEntry):
            rows.append({"ref": entry.ref, "damaged": entry.problem})
            continue
        card = entry.card
        rows.append({"ref": entry.ref, "kind": entry.entry_type, "bytes": sum(card.get("files", {}).values()),
                     "parameters": card.get("parameters"),
                     "fingerprint": card.get("fingerprint") or card.get("base", {}).get("fingerprint"),
                     "base": card.get("base", {}).get("ref"), "created": card.get("created"),
                     "metrics": card.get("metrics", {})})
    damaged = [row for row in rows if "damaged" in row]
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo(f"the zoo at {zoo.root} is empty; `adapters train-base MODEL` adds a base")
    else:
        for row, entry in zip(rows, found):
            if "damaged" in row:
                click.echo(f"{row['ref']}  DAMAGED: {row['damaged']}")
                continue
            on = f"on {row['base']}" if row["base"] else f"fp {str(row['fingerprint'])[:12]}"
            click.echo(f"{summary_line(entry)}  [{row['kind']}, {row['parameters'] or 0:,} params, "
                       f"{row['bytes']:,} bytes, {on}]")
    if damaged:
        raise ZooError(f"{len(damaged)} damaged {'entry' if len(damaged) == 1 else 'entries'} "
                       f"({', '.join(row['ref'] for row in damaged[:3])}{', ...' if len(damaged) > 3 else ''}): "
                       "restore or delete them; the others are listed above")


@zoo_group.command("show")
@click.argument("ref")
@zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def zoo_show(ref: str, zoo_dir: Path | None, as_json: bool) -> None:
    """Show one version's card: config, recipe, data, metrics, fingerprint, parents, sizes."""
    from ..zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    entry = zoo.resolve(ref)
    if as_json:
        echo_json(entry.card)
        return
    card = entry.card
    click.echo(summary_line(entry))
    if entry.is_composition:
        for line in _tree(zoo, entry):
            click.echo(f"  {line}")
    for key in ("kind", "created", "task", "fingerprint", "parents", "parameters", "trainable_percent", "files"):
        if key in card:
            click.echo(f"  {key}: {card[key]}")
    click.echo(f"  recipe: {json.dumps(card.get('recipe', {}))}")
    if "config" in card:
        click.echo(f"  config: {json.dumps(card['config'])}")
    for scope, figures in (card.get("headline") or {}).items():  # the task's own summary, stored at write time
        if isinstance(figures, dict) and figures:
            shown = "; ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
            click.echo(f"  {scope or 'test'}: {shown}")


@zoo_group.command("add-base")
@click.argument("name")
@click.option("--from-pretrained", "pretrained", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="A local checkpoint folder (config.json + *.safetensors, a diffusers model or pipeline folder, "
                   "a timm folder); its weights become the base.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="A model config (JSON) to build with fresh random weights instead (or those of --weights).")
@click.option("--weights", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --config: a safetensors state dict for that model (e.g. timm's model.safetensors).")
@click.option("--source", default=None,
              help="Model source to load with (see `adapters plugins`; default: the one that recognises the path).")
@zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print the new base's card as JSON.")
def zoo_add_base(name: str, pretrained: Path | None, config: Path | None, weights: Path | None,
                 source: str | None, zoo_dir: Path | None, as_json: bool) -> None:
    """Bring your own model into the zoo as base NAME/base@vN.

    \b
    A model source plugin (e.g. adapterhub-lite-hf: transformers, diffusers,
    timm) loads the folder or config; the zoo keeps the weights (safetensors,
    fingerprinted like any base) and what rebuilds the model, so `apply`,
    `combine`, `fuse`, `export` and `import` work on NAME afterwards. --config with
    --weights builds from the config and loads a safetensors state dict. A pickled
    checkpoint (pytorch_model.bin) is refused: convert it to safetensors.
    A Hub id (owner/name) is downloaded only with --source named.
    Example: adapters zoo add-base my-gpt2 --from-pretrained ./gpt2-local
    """
    from ..zoo.sources import add_source_base

    if (pretrained is None) == (config is None):
        raise click.UsageError("give --from-pretrained DIR or --config FILE (one of them)")
    if weights is not None and config is None:
        raise click.UsageError("--weights goes with --config (a --from-pretrained folder has its own weights)")
    registry, zoo = registry_and_zoo(zoo_dir)
    entry = add_source_base(registry, zoo, name, pretrained=pretrained, config=config, weights=weights,
                            source=source)
    if as_json:
        echo_json(entry.card)
        return
    card = entry.card
    click.echo(f"wrote {entry.ref}  [base from {card['source']}, {card['parameters']:,} params, "
               f"fp {card['fingerprint'][:12]}]")


@zoo_group.command("report")
@zoo_option
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder to write index.html and its images into (default: <zoo>/report).")
@click.option("--json", "as_json", is_flag=True, help="Print what the page holds as JSON.")
def zoo_report(zoo_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Write the zoo as a static HTML page: lineage, training curves, per-class charts, build results, grids.

    \b
    Drawn from the cards (the charts by each model's task, from the stored
    metrics) into DIR/index.html, the sample grids into DIR/img/; no script,
    no network. Open DIR/index.html in any browser.
    Example: adapters zoo report --out zoo-report
    """
    from ..zoo.cards import metric_scopes
    from ..errors import UnknownNameError, ZooError
    from ..registry import get_registry
    from ..zoo.store import Zoo
    from ..zoo.report import write_report

    zoo = Zoo(zoo_dir)
    if not zoo.root.is_dir():
        raise ZooError(f"no zoo at {zoo.root}: name one with --zoo, or build one with `adapters zoo build --quick`")
    registry = get_registry()

    def charts_for(entry: Any) -> Any:
        metrics = entry.card.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            return {}
        try:
            task = registry.get_model(entry.model).task
        except UnknownNameError:
            return f"no charts: model {entry.model!r} is not installed (its plugin draws them)"
        if task is None:
            return {}
        try:  # a task's code reading stored metrics: a card it cannot read costs its charts, not the page
            return {scope: task.charts(values) for scope, values in metric_scopes(metrics, single="")
                    if isinstance(values, dict)}
        except Exception as exc:  # noqa: BLE001
            return f"no charts: the task could not read these metrics ({type(exc).__name__}: {str(exc)[:80]})"

    dest = out or zoo.root / "report"
    counts = write_report(zoo, charts_for, dest)
    if as_json:
        echo_json({"path": str(dest / "index.html"), **counts})
        return
    click.echo(f"wrote {dest / 'index.html'}: {counts['entries']} entries, {counts['curves']} training curves, "
               f"{counts['charts']} charts, {counts['results']} build results, {counts['grids']} sample grids"
               + (f", {counts['damaged']} damaged entries listed" if counts["damaged"] else ""))


def _tree(zoo: Any, entry: Any, weight: float = 1.0) -> list[str]:
    """A composition's parts as an indented tree, weights as written and as applied."""
    lines = []
    parts = entry.card.get("parts", [])
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        branch, indent = ("`-- ", "    ") if last else ("|-- ", "|   ")
        w = float(part["weight"])
        try:
            child = zoo.resolve(part["ref"])
        except Exception as exc:  # a missing part is shown, not fatal, in a listing
            lines.append(f"{branch}{w:g} x {part['ref']}  MISSING ({' '.join(str(exc).split())[:80]})")
            continue
        applied = f" (applied at {w * weight:g})" if weight != 1.0 else ""
        lines.append(f"{branch}{w:g} x {child.ref}  [{child.entry_type}]{applied}")
        if child.is_composition:
            lines += [indent + line for line in _tree(zoo, child, w * weight)]
    return lines


@zoo_group.command("build")
@click.option("--profile", default="quick", show_default=True, help="Recipe profile to run (see the recipe file).")
@click.option("--quick", is_flag=True, help="Same as --profile quick: a few minutes on 2 cores.")
@click.option("--recipes", type=click.Path(path_type=Path), default=None,
              help="Recipe file (default: recipes.json in the zoo directory).")
@click.option("--seeds", default=None, metavar="LIST", help="Override the profile's seeds, e.g. 0,1,2.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder the models' tasks read their data from (default: $ADAPTERS_DATA).")
@click.option("--part", is_flag=True,
              help="This run is one share of the seeds of a profile that selects recipes, run beside the others "
                   "(each --seeds S into its own --zoo): choose nothing and measure no candidate on test; "
                   "--select-from does that over all the parts.")
@click.option("--select-from", "parts", multiple=True, type=click.Path(path_type=Path), metavar="ZOO",
              help="Repeatable: the zoos of a profile's --part runs. Choose each search group on the mean over all "
                   "their seeds, measure only the choice on test (in each seed's zoo), and write the combined "
                   "results to --zoo. Trains nothing.")
@zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def zoo_build(profile: str, quick: bool, recipes: Path | None, seeds: str | None, data_dir: Path | None,
              part: bool, parts: tuple[Path, ...], zoo_dir: Path | None, as_json: bool) -> None:
    """Build the zoo's experiments from its recipe file, seed by seed.

    \b
    Writes every base and adapter as new zoo versions and the figures to
    <zoo>/results-<profile>.json (per seed, and mean/min/max over seeds).
    Example: adapters zoo build --quick

    \b
    A profile that selects recipes on two cores, seeds side by side:
      adapters zoo build --profile P --seeds 0 --part --zoo Z0   (and 1, 2)
      adapters zoo build --profile P --select-from Z0 --select-from Z1 --select-from Z2 --zoo OUT
    """
    from ..zoo.build import load_recipes, run_profile, select_across
    from ..errors import ConfigError
    from ..registry import get_registry
    from ..zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    book = load_recipes(recipes or zoo.root / "recipes.json")
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    def log(line: str) -> None:
        click.echo(line, err=as_json)
        (sys.stderr if as_json else sys.stdout).flush()  # a long build reports as it goes, even into a file

    if parts:
        if part or seeds:
            raise ConfigError("--select-from combines finished parts: it takes neither --part nor --seeds",
                              option="select_from")
        report = select_across(get_registry(), [Zoo(p) for p in parts], zoo, book, "quick" if quick else profile,
                               data_dir, log=log)
    else:
        report = run_profile(get_registry(), zoo, book, "quick" if quick else profile, data_dir, seed_list, log=log,
                             part=part)
    if as_json:
        echo_json(report)
