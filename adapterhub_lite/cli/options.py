"""Options and helpers several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def zoo_option(f: Any) -> Any:
    return click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None,
                        help="Zoo directory (default: $ADAPTERS_ZOO, else ./zoo).")(f)


def data_options(f: Any) -> Any:
    f = click.option("--eval-samples", type=int, default=256, show_default=True,
                     help="Generated images per evaluation (generative models).")(f)
    f = click.option("--style", type=click.Choice(["inverted"]), default=None,
                     help="Train/evaluate on a styled variant (inverted: black digits on white).")(f)
    f = click.option("--classes", default=None, metavar="LIST",
                     help="Only these digits: '9', '0-4' or '5,7'.")(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder holding MNIST/raw (default: $ADAPTERS_DATA, else download).")(f)


def train_options(f: Any) -> Any:
    f = click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
                     help="Learning-rate schedule (cosine decays to 0 over the run).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, batches and noise.")(f)
    f = click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")(f)
    f = click.option("--batch-size", type=int, default=32, show_default=True)(f)
    f = click.option("--steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")(f)
    f = click.option("--epochs", type=int, default=1, show_default=True)(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the new version's card as JSON.")(f)


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise click.BadParameter(f"{text[:40]!r}: use digits like '9', '0-4' or '5,7'", param_hint="--classes") \
            from None
    if not out or any(c < 0 or c > 9 for c in out):
        raise click.BadParameter(f"{text[:40]!r}: digits are 0 to 9", param_hint="--classes")
    return tuple(sorted(set(out)))


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def summary_line(entry: Any) -> str:
    """One line per zoo entry: its ref and headline metrics (on its trained classes too, if any)."""
    from ..workflow import metric_scopes

    metrics = entry.card.get("metrics", {})
    shown = []
    for scope, values in metric_scopes(metrics, single=""):
        if not isinstance(values, dict):
            continue
        label = "" if scope in ("", "all") else f"{scope.replace('_', ' ')} "
        shown += [f"{label}{k} {values[k]:.4f}" for k in ("accuracy", "light_background", "recognisable",
                                                          "max_class_share")
                  if isinstance(values.get(k), (int, float)) and not isinstance(values.get(k), bool)]
    return f"{entry.ref}  " + ", ".join(shown)
