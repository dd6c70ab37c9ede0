"""Commands that train into the zoo: `train-base`, `train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import data_options, parse_classes, split_list, summary_line, train_options, zoo_option


@cli.command("train-base")
@click.argument("model")
@click.option("--from", "start", default=None, metavar="REF",
              help="Fine-tune all weights of this zoo base (e.g. mnist-cnn@v1) instead of starting from scratch.")
@train_options
@data_options
@zoo_option
def train_base_command(model: str, start: str | None, as_json: bool, epochs: int, steps: int | None,
                       batch_size: int, lr: float, seed: int, schedule: str, data_dir: Path | None,
                       classes: str | None, style: str | None, eval_samples: int, zoo_dir: Path | None) -> None:
    """Train base MODEL from scratch into the zoo as MODEL/base@vN.

    \b
    Example: adapters train-base richboynet --epochs 1 --batch-size 10 --seed 0
    Runs under torchrun too (DDP, gloo): one zoo version is written.
    """
    from ..registry import get_registry
    from ..training import TrainOptions
    from ..workflow import DataOptions, train_base
    from ..zoo import Zoo

    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, schedule=schedule)
    data = DataOptions(data_dir, parse_classes(classes), style, eval_samples)
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
@train_options
@data_options
@zoo_option
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
    from ..config import LoraConfig
    from ..registry import get_registry
    from ..training import TrainOptions
    from ..workflow import DataOptions, train_adapter
    from ..zoo import Zoo

    registry = get_registry()
    targets, types = split_list(targets), split_list(target_types)
    if not targets and not types:
        targets = registry.get_model(model).default_targets
    config = LoraConfig(targets=targets, target_types=types, rank=rank, alpha=alpha if alpha is not None else rank,
                        dropout=dropout, init=init, rslora=rslora, attention_projections=attention_projections)
    options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, replay=replay,
                           schedule=schedule)
    entry = train_adapter(registry, Zoo(zoo_dir), model, name, config, options,
                          DataOptions(data_dir, parse_classes(classes), style, eval_samples), base=base_ref)
    _report(entry, as_json)


def _report(entry: Any, as_json: bool) -> None:
    if entry is None:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}")
