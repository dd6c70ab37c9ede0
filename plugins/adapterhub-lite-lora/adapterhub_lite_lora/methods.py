"""The LoRA merge methods as the registry lists them: name, description and the options each takes.

Kept apart from merges.py (the math, which needs torch) so that registering
them imports nothing heavy. Each method's options are a dataclass: the core
makes `adapters merge --method NAME` flags of its fields and refuses the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterhub_lite import help_field


@dataclass(frozen=True)
class NoOptions:
    """cat: the rank is the sum of the inputs' ranks."""


@dataclass(frozen=True)
class RankOptions:
    rank: int | None = field(default=None, metadata=help_field(
        "rank of the result; with one input and svd: resize that adapter", default_text="the largest input rank"))


@dataclass(frozen=True)
class DensityOptions(RankOptions):
    density: float | None = field(default=None, metadata=help_field(
        "fraction of each delta kept (ties, dare, magnitude-prune)", default_text="0.5"))


@dataclass(frozen=True)
class DareOptions(DensityOptions):
    seed: int | None = field(default=None, metadata=help_field("seed of DARE's random drops", default_text="0"))


METHODS: dict[str, tuple[str, type]] = {
    "cat": ("factors side by side: exact, rank = sum of ranks", NoOptions),
    "linear": ("exact weighted sum of deltas at the smallest rank that holds it", RankOptions),
    "svd": ("weighted sum of deltas truncated to the rank asked for (default: largest input rank); reports energy "
            "kept", RankOptions),
    "ties": ("TIES: trim each delta to the density by magnitude, elect signs, disjoint mean, SVD to the rank",
             DensityOptions),
    "dare-linear": ("DARE: drop entries at random (seeded), rescale by 1/density, sum, SVD to the rank", DareOptions),
    "dare-ties": ("DARE drops (seeded), then TIES sign election, SVD to the rank", DareOptions),
    "magnitude-prune": ("trim each delta to the density by magnitude, sum, SVD to the rank", DensityOptions),
}
