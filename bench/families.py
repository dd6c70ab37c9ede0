"""DoRA, LoHa, LoKr and (IA)^3 against PEFT's implementation of the same family: forward and one training step.

Same model, input, dtype and threads; one adapter of each family on the same modules with the same factors
(copied from ours into PEFT's, and the outputs checked equal before anything is timed). r=8, alpha=16 for the
factor families; (IA)^3 scales on the outputs. Forward: base, ours (default: small layers run inference on
cached merged weights), ours with that cache off (the same per-call work as PEFT), PEFT, round-robin. Training
step: forward, backward and AdamW, ours and PEFT side by side.
"""

from __future__ import annotations

import copy
import statistics
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from timing import interleaved, medians, no_merged_weight_cache, paired_ratio

FAMILIES = ("dora", "loha", "lokr", "ia3")
RANK, ALPHA = 8, 16


def _ours(model: nn.Module, targets: list[str], family: str):
    from adapterhub_lite import AdaptedModel, get_registry

    config_class = get_registry().config_class(family)
    pattern = ["re:" + "|".join(t.replace(".", r"\.") for t in targets)]
    config = config_class(targets=pattern) if family == "ia3" else config_class(targets=pattern, rank=RANK,
                                                                                  alpha=ALPHA)
    am = AdaptedModel(model)
    am.add_adapter("a", config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(p + torch.randn(p.shape, generator=gen) * 0.01)
    return am


def _peft(model: nn.Module, targets: list[str], family: str, am) -> nn.Module:
    """PEFT's adapter of the family on the same modules, holding our factors."""
    import peft

    config = {"dora": lambda: peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, use_dora=True),
              "loha": lambda: peft.LoHaConfig(r=RANK, alpha=ALPHA, target_modules=targets),
              "lokr": lambda: peft.LoKrConfig(r=RANK, alpha=ALPHA, target_modules=targets),
              "ia3": lambda: peft.IA3Config(target_modules=targets, feedforward_modules=[])}[family]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, config, adapter_name="a")
    theirs = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for key, tensor in am.adapter_state("a").items():
            module, _, factor = key.rpartition(".")
            name = {"lora_A": "lora_A.a.weight", "lora_B": "lora_B.a.weight",
                    "lora_magnitude": "lora_magnitude_vector.a.weight", "ia3_l": "ia3_l.a"}.get(factor, f"{factor}.a")
            target = theirs[f"base_model.model.{module}.{name}"]
            target.copy_(tensor.reshape(target.shape))
    return pm


def family_group(models: list[str], make_case: Callable[[str], dict[str, Any]], repeats: int, steps: int
                 ) -> list[dict[str, Any]]:
    """Per model and family, side by side with PEFT: forward overheads and the training step."""
    rows = []
    for name in models:
        case = make_case(name)
        base_model, args, targets = case["model"], case["args"], case["targets"]
        targets = [t for t in targets if isinstance(base_model.get_submodule(t), (nn.Linear, nn.Conv2d))]
        for family in FAMILIES:
            am = _ours(copy.deepcopy(base_model), targets, family).eval()
            pm = _peft(copy.deepcopy(base_model), targets, family, am).eval()
            with torch.no_grad():
                want, got = pm(*args), am(*args)
            error = ((got - want).abs().max() / (want.abs().max() + 1)).item()
            assert error < 1e-4, f"{family} on {name}: ours and peft differ by {error:.2e}: not timing that"
            with torch.inference_mode():
                times = interleaved([lambda: base_model(*args), lambda: am(*args), lambda: pm(*args)], repeats)
                with no_merged_weight_cache(am):
                    plain = interleaved([lambda: base_model(*args), lambda: am(*args), lambda: pm(*args)], repeats)
            train = interleaved([_step(am, am.trainable_parameters(), args),
                                 _step(pm, [p for p in pm.parameters() if p.requires_grad], args)], steps)
            t_train = medians(train)
            row = {"group": "families", "model": name, "family": family,
                   "base_ms": statistics.median(times[0]) * 1e3, "ours_ms": statistics.median(times[1]) * 1e3,
                   "peft_ms": statistics.median(times[2]) * 1e3,
                   "ours_overhead": paired_ratio(times[1], times[0]) - 1,
                   "peft_overhead": paired_ratio(times[2], times[0]) - 1,
                   "ours_lowrank_overhead": paired_ratio(plain[1], plain[0]) - 1,
                   "peft_lowrank_overhead": paired_ratio(plain[2], plain[0]) - 1,
                   "ours_train_ms": t_train[0] * 1e3, "peft_train_ms": t_train[1] * 1e3,
                   "train_ratio": paired_ratio(train[0], train[1]), "max_relative_difference": error}
            rows.append(row)
            print(f"families {name} {family}: forward overhead ours {row['ours_overhead']:+.1%} "
                  f"(cache off {row['ours_lowrank_overhead']:+.1%}), peft {row['peft_overhead']:+.1%}; train step "
                  f"ours {row['ours_train_ms']:.1f} ms, peft {row['peft_train_ms']:.1f}", file=sys.stderr, flush=True)
    return rows


def _step(net: Any, params: list[nn.Parameter], args: tuple) -> Any:
    """One forward, backward and AdamW step of `net` (train mode) on its adapter parameters."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        net.train()
        loss = net(*args).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
