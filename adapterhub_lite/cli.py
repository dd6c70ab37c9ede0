"""The `adapters` command line: thin commands over the library, one error boundary.

Any `AdapterhubError` becomes one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
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


# --- shared options ----------------------------------------------------------------------------
def _zoo_option(f: Any) -> Any:
    return click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None,
                        help="Zoo directory (default: $ADAPTERS_ZOO, else ./zoo).")(f)


def _data_options(f: Any) -> Any:
    f = click.option("--eval-samples", type=int, default=256, show_default=True,
                     help="Generated images per evaluation (generative models).")(f)
    f = click.option("--style", type=click.Choice(["inverted"]), default=None,
                     help="Train/evaluate on a styled variant (inverted: black digits on white).")(f)
    f = click.option("--classes", default=None, metavar="LIST",
                     help="Only these digits: '9', '0-4' or '5,7'.")(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder holding MNIST/raw (default: $ADAPTERS_DATA, else download).")(f)


def _train_options(f: Any) -> Any:
    f = click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
                     help="Learning-rate schedule (cosine decays to 0 over the run).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, batches and noise.")(f)
    f = click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")(f)
    f = click.option("--batch-size", type=int, default=32, show_default=True)(f)
    f = click.option("--steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")(f)
    f = click.option("--epochs", type=int, default=1, show_default=True)(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the new version's card as JSON.")(f)


def _classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use digits like '9', '0-4' or '5,7'", param_hint="--classes") from None
    if not out or any(c < 0 or c > 9 for c in out):
        raise click.BadParameter(f"{text!r}: digits are 0 to 9", param_hint="--classes")
    return tuple(sorted(set(out)))


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _summary(entry: Any) -> str:
    """One line per zoo entry: its ref and headline metrics (on its trained classes too, if any)."""
    from .workflow import metric_scopes

    metrics = entry.card.get("metrics", {})
    shown = []
    for scope, values in metric_scopes(metrics, single=""):
        label = "" if scope in ("", "all") else f"{scope.replace('_', ' ')} "
        shown += [f"{label}{k} {values[k]:.4f}" for k in ("accuracy", "light_background", "recognisable",
                                                          "max_class_share") if k in values]
    return f"{entry.ref}  " + ", ".join(shown)


# --- zoo ----------------------------------------------------------------------------------------------
@cli.group("zoo")
def zoo_group() -> None:
    """Browse and build the versioned zoo of bases and adapters."""


@zoo_group.command("list")
@click.argument("model", required=False)
@_zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def zoo_list(model: str | None, zoo_dir: Path | None, as_json: bool) -> None:
    """List every base and adapter version (of MODEL, or of all models)."""
    from .zoo import Zoo

    zoo = Zoo(zoo_dir)
    if model and model not in zoo.models():
        from .errors import UnknownNameError

        raise UnknownNameError("zoo model", model, zoo.models(), f"The zoo at {zoo.root} has no such model")
    entries = list(zoo.entries(model))
    rows = []
    for entry in entries:
        card = entry.card
        rows.append({"ref": entry.ref, "kind": card.get("kind"), "bytes": sum(card.get("files", {}).values()),
                     "parameters": card.get("parameters"),
                     "fingerprint": card.get("fingerprint") or card.get("base", {}).get("fingerprint"),
                     "base": card.get("base", {}).get("ref"), "created": card.get("created"),
                     "metrics": card.get("metrics", {})})
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(f"the zoo at {zoo.root} is empty; `adapters train-base MODEL` adds a base")
        return
    for row, entry in zip(rows, entries):
        on = f"on {row['base']}" if row["base"] else f"fp {row['fingerprint'][:12]}"
        click.echo(f"{_summary(entry)}  [{row['kind']}, {row['parameters']:,} params, {row['bytes']:,} bytes, {on}]")


@zoo_group.command("show")
@click.argument("ref")
@_zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def zoo_show(ref: str, zoo_dir: Path | None, as_json: bool) -> None:
    """Show one version's card: config, recipe, data, metrics, fingerprint, parents, sizes."""
    from .workflow import metric_scopes
    from .zoo import Zoo

    entry = Zoo(zoo_dir).resolve(ref)
    if as_json:
        _echo_json(entry.card)
        return
    card = entry.card
    click.echo(_summary(entry))
    for key in ("kind", "created", "task", "fingerprint", "parents", "parameters", "trainable_percent", "files"):
        if key in card:
            click.echo(f"  {key}: {card[key]}")
    click.echo(f"  recipe: {json.dumps(card.get('recipe', {}))}")
    if "config" in card:
        click.echo(f"  config: {json.dumps(card['config'])}")
    metrics = card.get("metrics", {})
    for scope, values in metric_scopes(metrics):
        per_class = values.get("per_class")
        if per_class:
            errors = ", ".join(f"{d}:{v['errors']}" for d, v in per_class.items())
            click.echo(f"  {scope}: accuracy {values['accuracy']:.4f}; errors per digit {errors}")


