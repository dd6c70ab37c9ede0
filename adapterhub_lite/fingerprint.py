"""Content fingerprints: sha256 over tensors' names, dtypes, shapes and bytes, in sorted key order.

Used for base identity: an adapter records the fingerprint of each base module
it targets, so it is never silently applied to a different base.
"""

from __future__ import annotations

import hashlib
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


class FingerprintCache:
    """Fingerprints of modules' tensors, remembered until any of them changes: hashing a big base costs about
    0.5 s/GB. A tensor is known by its identity, version counter, dtype, shape and a strided sample of its
    values, so a new tensor at a reused address is not taken for the old one."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple, str]] = {}

    def get(self, name: str, state: Mapping[str, Tensor]) -> str:
        key = tuple((k, t.data_ptr(), t._version, t.dtype, tuple(t.shape),
                     tuple(t.reshape(-1)[:: max(1, t.numel() // 32)].tolist()))
                    for k, t in sorted(state.items()) if not t.is_inference())
        cached = self._known.get(name)
        if cached is not None and cached[0] == key and len(key) == len(state):
            return cached[1]
        fingerprint = state_fingerprint(state)
        self._known[name] = (key, fingerprint)
        return fingerprint

    def __contains__(self, name: str) -> bool:
        return name in self._known
