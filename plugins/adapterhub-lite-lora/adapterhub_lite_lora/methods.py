"""The LoRA merge methods as the registry lists them: name, description, options, whether --rank applies.

Kept apart from merges.py (the math, which needs torch) so that registering
them imports nothing heavy.
"""

from __future__ import annotations

# name: (description, extra options, takes --rank)
METHODS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "cat": ("factors side by side: exact, rank = sum of ranks", (), False),
    "linear": ("exact weighted sum of deltas at the smallest rank that holds it", (), True),
    "svd": ("weighted sum of deltas truncated to the rank asked for (default: largest input rank); reports energy "
            "kept", (), True),
    "ties": ("TIES: trim each delta to the density by magnitude, elect signs, disjoint mean, SVD to the rank",
             ("density",), True),
    "dare-linear": ("DARE: drop entries at random (seeded), rescale by 1/density, sum, SVD to the rank",
                    ("density", "seed"), True),
    "dare-ties": ("DARE drops (seeded), then TIES sign election, SVD to the rank", ("density", "seed"), True),
    "magnitude-prune": ("trim each delta to the density by magnitude, sum, SVD to the rank", ("density",), True),
}
