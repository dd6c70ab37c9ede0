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
