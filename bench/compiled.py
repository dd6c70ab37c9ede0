"""Compiled hot-swap: `AdaptedModel.compile` (torch.compile, inductor) against the compiled bare base and eager.

Per model: 8 LoRA adapters (r=8), one live at a time, compiled for max_rank 8. Side by side, round-robin: the
compiled base, ours compiled (steady), ours compiled with a swap before every call (another adapter, another
weight: the buffers are refilled, the graph stays), the eager base and ours eager (the ordinary forward).
Recompiles are counted over the swaps (torch._dynamo's unique graphs). Target: compiled ours <= 1.05 x the
compiled base.
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from timing import interleaved, medians, paired_ratio

RANK = 8


def compile_group(models: list[str], make_case: Callable[[str], dict[str, Any]], ours: Callable[..., Any],
                  repeats: int) -> list[dict[str, Any]]:
    from torch._dynamo.utils import counters

    rows = []
    for name in models:
        case = make_case(name)
        base_model, args, targets = case["model"], case["args"], case["targets"]
        am = ours(copy.deepcopy(base_model), targets, 8)
        am.set_active(["a0"])
        eager = ours(copy.deepcopy(base_model), targets, 8)  # the same factors, on the ordinary forward
        for adapter in am.adapters:
            eager.load_adapter_state(adapter, am.adapter_state(adapter))
        eager.set_active(["a0"])
        started = time.perf_counter()
        run = am.compile(max_rank=RANK)
        compiled_base = torch.compile(copy.deepcopy(base_model))
        with torch.no_grad():
            run(*args)
            compiled_base(*args)
            compile_seconds = time.perf_counter() - started
            torch.testing.assert_close(run(*args), eager(*args), rtol=1e-4, atol=1e-4)  # the same function
            graphs = counters["stats"]["unique_graphs"]
            turn = itertools.count(1)

            def swapped() -> None:
                k = next(turn)
                am.set_active([f"a{k % 8}"], [0.5 + (k % 5) / 10])
                run(*args)

            times = interleaved([lambda: compiled_base(*args), lambda: run(*args), swapped,
                                 lambda: base_model(*args), lambda: eager(*args)], repeats)
            recompiles = counters["stats"]["unique_graphs"] - graphs
        c_base, c_ours, c_swap, e_base, e_ours = medians(times)
        row = {"group": "compiled", "model": name, "compile_seconds": compile_seconds,
               "compiled_base_ms": c_base * 1e3, "compiled_ours_ms": c_ours * 1e3, "compiled_swap_ms": c_swap * 1e3,
               "eager_base_ms": e_base * 1e3, "eager_ours_ms": e_ours * 1e3,
               "ours_vs_compiled_base": paired_ratio(times[1], times[0]),
               "swap_vs_compiled_base": paired_ratio(times[2], times[0]),
               "compiled_vs_eager_ours": paired_ratio(times[1], times[4]), "recompiles": recompiles,
               "swaps": len(times[2]) + 2}
        rows.append(row)
        print(f"compiled {name}: base {c_base*1e3:.2f} ms, ours {c_ours*1e3:.2f} (swapping {c_swap*1e3:.2f}), "
              f"eager ours {e_ours*1e3:.2f}; {recompiles} recompiles; compile {compile_seconds:.0f} s",
              file=sys.stderr, flush=True)
    return rows
