"""The LoRA plugin's commands. Import-light: the work (and torch) is imported when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adapterhub_lite import PluginOptionsCommand, config_values, first_positional


@click.command("extract", cls=PluginOptionsCommand, task=True, model_from=first_positional)
@click.argument("model")
@click.argument("tuned")
@click.option("--base", "base_ref", default=None, help="The checkpoint a base version TUNED was fine-tuned from "
              "(default: the parent recorded in its card, else MODEL's latest base). An adapter TUNED sits on "
              "its own base.")
@click.option("--rank", type=int, required=True, help="Rank of the extracted LoRA.")
@click.option("--out", "out", required=True, metavar="NAME", help="Name of the new adapter in the zoo.")
@click.option("--eval", "do_eval", is_flag=True, help="Evaluate it (under the task's data options) and keep the "
              "metrics in its card.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="The task's data folder.")
@click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None, help="Zoo directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the new card as JSON.")
def extract_command(model: str, tuned: str, base_ref: str | None, rank: int, out: str, do_eval: bool,
                    data_dir: Path | None, zoo_dir: Path | None, as_json: bool, **task_values: Any) -> None:
    """Extract a rank-R LoRA from a fully fine-tuned base version (SVD of W_tuned - W_base per layer).

    TUNED may also be an adapter of any family (LoHa, LoKr, DoRA, (IA)^3, a
    plugin's), at a weight or a composition: its fused weights are the tuned
    ones, so the result is that adapter as a plain LoRA (what engines that
    serve LoRA only, vLLM say, can load), with the energy it keeps reported.

    \b
    Examples:
      adapters extract MODEL MODEL/base@v2 --rank 8 --out ft-r8 --eval
      adapters extract MODEL MODEL/style-loha --rank 16 --out style-lora
    """
    import json

    from adapterhub_lite import (AdaptedModel, DataOptions, Zoo, add_adapter_version, get_registry, load_base,
                                 resolve_stack, stack)

    from .extract import extract_lora

    if rank < 1:
        raise click.BadParameter("must be at least 1", param_hint="--rank")
    registry, zoo = get_registry(), Zoo(zoo_dir)
    zoo.check_new(model, out, "adapter")
    tuned_stack = resolve_stack(zoo, [tuned], model)
    if tuned_stack.adapters:  # an adapter (any family): the tuned weights are the base with it fused in
        if base_ref is not None:
            raise click.BadParameter(f"{tuned} is an adapter: it sits on its own base "
                                     f"({tuned_stack.base.ref}); drop --base", param_hint="--base")
        base_entry = tuned_stack.base
        tuned_model = load_base(registry, base_entry)
        tuned_model.load_state_dict(stack(registry, zoo, tuned_stack)[0].fused_state_dict())
        tuned_refs = [a["ref"] for a in tuned_stack.describe()]
        tuned_label = " + ".join(f"{a['weight']:g} x {a['ref']}" for a in tuned_stack.describe())
    else:
        tuned_entry = tuned_stack.base
        parents = tuned_entry.card.get("parents") or []
        base_entry = zoo.resolve(base_ref or (parents[0] if parents else model))
        if not base_entry.is_base:
            raise click.ClickException(f"{base_entry.ref} is not a {model} base version")
        tuned_model, tuned_refs, tuned_label = load_base(registry, tuned_entry), [tuned_entry.ref], tuned_entry.ref
    if base_entry.model != model or tuned_refs[0].split("/")[0] != model:
        raise click.ClickException(f"{tuned} and its base must be versions of model {model} "
                                   f"(they are {tuned_refs[0]} and {base_entry.ref})")
    base_model = load_base(registry, base_entry)
    bundle, report = extract_lora(base_model, tuned_model, rank, out)
    am = AdaptedModel(base_model, base_id=base_entry.ref, registry=registry)
    am.add_bundle(bundle)
    task_options = config_values(click.get_current_context().command, task_values, "task")
    data = DataOptions(data_dir, task_options) if do_eval else None
    recipe: dict[str, Any] = {"command": "extract", "tuned": tuned_label, "base": base_entry.ref, "rank": rank}
    entry = add_adapter_version(registry, zoo, base_entry, out, am, out, recipe,
                                {"parents": [base_entry.ref, *tuned_refs], "extracted": report}, data)
    if as_json:
        click.echo(json.dumps(entry.card, indent=2))
        return
    shown = "".join(f", {k} {v:.4f}" for figures in (entry.card.get("headline") or {}).values()
                    for k, v in figures.items() if isinstance(v, float))
    click.echo(f"wrote {entry.ref}: rank {rank}, energy kept {report['energy_kept']:.4f}{shown}"
               + (f"; biases etc. not held (max change {report['max_abs_change_not_held']:.3g})"
                  if report["max_abs_change_not_held"] else ""))
