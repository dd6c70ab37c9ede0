"""Content fingerprints: sha256 over tensors' names, dtypes, shapes and bytes, in sorted key order.

Used for base identity: an adapter records the fingerprint of each base module
it targets, so it is never silently applied to a different base.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping

import torch
from torch import Tensor


def _update(h: hashlib._Hash, name: str, tensor: Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
    h.update(memoryview(t.view(torch.uint8).numpy()))


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """Hex sha256 of a state dict; independent of insertion order."""
    h = hashlib.sha256()
    for name in sorted(state):
        _update(h, name, state[name])
    return h.hexdigest()


def combine_fingerprints(parts: Mapping[str, str]) -> str:
    """One fingerprint from per-module fingerprints (sorted by module name)."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"{name}={parts[name]}\n".encode())
    return h.hexdigest()


def content_check(tensor: Tensor) -> int:
    """CRC-32 of a tensor's bytes: a full-content check about twice as fast as the sha256 it guards (any
    changed element, row or order of bytes changes it, whatever path wrote them: `.data`, no version bump)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return zlib.crc32(memoryview(flat.view(torch.uint8).numpy()))


class FingerprintCache:
    """Fingerprints of modules' tensors, remembered until any byte of them changes. The sha256 fingerprint is
    computed once; each later call checks every tensor's dtype, shape and full CRC-32 instead, since an edit
    through `.data` or a single element bumps no version counter and a sample of values can miss it.

    `full=False` trusts a remembered fingerprint while every tensor keeps its storage and version counter (no
    pass over the bytes): for callers that check many adapters against one base in a row (a pager), at the
    price of not seeing an edit made through `.data` since the last full check."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple, str, tuple | None]] = {}

    def get(self, name: str, state: Mapping[str, Tensor], full: bool = True) -> str:
        identity = (None if any(t.is_inference() for t in state.values())  # no version counter: never trusted
                    else tuple((k, t.dtype, tuple(t.shape), t.data_ptr(), t._version)
                               for k, t in sorted(state.items())))
        cached = self._known.get(name)
        if not full and identity is not None and cached is not None and cached[2] == identity:
            return cached[1]
        key = tuple((k, t.dtype, tuple(t.shape), content_check(t)) for k, t in sorted(state.items()))
        if cached is not None and cached[0] == key:
            self._known[name] = (key, cached[1], identity)
            return cached[1]
        fingerprint = state_fingerprint(state)
        self._known[name] = (key, fingerprint, identity)
        return fingerprint

    def __contains__(self, name: str) -> bool:
        return name in self._known
