"""A Linear-like layer's pool of routed factors, for batches in which every sample names its adapter.

Each adapter the layer has routed keeps a slot: its A^T (in, r) and its scaled B^T (r, out), zero-padded to the
pool's rank. A batch that names a new set of adapters gathers theirs by index (one copy, in C) instead of
restacking them one by one; a slot is rewritten only when its adapter's factors change (identity and version
counter, as every kept stack here is checked), and freed when the adapter is gone (deleted, or evicted by a
pager: slots are reused, so the pool follows the adapters held at once).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn


class FactorPool:
    def __init__(self) -> None:
        self.a: Tensor | None = None  # (capacity, in, r)
        self.b: Tensor | None = None  # (capacity, r, out)
        self.slots: weakref.WeakKeyDictionary[nn.Module, tuple[int, tuple]] = weakref.WeakKeyDictionary()

    def gather(self, pairs: list, like: Tensor, padded: Callable[[int], int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The adapters' A^T (G, in, r) and scaled B^T (G, r, out), padded, for `pairs` of (factors, weight):
        factors with `lora_A` (r, in), `lora_B` (out, r) and `scale`; and the weights (G,), None when all are 1
        (a weight scales the rank-sized product between the two, not B)."""
        in_features, out_features = pairs[0][0].lora_A.shape[1], pairs[0][0].lora_B.shape[0]
        rank = padded(max(f.lora_A.shape[0] for f, _ in pairs))
        shape = (padded(in_features), padded(out_features))
        with torch.inference_mode(False), torch.no_grad():  # kept tensors outlive an inference_mode block
            if (self.a is None or self.a.dtype != like.dtype or self.a.device != like.device
                    or (self.a.shape[1], self.b.shape[2]) != shape or self.a.shape[2] < rank):
                self._allocate(len(pairs), shape, max(rank, self.a.shape[2] if self.a is not None else 0), like)
            index = [self._slot(f) for f, _ in pairs]
            weights = (None if all(w == 1.0 for _, w in pairs)
                       else torch.tensor([w for _, w in pairs], dtype=like.dtype, device=like.device))
        index_t = torch.tensor(index, device=like.device)
        return self.a.index_select(0, index_t), self.b.index_select(0, index_t), weights

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.a, self.b) if t is not None)

    def _allocate(self, count: int, shape: tuple[int, int], rank: int, like: Tensor) -> None:
        capacity = max(8, count + count // 4, len(self.slots))
        self.a = like.new_zeros(capacity, shape[0], rank)
        self.b = like.new_zeros(capacity, rank, shape[1])
        self.slots = weakref.WeakKeyDictionary()

    def _slot(self, f: nn.Module) -> int:
        a, b = f.lora_A, f.lora_B
        key = (a.data_ptr(), a._version, b.data_ptr(), b._version, f.scale)
        held = self.slots.get(f)
        if held is not None and held[1] == key:
            return held[0]
        slot = held[0] if held is not None else self._free()
        rank, in_features = a.shape
        self.a[slot].zero_()
        self.a[slot, :in_features, :rank] = a.t()
        self.b[slot].zero_()
        self.b[slot, :rank, :b.shape[0]] = (b * f.scale).t()
        self.slots[f] = (slot, key)
        return slot

    def _free(self) -> int:
        """A slot no living adapter holds; the pool grows by a quarter when every slot is held (it tracks the
        adapters the layer holds at once, which a pager bounds, not every adapter it ever ran)."""
        used = {slot for slot, _ in self.slots.values()}
        capacity = self.a.shape[0]
        if len(used) >= capacity:
            more = max(8, capacity // 4)
            self.a = torch.cat([self.a, self.a.new_zeros(more, *self.a.shape[1:])])
            self.b = torch.cat([self.b, self.b.new_zeros(more, *self.b.shape[1:])])
            return capacity
        return next(i for i in range(capacity) if i not in used)
