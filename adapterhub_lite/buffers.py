"""Weight-sized buffers for folds: where to allocate them, and when one may be reused.

A fresh 64 MB tensor is paid for in page faults: on 4 KB pages, 16,384 of them,
which take about as long as the fold that fills it. Buffers of weight size are
therefore mapped on 2 MB transparent huge pages where Linux offers them
(`madvise`), which brings a first fold close to a re-fold into a kept buffer.
"""

from __future__ import annotations

import ctypes
import mmap

import torch
from torch import Tensor

HUGE_PAGE = 2 << 20
HUGE_PAGES_FROM = 8 << 20  # bytes; smaller tensors come from torch's allocator as usual


def sole_owner(tensor: Tensor) -> bool:
    """True when no other tensor (view, detach, state_dict entry...) shares this tensor's memory.

    Uses torch's storage use count; where that is unavailable, answers False (never reuse)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    storage = tensor.untyped_storage()
    return use_count(storage._cdata) <= 2  # this tensor and the `storage` object just made


def empty_weight_like(tensor: Tensor) -> Tensor:
    """A contiguous uninitialised tensor shaped like `tensor`; big CPU ones on huge pages where available.

    The memory is an anonymous mapping owned by the returned tensor (freed with it)."""
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < HUGE_PAGES_FROM or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # huge pages switched off: ordinary pages, still correct
        pass
    view = ctypes.c_char.from_buffer(region)
    offset = -ctypes.addressof(view) % HUGE_PAGE  # start on a 2 MB boundary so every page can be huge
    del view  # release the buffer export
    return torch.frombuffer(region, dtype=tensor.dtype, count=tensor.numel(), offset=offset).view(tensor.shape)


class FoldBuffers:
    """Weight-sized tensors a fold writes into. Fresh ones come from `empty_weight_like`; with
    `keep=True` an unfolded tensor is kept and handed to the next fold of the same weight, if nothing else
    references its memory (`sole_owner`) and it still fits."""

    def __init__(self) -> None:
        self._kept: dict[str, Tensor] = {}

    def take(self, path: str, like: Tensor) -> Tensor:
        """A contiguous tensor shaped like `like` to write the fold of weight `path` into (never `like`'s own
        memory: the original stays untouched for a bit-exact unfold)."""
        kept = self._kept.pop(path, None)
        if (kept is not None and kept.shape == like.shape and kept.dtype == like.dtype and kept.device == like.device
                and kept.is_contiguous() and kept.data_ptr() != like.data_ptr() and sole_owner(kept)):
            return kept
        return empty_weight_like(like)

    def keep(self, path: str, tensor: Tensor) -> None:
        self._kept[path] = tensor

    def release(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)
