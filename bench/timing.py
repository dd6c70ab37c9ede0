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


@contextmanager
def no_merged_weight_cache():
    """Our layers on the low-rank path only (what PEFT computes): no inference on cached merged weights."""
    from adapterhub_lite import AdapterLayer

    saved = AdapterLayer.inference_merge_limit
    AdapterLayer.inference_merge_limit = 0
    try:
        yield
    finally:
        AdapterLayer.inference_merge_limit = saved


