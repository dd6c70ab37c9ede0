"""Timing helpers shared by the bench groups: medians, round-robin rounds, paired ratios."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int = 2) -> list[list[float]]:
    """Times of each function, measured round-robin: round i of every function ran side by side, in a fresh
    random order (seeded), so no function always follows the same neighbour (whose cache and allocator
    footprint it would inherit)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    order = list(range(len(fns)))
    rng = random.Random(0)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return times


def medians(times: list[list[float]]) -> list[float]:
    return [statistics.median(t) for t in times]


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over rounds of time / reference time in the same round: drift of the machine cancels out."""
    return statistics.median(t / r for t, r in zip(times, reference))


_KEPT: dict[Any, Any] = {}


@contextmanager
def served_with(am: Any, policy: Any):
    """`am`'s layers served under `policy` for a block; each layer keeps its strategy for that policy (and so
    its warm cache) from one block to the next, as a model served under that policy all along would."""
    from adapterhub_lite.forward import FoldedWeights

    layers = list(am.layers().values())
    kept = _KEPT.setdefault((id(am), policy), {})
    saved = [layer.strategy for layer in layers]
    for layer in layers:
        layer.strategy = kept.setdefault(id(layer), FoldedWeights(policy))
    try:
        yield
    finally:
        for layer, strategy in zip(layers, saved):
            layer.strategy = strategy


def no_merged_weight_cache(am: Any):
    """Our layers on the low-rank path only (what PEFT computes): no inference on cached merged weights."""
    from adapterhub_lite import LayerPolicy

    return served_with(am, LayerPolicy(fold_limit=0))


