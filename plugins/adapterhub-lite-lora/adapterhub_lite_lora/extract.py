"""Extracting a LoRA from a fine-tune: per layer, the best rank-r factors of W_tuned - W_base (SVD).

Linear, ungrouped Conv1d/Conv2d, Embedding and transformers' Conv1D weights are
covered (a kernel flattens to out x in*k..., so A is a conv with the kernel and
B a size-1 conv, exactly the LoRA conv layout; a table or Conv1D weight is
stored (in, out), the transpose of B @ A). Changes
to biases and other parameters cannot be held by a LoRA: they are reported,
not silently dropped.
"""

from __future__ import annotations


import torch
from torch import nn

from adapterhub_lite import AdapterBundle, IncompatibleAdapterError

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
