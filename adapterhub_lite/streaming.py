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
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import publish
from .errors import AdapterFileError
from .progress import Progress
from .tensorfile import read_header

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
LowRank = tuple[Tensor, Tensor, float]  # (B: (out, r), A: (r, in...)), multiplier: delta = m * B @ A


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


def fuse_file(src: str | Path, dst: str | Path, deltas: Mapping[str, Sequence[LowRank]],
              metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Copy checkpoint `src` to `dst` with `W += m * B @ A` applied to every tensor named in `deltas`."""
    header = read_header(src)
    start, infos = header.data_start, header.tensors
    names = sorted(infos, key=lambda k: infos[k].begin)
    unknown = sorted(set(deltas) - set(names))
    if unknown:
        raise AdapterFileError(f"{src} has no tensor {unknown[0]!r} to fuse into")
    specs = []
    for name in names:
        if infos[name].dtype not in DTYPES:
            raise AdapterFileError(f"{src}: tensor {name!r} has dtype {infos[name].dtype}, which is not supported")
        specs.append((name, DTYPES[infos[name].dtype], infos[name].shape))
    fused = copied = 0
    bar = Progress(len(names), f"fusing {Path(src).name}", unit="tensors")
    with open(src, "rb") as f, bar:
        def fill(name: str, tensor: Tensor) -> None:
            nonlocal fused, copied
            copied += 1
            bar.update(copied)
            begin, end = infos[name].begin, infos[name].end
            f.seek(start + begin)
            view = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor.view(torch.uint8)
            if f.readinto(memoryview(view.numpy())) != end - begin:
                raise AdapterFileError(f"{src} is truncated at tensor {name!r}")
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

        out_meta = dict(header.metadata)
        out_meta.update(metadata or {})
        write_streamed(dst, specs, fill, out_meta)
    return {"tensors": len(names), "fused": fused, "bytes": Path(dst).stat().st_size}
