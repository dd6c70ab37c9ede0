"""Extracting a LoRA from a fine-tune: per layer, the best rank-r factors of W_tuned - W_base (SVD).

Linear, ungrouped Conv1d/Conv2d, Embedding and transformers' Conv1D weights are
covered (a kernel flattens to out x in*k..., so A is a conv with the kernel and
B a size-1 conv, exactly the LoRA conv layout; a table or Conv1D weight is
stored (in, out), the transpose of B @ A). Changes
to biases and other parameters cannot be held by a LoRA: they are reported,
not silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch
from torch import nn

from adapterhub_lite import (
    AdapterBundle,
    IncompatibleAdapterError,
    PluginOptionsCommand,
    config_values,
    first_positional,
)

from .config import LoraConfig
from .transposed_linear import is_conv1d


@torch.no_grad()
def extract_lora(base: nn.Module, tuned: nn.Module, rank: int, name: str = "extracted") -> tuple[AdapterBundle, dict]:
    """A rank-`rank` LoRA whose delta is the best approximation of tuned - base on every changed weight a LoRA kind
    of this plugin holds as one pair: Linear, ungrouped Conv1d/Conv2d, Embedding, transformers' Conv1D."""
    tuned_modules = dict(tuned.named_modules())
    state, configs, kept, total, per_layer, other = {}, {}, 0.0, 0.0, {}, 0.0
    for module_name, module in base.named_modules():
        twin = tuned_modules.get(module_name)
        if type(twin) is not type(module):
            raise IncompatibleAdapterError(f"{module_name!r} differs in type between the two checkpoints")
        for param_name, param in module.named_parameters(recurse=False):
            diff = (twin.get_parameter(param_name).double() - param.double())
            transposed = isinstance(module, nn.Embedding) or is_conv1d(module)  # W is (in, out)
            plain = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and getattr(module, "groups", 1) == 1
            if param_name != "weight" or not (plain or transposed):
                other = max(other, float(diff.abs().max()) if diff.numel() else 0.0)
                continue
            if not diff.any():
                continue
            matrix = diff.t() if transposed else diff.flatten(1)  # B @ A's own layout: (out, in...)
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            r = min(rank, s.numel())
            root = s[:r].sqrt()
            b, a = u[:, :r] * root, root[:, None] * vh[:r]
            a_tail = (matrix.shape[1],) if transposed else param.shape[1:]
            b_tail = (1,) * (param.dim() - 2) if plain else ()  # a conv's B is a size-1 kernel
            state[f"{module_name}.lora_A"] = a.reshape(r, *a_tail).to(param.dtype)
            state[f"{module_name}.lora_B"] = b.reshape(matrix.shape[0], r, *b_tail).to(param.dtype)
            configs[module_name] = LoraConfig(targets=[module_name], rank=r, alpha=float(r))
            k, t = float((s[:r] ** 2).sum()), float((s**2).sum())
            kept, total = kept + k, total + t
            per_layer[module_name] = round(k / t, 6)
    if not configs:
        raise IncompatibleAdapterError("no weight a LoRA can hold (Linear, Conv1d, Conv2d, Embedding, Conv1D) differs "
                                       "between the two checkpoints")
    report = {"rank": rank, "energy_kept": kept / total, "energy_kept_per_layer": per_layer,
              "max_abs_change_not_held": other}
    return AdapterBundle(name=name, family="lora", configs=configs, state=state), report


@click.command("extract", cls=PluginOptionsCommand, task=True, model_from=first_positional)
@click.argument("model")
@click.argument("tuned")
@click.option("--base", "base_ref", default=None, help="The checkpoint TUNED was fine-tuned from (default: "
              "the parent recorded in its card, else MODEL's latest base).")
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

    \b
    Example: adapters extract MODEL MODEL/base@v2 --rank 8 --out ft-r8 --eval
    """
    import json

    from adapterhub_lite import AdaptedModel, DataOptions, Zoo, add_adapter_version, get_registry, load_base

    if rank < 1:
        raise click.BadParameter("must be at least 1", param_hint="--rank")
    registry, zoo = get_registry(), Zoo(zoo_dir)
    zoo.check_new(model, out, "adapter")
    tuned_entry = zoo.resolve(tuned if "/" in tuned else f"{model}/{tuned}")
    parents = tuned_entry.card.get("parents") or []
    base_entry = zoo.resolve(base_ref or (parents[0] if parents else model))
    for entry in (tuned_entry, base_entry):
        if not entry.is_base or entry.model != model:
            raise click.ClickException(f"{entry.ref} is not a {model} base version")
    base_model = load_base(registry, base_entry)
    bundle, report = extract_lora(base_model, load_base(registry, tuned_entry), rank, out)
    am = AdaptedModel(base_model, base_id=base_entry.ref, registry=registry)
    am.add_bundle(bundle)
    task_options = config_values(click.get_current_context().command, task_values, "task")
    data = DataOptions(data_dir, task_options) if do_eval else None
    recipe: dict[str, Any] = {"command": "extract", "tuned": tuned_entry.ref, "base": base_entry.ref, "rank": rank}
    entry = add_adapter_version(registry, zoo, base_entry, out, am, out, recipe,
                                {"parents": [base_entry.ref, tuned_entry.ref], "extracted": report}, data)
    if as_json:
        click.echo(json.dumps(entry.card, indent=2))
        return
    shown = "".join(f", {k} {v:.4f}" for figures in (entry.card.get("headline") or {}).values()
                    for k, v in figures.items() if isinstance(v, float))
    click.echo(f"wrote {entry.ref}: rank {rank}, energy kept {report['energy_kept']:.4f}{shown}"
               + (f"; biases etc. not held (max change {report['max_abs_change_not_held']:.3g})"
                  if report["max_abs_change_not_held"] else ""))
