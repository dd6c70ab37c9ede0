"""Out-of-core fusing: a base checkpoint bigger than memory, fused with low-rank deltas tensor by tensor.

The safetensors layout is simple enough to stream: an 8-byte header length,
a JSON header (name -> dtype, shape, byte offsets), then raw bytes. The
output header is known up front (same names, shapes and dtypes), so each
tensor is read with a plain `readinto` into one reused buffer, gets its
deltas added in place (`addmm_`), and is written straight out. Nothing is
memory-mapped, so the resident set stays near one tensor (two for half
precision, whose work copy is float32) whatever the file size.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import publish
from ..errors import AdapterFileError
from ..progress import Progress
from ..tensorfile import _TORCH_DTYPES, _bytes_of, _dtype, _read_into, read_header
from ..tensorfile import read_tensors  # noqa: F401  (its older home; tensorfile.py holds it now)

DTYPES = {name: getattr(torch, dtype) for name, dtype in _TORCH_DTYPES.items()}  # tensorfile.py reads the same
NAMES = {v: k for k, v in DTYPES.items()}
LowRank = tuple[Tensor, Tensor, float]  # (B: (out, r), A: (r, in...)), multiplier: delta = m * B @ A


def streams_by_default(checkpoint: Path) -> bool:
    """Whether fusing into this base checkpoint streams when not told: it is over $ADAPTERS_STREAM_ABOVE
    bytes, else over 4 GiB."""
    value = os.environ.get("ADAPTERS_STREAM_ABOVE", "")
    return checkpoint.stat().st_size > (int(value) if value.isdigit() else 4 << 30)


def write_streamed(dst: str | Path, specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
                   fill: Callable[[str, Tensor], None], metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file tensor by tensor: `fill(name, buffer)` fills each tensor in turn.

    The file appears under its name only when complete (temp file, then rename).
    """
    dst = Path(dst)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned
    largest = max((torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for _, d, s in specs), default=0)
    buffer = torch.empty(largest, dtype=torch.uint8)

    def write(target: Path) -> None:
        with open(target, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for name, dtype, shape in specs:
                size = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
                tensor = buffer[:size].view(dtype).view(shape)
                fill(name, tensor)
                f.write(memoryview(buffer[:size].numpy()))

    return publish(dst, write)


def rewrite_file(src: str | Path, dst: str | Path, change: Callable[[str, Tensor], None] | None = None,
                 metadata: Mapping[str, str] | None = None, label: str | None = None) -> dict[str, Any]:
    """Copy checkpoint `src` to `dst` tensor by tensor; `change(name, tensor)` may rewrite each one in place
    after it is read (same shape and dtype). One buffer of the largest tensor is all this holds."""
    header = read_header(src)
    infos = header.tensors
    names = sorted(infos, key=lambda k: infos[k].begin)
    specs = [(name, _dtype(src, name, infos[name]), infos[name].shape) for name in names]
    copied = 0
    bar = Progress(len(names), label or f"streaming {Path(src).name}", unit="tensors")
    with open(src, "rb") as f, bar:
        def fill(name: str, tensor: Tensor) -> None:
            nonlocal copied
            copied += 1
            bar.update(copied)
            _read_into(f, src, header, name, _bytes_of(tensor))
            if change is not None:
                change(name, tensor)

        out_meta = dict(header.metadata)
        out_meta.update(metadata or {})
        write_streamed(dst, specs, fill, out_meta)
    return {"tensors": len(names), "bytes": Path(dst).stat().st_size}


def file_fingerprint(path: str | Path) -> str:
    """`state_fingerprint` of a safetensors file's tensors, read one at a time (the same hex digest)."""
    import hashlib

    header = read_header(path)
    h = hashlib.sha256()
    largest = max((i.end - i.begin for i in header.tensors.values()), default=0)
    buffer = bytearray(largest)
    with open(path, "rb") as f:
        for name in sorted(header.tensors):
            info = header.tensors[name]
            dtype = str(_dtype(path, name, info)).removeprefix("torch.")
            h.update(f"{name}|{dtype}|{tuple(info.shape)}|".encode())
            view = memoryview(buffer)[:info.end - info.begin]
            _read_into(f, path, header, name, view)
            h.update(view)
    return h.hexdigest()


def fuse_file(src: str | Path, dst: str | Path, deltas: Mapping[str, Sequence[LowRank]],
              metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Copy checkpoint `src` to `dst` with `W += m * B @ A` applied to every tensor named in `deltas`."""
    unknown = sorted(set(deltas) - set(read_header(src).tensors))
    if unknown:
        raise AdapterFileError(f"{src} has no tensor {unknown[0]!r} to fuse into")
    fused = 0

    def add_deltas(name: str, tensor: Tensor) -> None:
        nonlocal fused
        terms = deltas.get(name)
        if not terms:
            return
        work = tensor if tensor.dtype == torch.float32 else tensor.float()
        flat = work.view(work.shape[0], -1)
        for b, a, multiplier in terms:
            flat.addmm_(b.float(), a.float().reshape(a.shape[0], -1), alpha=multiplier)
        if work is not tensor:
            tensor.copy_(work)
        fused += 1

    info = rewrite_file(src, dst, add_deltas, metadata, label=f"fusing {Path(src).name}")
    return {**info, "fused": fused}