@zoo_group.command("build")
@click.option("--profile", default="quick", show_default=True, help="Recipe profile to run (see the recipe file).")
@click.option("--quick", is_flag=True, help="Same as --profile quick: a few minutes on 2 cores.")
@click.option("--recipes", type=click.Path(path_type=Path), default=None,
              help="Recipe file (default: recipes.json in the zoo directory).")
@click.option("--seeds", default=None, metavar="LIST", help="Override the profile's seeds, e.g. 0,1,2.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding MNIST/raw (default: $ADAPTERS_DATA, else download).")
@_zoo_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def zoo_build(profile: str, quick: bool, recipes: Path | None, seeds: str | None, data_dir: Path | None,
              zoo_dir: Path | None, as_json: bool) -> None:
    """Build the zoo's experiments from its recipe file, seed by seed.

    \b
    Writes every base and adapter as new zoo versions and the figures to
    <zoo>/results-<profile>.json (per seed, and mean/min/max over seeds).
    Example: adapters zoo build --quick
    """
    from .build import load_recipes, run_profile
    from .registry import get_registry
    from .zoo import Zoo

    zoo = Zoo(zoo_dir)
    book = load_recipes(recipes or zoo.root / "recipes.json")
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    def log(line: str) -> None:
        click.echo(line, err=as_json)
        (sys.stderr if as_json else sys.stdout).flush()  # a long build reports as it goes, even into a file

    report = run_profile(get_registry(), zoo, book, "quick" if quick else profile, data_dir, seed_list, log=log)
    if as_json:
        _echo_json(report)


# --- training ------------------------------------------------------------------------------------------
@cli.command("train-base")
@click.argument("model")
@click.option("--from", "start", default=None, metavar="REF",
              help="Fine-tune all weights of this zoo base (e.g. mnist-cnn@v1) instead of starting from scratch.")
@_train_options
@_data_options
@_zoo_option
def train_base_command(model: str, start: str | None, as_json: bool, epochs: int, steps: int | None,
                       batch_size: int, lr: float, seed: int, schedule: str, data_dir: Path | None,
                       classes: str | None, style: str | None, eval_samples: int, zoo_dir: Path | None) -> None:
    """Train base MODEL from scratch into the zoo as MODEL/base@vN.

    \b
    Example: adapters train-base richboynet --epochs 1 --batch-size 10 --seed 0
    Runs under torchrun too (DDP, gloo): one zoo version is written.
    """
    from .registry import get_registry
    from .training import TrainOptions
    from .workflow import DataOptions, train_base
    from .zoo import Zoo

    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, schedule=schedule)
    data = DataOptions(data_dir, _classes(classes), style, eval_samples)
    entry = train_base(get_registry(), Zoo(zoo_dir), model, options, data, start=start)
    _report(entry, as_json)


@cli.command("train")
@click.argument("model")
@click.argument("name")
@click.option("--base", "base_ref", default=None, help="Base version to train on (default: MODEL's latest base).")
@click.option("--rank", type=int, default=4, show_default=True)
@click.option("--alpha", type=float, default=None, help="Scale numerator (default: the rank, so scale 1).")
@click.option("--targets", multiple=True, help="Module-name globs ('linear*') or 're:REGEX'; repeat or comma-separate. "
              "Default: the model's own choice.")
@click.option("--target-types", multiple=True, help="Module class names, e.g. Linear,Conv2d.")
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Dropout on the adapter's input.")
@click.option("--init", type=click.Choice(["kaiming", "gaussian"]), default="kaiming", show_default=True)
@click.option("--rslora", is_flag=True, help="Scale by alpha/sqrt(rank).")
@click.option("--attention-projections", default="q,k,v,out", show_default=True,
              help="Attention projections to adapt.")
@click.option("--replay", type=int, default=0, show_default=True,
              help="Per batch, add this many samples of the other digits (limits forgetting).")
