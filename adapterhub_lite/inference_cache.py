"""The inference cache: folded weights of a small layer, kept for inference, bounded in bytes.

Keyed by everything the folded tensors depend on (the live adapters and their
weights, and every parameter's identity, version counter and dtype), so a
weight, an active set or an in-place change of any tensor never serves a stale
copy. Least recently used entries go first when the budget is exceeded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def cache_key(live: list[tuple[str, float]], tensors: Iterable[nn.Parameter | Tensor]) -> tuple | None:
    """What folded tensors depend on; None when a tensor has no version counter (made in inference mode), so
    no cache could notice it change."""
    tensors = list(tensors)
    if any(t.is_inference() for t in tensors):
        return None
    return (torch.is_inference_mode_enabled(), tuple(live), tuple((t.data_ptr(), t._version, t.dtype) for t in tensors))


class InferenceCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()

    def get_or_build(self, key: tuple, build: Callable[[], dict[str, Tensor]], budget: float) -> dict[str, Tensor]:
        """The cached tensors for `key`, else `build()`'s, kept if they fit in `budget` bytes (evicting the
        least recently used entries to make room)."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        built = build()
        if nbytes(built) <= budget:
            self._entries[key] = built
            while self.nbytes > budget:
                self._entries.popitem(last=False)
        return built

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def live_sets(self) -> list[tuple[tuple[str, float], ...]]:
        """The live adapters and weights of each entry, least recently used first."""
        return [key[1] for key in self._entries]

    @property
    def nbytes(self) -> int:
        return sum(nbytes(tensors) for tensors in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
