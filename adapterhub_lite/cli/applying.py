"""`adapters apply`: stack zoo adapters on their base, then evaluate or sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .group import cli, echo_json
from .options import (
    PluginOptionsCommand,
    config_values,
    data_dir_option,
    first_ref_model,
    registry_and_zoo,
    zoo_option,
)


@cli.command("apply", cls=PluginOptionsCommand, task=True, model_from=first_ref_model)
@click.argument("refs", nargs=-1, required=True)
@click.option("--eval", "do_eval", is_flag=True, help="Evaluate on the test split.")
@click.option("--sample", type=int, default=0, help="Generate N samples (generative models).")
@click.option("--inputs", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Run the stacked model on the tensors of a safetensors FILE (passed by name to its forward, "
                   "e.g. input_ids) and write its tensor outputs to --out FILE.safetensors.")
@click.option("--module", "module_path", default=None, metavar="PATH",
              help="With --inputs: run this submodule instead (e.g. one part of a pipeline's modules).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where --sample writes its PNG grid, or --inputs its outputs (.safetensors).")
@click.option("--sample-steps", type=int, default=25, show_default=True, help="DDIM steps for --sample.")
@click.option("--route", default=None, metavar="LIST",
              help="With --sample: sample i runs only the i-th adapter of LIST (cycling), all in one batch; "
                   "names as in REFS, 'base' for none. E.g. --route inverted,base")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds test noise and sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@data_dir_option
@zoo_option
def apply_command(refs: tuple[str, ...], do_eval: bool, sample: int, inputs: Path | None, module_path: str | None,
                  out: Path | None, sample_steps: int, route: str | None, seed: int, as_json: bool,
                  data_dir: Path | None, zoo_dir: Path | None, **task_values: Any) -> None:
    """Stack adapters on their base, each at its weight, then evaluate, sample or run on your inputs.

    \b
    REFS: MODEL (the base), MODEL/NAME, MODEL/NAME@v2, MODEL/NAME=0.7 ...
    With no action, checks that the stack loads onto its base and says what
    it holds. --eval and --sample use the model's task; --inputs works on
    any model (one brought in with `adapters zoo add-base` too).
    Examples:
      adapters apply MODEL/style --eval --json
      adapters apply MODEL/style=0.5 --sample 64 --out grid.png
      adapters apply MODEL/style --sample 16 --route style,base --out mixed.png
      adapters apply my-gpt2/chat --inputs ids.safetensors --out logits.safetensors
    """
    from ..zoo.evaluation import DataOptions, evaluate, task_of
    from ..zoo.loading import stack

    if sample and inputs is not None:
        raise click.UsageError("--sample and --inputs both write --out: run them one at a time")
    if (sample or inputs is not None) and out is None:
        raise click.UsageError("--sample needs --out FILE.png" if sample else "--inputs needs --out FILE.safetensors")
    if sample and out is not None and out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise click.BadParameter(f"{str(out)[:80]!r}: name a .png or .jpg file", param_hint="--out")
    if inputs is not None and out is not None and out.suffix.lower() != ".safetensors":
        raise click.BadParameter(f"{str(out)[:80]!r}: name a .safetensors file", param_hint="--out")
    if module_path is not None and inputs is None:
        raise click.UsageError("--module applies to --inputs")
    if route is not None and not sample:
        raise click.UsageError("--route applies to --sample (evaluation batches have no fixed size)")
    registry, zoo = registry_and_zoo(zoo_dir)
    am, base = stack(registry, zoo, list(refs))
    result: dict[str, Any] = {"base": base.ref, "adapters": am.active}
    if sample:
        task = task_of(registry, base.model)
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
    if inputs is not None:
        from ..zoo.running import run_on_file

        result["outputs"] = run_on_file(am.model, inputs, out, module_path)  # type: ignore[arg-type]
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
    if inputs is not None:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in result["outputs"].items())
        click.echo(f"  wrote {len(result['outputs'])} output tensors to {out}: {shapes}")
    if not (do_eval or sample or inputs is not None):
        counts = am.parameter_counts()
        click.echo(f"  {len(am.layers())} adapted modules, {counts['base']:,} base parameters, "
                   f"{sum(counts['adapters'].values()):,} adapter parameters (add --eval, --sample or --inputs)")