@_train_options
@_data_options
@_zoo_option
def train_command(model: str, name: str, base_ref: str | None, rank: int, alpha: float | None,
                  targets: tuple[str, ...], target_types: tuple[str, ...], dropout: float, init: str, rslora: bool,
                  attention_projections: str, replay: int, as_json: bool, epochs: int, steps: int | None,
                  batch_size: int, lr: float, seed: int, schedule: str, data_dir: Path | None, classes: str | None,
                  style: str | None, eval_samples: int, zoo_dir: Path | None) -> None:
    """Train adapter NAME on a MODEL base into the zoo as MODEL/NAME@vN.

    \b
    Example: adapters train richboynet digit9 --rank 1 --alpha 1 --targets 'linear*' \\
               --classes 9 --steps 100 --batch-size 10 --seed 0
    """
    from .config import LoraConfig
    from .registry import get_registry
    from .training import TrainOptions
    from .workflow import DataOptions, train_adapter
    from .zoo import Zoo

    registry = get_registry()
    targets, types = _split(targets), _split(target_types)
    if not targets and not types:
        targets = registry.get_model(model).default_targets
    config = LoraConfig(targets=targets, target_types=types, rank=rank, alpha=alpha if alpha is not None else rank,
                        dropout=dropout, init=init, rslora=rslora, attention_projections=attention_projections)
    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, replay=replay,
                           schedule=schedule)
    entry = train_adapter(registry, Zoo(zoo_dir), model, name, config, options,
                          DataOptions(data_dir, _classes(classes), style, eval_samples), base=base_ref)
    _report(entry, as_json)


def _report(entry: Any, as_json: bool) -> None:
    if entry is None:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    if as_json:
        _echo_json(entry.card)
    else:
        click.echo(f"wrote {_summary(entry)}")


# --- apply ---------------------------------------------------------------------------------------------
@cli.command("apply")
@click.argument("refs", nargs=-1, required=True)
@click.option("--eval", "do_eval", is_flag=True, help="Evaluate on the test split.")
@click.option("--sample", type=int, default=0, help="Generate N samples (generative models).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where --sample writes its PNG grid.")
@click.option("--sample-steps", type=int, default=25, show_default=True, help="DDIM steps for --sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds test noise and sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_data_options
@_zoo_option
def apply_command(refs: tuple[str, ...], do_eval: bool, sample: int, out: Path | None, sample_steps: int,
                  seed: int, as_json: bool, data_dir: Path | None, classes: str | None, style: str | None,
                  eval_samples: int, zoo_dir: Path | None) -> None:
    """Stack adapters on their base, each at its weight, then evaluate or sample.

    \b
    REFS: MODEL (the base), MODEL/NAME, MODEL/NAME@v2, MODEL/NAME=0.7 ...
    Examples:
      adapters apply richboynet/digit9 --eval --json
      adapters apply ddpm-unet/inverted=0.5 --sample 64 --out grid.png
    """
    from .registry import get_registry
    from .workflow import DataOptions, evaluate, stack
    from .zoo import Zoo

    if not do_eval and not sample:
        raise click.UsageError("say what to do: --eval and/or --sample N --out FILE")
    if sample and out is None:
        raise click.UsageError("--sample needs --out FILE.png")
    registry, zoo = get_registry(), Zoo(zoo_dir)
    am, base = stack(registry, zoo, list(refs))
    result: dict[str, Any] = {"base": base.ref, "adapters": am.active}
    if sample:
        task = registry.get_model(base.model).task
        images = task.sample(am.model, sample, seed=seed, steps=sample_steps)
        from torchvision.utils import save_image

        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, str(out), nrow=max(1, int(round(sample**0.5))), padding=1)
        result["sample"] = {"n": sample, "seed": seed, "steps": sample_steps, "out": str(out)}
    if do_eval:
        result.update(evaluate(registry, zoo, base.model, am.model,
                               DataOptions(data_dir, _classes(classes), style, eval_samples), seed=seed))
    if as_json:
        result.pop("confusion", None)
        _echo_json(result)
        return
    stacked = " + ".join(f"{w:g} x {n}" for n, w in am.active.items()) or "no adapters"
    click.echo(f"{base.ref} with {stacked}")
    if "accuracy" in result:
        click.echo(f"  accuracy {result['accuracy']:.4f} on {result['total']} test images")
        for digit, v in result["per_class"].items():
            click.echo(f"  digit {digit}: {v['correct']}/{v['total']} correct, {v['errors']} errors")
    for key in ("light_background", "recognisable", "max_class_share", "class_histogram"):
        if key in result:
            click.echo(f"  {key}: {result[key]}")
    if sample:
        click.echo(f"  wrote {sample} samples to {out}")


def main() -> None:
    cli(prog_name="adapters")
