"""`adapters apply`: stack zoo adapters on their base, then evaluate or sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import PluginOptionsCommand, config_values, data_dir_option, first_ref_model, zoo_option


@cli.command("apply", cls=PluginOptionsCommand, task=True, model_from=first_ref_model)
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
@data_dir_option
@zoo_option
def apply_command(refs: tuple[str, ...], do_eval: bool, sample: int, out: Path | None, sample_steps: int,
                  route: str | None, seed: int, as_json: bool, data_dir: Path | None, zoo_dir: Path | None,
                  **task_values: Any) -> None:
    """Stack adapters on their base, each at its weight, then evaluate or sample.

    \b
    REFS: MODEL (the base), MODEL/NAME, MODEL/NAME@v2, MODEL/NAME=0.7 ...
    Examples:
      adapters apply MODEL/style --eval --json
      adapters apply MODEL/style=0.5 --sample 64 --out grid.png
      adapters apply MODEL/style --sample 16 --route style,base --out mixed.png
    """
    from ..registry import get_registry
    from ..workflow import DataOptions, evaluate, stack, task_of
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
    metrics: dict[str, Any] = {}
    if do_eval:
        data = DataOptions(data_dir, config_values(click.get_current_context().command, task_values, "task"))
        metrics = evaluate(registry, zoo, base.model, am.model, data, seed=seed)
        result.update(metrics)
    if as_json:
        echo_json(result)
        return
    stacked = " + ".join(f"{w:g} x {n}" for n, w in am.active.items()) or "no adapters"
    click.echo(f"{base.ref} with {stacked}")
    if do_eval:
        for line in task_of(registry, base.model).report(metrics):
            click.echo(f"  {line}")
    if sample:
        click.echo(f"  wrote {sample} samples to {out}")
