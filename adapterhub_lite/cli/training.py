"""Commands that train into the zoo: `train-base`, `train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import (
    PluginOptionsCommand,
    config_values,
    data_dir_option,
    first_positional,
    summary_line,
    train_options,
    registry_and_zoo,
    zoo_option,
)


@cli.command("train-base", cls=PluginOptionsCommand, task=True, model_from=first_positional)
@click.argument("model")
@click.option("--from", "start", default=None, metavar="REF",
              help="Fine-tune all weights of this zoo base (e.g. MODEL/base@v1) instead of starting from scratch.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="An argument of the model's constructor, recorded in the card's config so every load rebuilds "
                   "the same network; VALUE is read as JSON when it parses (5, 0.1, [32, 64], true), else as "
                   "text. Repeatable; a KEY the model does not take is refused with the list of those it does.")
@train_options
@data_dir_option
@zoo_option
def train_base_command(model: str, start: str | None, model_args: tuple[str, ...], as_json: bool, epochs: int,
                       steps: int | None, batch_size: int, lr: float, seed: int, schedule: str, ema: float | None,
                       data_dir: Path | None, zoo_dir: Path | None, **task_values: Any) -> None:
    """Train base MODEL from scratch into the zoo as MODEL/base@vN.

    \b
    Example: adapters train-base MODEL --epochs 1 --batch-size 10 --seed 0
    Runs under torchrun too (DDP, gloo): one zoo version is written.
    """
    from ..training import TrainOptions
    from ..zoo.evaluation import DataOptions
    from ..zoo.train import train_base

    if model_args and start is not None:
        raise click.UsageError("--model-arg sets up a new network; --from fine-tunes a base with its own config")
    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, schedule=schedule,
                           ema=ema)
    data = DataOptions(data_dir, config_values(click.get_current_context().command, task_values, "task"))
    entry = train_base(*registry_and_zoo(zoo_dir), model, options, data, parse_model_args(model_args), start=start)
    _report(entry, as_json)


@cli.command("train", cls=PluginOptionsCommand, family=True, task=True, model_from=first_positional)
@click.argument("model")
@click.argument("name")
@click.option("--family", default=None, help="Adapter family to train (see `adapters plugins`; default: the model's "
              "own). Its config fields are options of this command: `adapters train --family F --help` lists them.")
@click.option("--base", "base_ref", default=None, help="Base version to train on (default: MODEL's latest base).")
@click.option("--replay", type=int, default=0, show_default=True,
              help="Per batch, add this many samples from outside the training data (limits forgetting).")
@click.option("--dial", is_flag=True,
              help="Train for every weight: each batch runs the adapter at a random weight w in [0, 1] against "
                   "the task's data blended by w, so NAME=0.5 gives a halfway result (the task must blend).")
@click.option("--dial-power", type=float, default=1.0, show_default=True, metavar="P",
              help="With --dial, draw w with density P w^(P-1): 1 is uniform, 2 trains twice as often near w = 1 "
                   "as at 0.5, for a dial that falls short of the full style at w = 1.")
@click.option("--dial-draws", type=int, default=1, show_default=True, metavar="K",
              help="With --dial, split each batch into K parts, each at its own weight from one of K equal slices "
                   "of [0, 1] (gradients added up), so every step trains the whole dial.")
@train_options
@data_dir_option
@zoo_option
def train_command(model: str, name: str, family: str | None, base_ref: str | None, replay: int, dial: bool,
                  dial_power: float, dial_draws: int, as_json: bool,
                  epochs: int, steps: int | None, batch_size: int, lr: float, seed: int, schedule: str,
                  ema: float | None, data_dir: Path | None, zoo_dir: Path | None, **plugin_values: Any) -> None:
    """Train adapter NAME on a MODEL base into the zoo as MODEL/NAME@vN.

    \b
    The family's own options (for LoRA: --rank, --alpha, --targets, --dropout,
    --init, --rslora, ...) come from its config class; with no --targets the
    model's default targets are adapted.
    Example: adapters train MODEL style --rank 4 --alpha 4 --steps 500 --seed 0
    """
    from ..training import TrainOptions
    from ..zoo.evaluation import DataOptions
    from ..zoo.train import train_adapter

    registry, zoo = registry_and_zoo(zoo_dir)
    registry.get_model(model)  # an unknown model is one clear line, with the valid names
    command = click.get_current_context().command
    family = family or registry.default_family(model)
    values = config_values(command, plugin_values, "family")
    if not values.get("targets") and not values.get("target_types"):
        values["targets"] = registry.get_model(model).default_targets
    config = registry.config_class(family)(**values)
    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, replay=replay,
                           schedule=schedule, ema=ema, dial=dial, dial_power=dial_power,
                           dial_draws=dial_draws)
    data = DataOptions(data_dir, config_values(command, plugin_values, "task"))
    entry = train_adapter(registry, zoo, model, name, config, options, data, base=base_ref)
    _report(entry, as_json)


def _report(entry: Any, as_json: bool) -> None:
    if entry is None:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}")


def parse_model_args(values: tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` pairs as constructor arguments: VALUE as JSON where it parses, else the text itself."""
    import json

    parsed: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE (e.g. min_snr=5)", param_hint="--model-arg")
        if not key.isidentifier():
            raise click.BadParameter(f"{key!r} is not an argument name (a Python identifier, e.g. min_snr)",
                                     param_hint="--model-arg")
        if key in parsed:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--model-arg")
        try:
            parsed[key] = json.loads(text, parse_constant=_not_finite)
        except ValueError:
            parsed[key] = text
    return parsed


def _not_finite(text: str) -> None:
    raise click.BadParameter(f"{text} is not a finite number", param_hint="--model-arg")
