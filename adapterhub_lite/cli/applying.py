"""`adapters apply`: stack zoo adapters on their base, then evaluate or sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import data_options, parse_classes, zoo_option


@cli.command("apply")
@click.argument("refs", nargs=-1, required=True)
@click.option("--eval", "do_eval", is_flag=True, help="Evaluate on the test split.")
@click.option("--sample", type=int, default=0, help="Generate N samples (generative models).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where --sample writes its PNG grid.")
@click.option("--sample-steps", type=int, default=25, show_default=True, help="DDIM steps for --sample.")
@click.option("--route", default=None, metavar="LIST",
              help="With --sample: sample i runs only the i-th adapter of LIST (cycling), all in one batch; "
                   "names as in REFS, 'base' for none. E.g. --route inverted,base")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds test noise and sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@data_options
@zoo_option
def apply_command(refs: tuple[str, ...], do_eval: bool, sample: int, out: Path | None, sample_steps: int,
                  route: str | None,
                  seed: int, as_json: bool, data_dir: Path | None, classes: str | None, style: str | None,
                  eval_samples: int, zoo_dir: Path | None) -> None:
    """Stack adapters on their base, each at its weight, then evaluate or sample.

    \b
    REFS: MODEL (the base), MODEL/NAME, MODEL/NAME@v2, MODEL/NAME=0.7 ...
    Examples:
      adapters apply richboynet/digit9 --eval --json
      adapters apply ddpm-unet/inverted=0.5 --sample 64 --out grid.png
      adapters apply ddpm-unet/inverted --sample 16 --route inverted,base --out mixed.png
    """
    from ..registry import get_registry
    from ..workflow import DataOptions, evaluate, stack
    from ..zoo import Zoo

    if not do_eval and not sample:
        raise click.UsageError("say what to do: --eval and/or --sample N --out FILE")
    if sample and out is None:
        raise click.UsageError("--sample needs --out FILE.png")
    if out is not None and out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise click.BadParameter(f"{str(out)[:80]!r}: name a .png or .jpg file", param_hint="--out")
    if route is not None and not sample:
        raise click.UsageError("--route applies to --sample (evaluation batches have no fixed size)")
    registry, zoo = get_registry(), Zoo(zoo_dir)
    am, base = stack(registry, zoo, list(refs))
    result: dict[str, Any] = {"base": base.ref, "adapters": am.active}
    if sample:
        task = registry.get_model(base.model).task
        if route is not None:
            names = [n.strip() for n in route.split(",") if n.strip()]
            if not names:
                raise click.BadParameter("name at least one adapter (or 'base')", param_hint="--route")
            per_sample = [None if n == "base" else n for n in (names * sample)[:sample]]
            with am.routing(per_sample):
                images = task.sample(am.model, sample, seed=seed, steps=sample_steps)
            result["route"] = [n or "base" for n in per_sample]
        else:
            images = task.sample(am.model, sample, seed=seed, steps=sample_steps)
        from torchvision.utils import save_image

        from ..atomic import publish

        publish(out, lambda target: save_image(images, str(target), nrow=max(1, int(round(sample**0.5))), padding=1))
        result["sample"] = {"n": sample, "seed": seed, "steps": sample_steps, "out": str(out)}
    if do_eval:
        result.update(evaluate(registry, zoo, base.model, am.model,
                               DataOptions(data_dir, parse_classes(classes), style, eval_samples), seed=seed))
    if as_json:
        result.pop("confusion", None)
        echo_json(result)
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
