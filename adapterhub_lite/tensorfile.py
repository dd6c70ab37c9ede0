"""Reading safetensors files defensively: the header is checked before anything is mapped.

`read_header` parses the 8-byte length and the JSON header itself and refuses,
in one line each: a header over `HEADER_LIMIT`, one that is not a JSON object,
metadata that is not strings, a tensor whose dtype, shape and byte range do not
add up, data that runs past the end of the file, and a tensor bigger than this
machine's memory (a sparse file can claim terabytes it does not hold).
`load_tensors` then reads them. `check_finite_floats` refuses tensors that are
not floating point or hold NaN or infinity: an adapter with them would poison
every output without a word. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .bounded_json import parse_json
from .errors import AdapterFileError, shorten

if TYPE_CHECKING:
    from torch import Tensor

HEADER_LIMIT = 64 << 20  # bytes of JSON header; a large model's header is a few hundred KB
_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' name: F32, BF16, I64...
    shape: tuple[int, ...]
    begin: int  # byte range within the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: the tensors it declares, its metadata, where the data section starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def read_header(path: str | Path) -> Header:
    """The tensors a safetensors file declares and its metadata, checked against the file's size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise AdapterFileError(f"{path} is not a readable safetensors file: {size} bytes, too short for a header")
            length = int.from_bytes(head, "little")
            if length > HEADER_LIMIT or 8 + length > size:
                raise AdapterFileError(
                    f"{path} is not a readable safetensors file: its header claims {length:,} bytes "
                    f"(file: {size:,} bytes, limit: {HEADER_LIMIT:,})")
            raw = handle.read(length)
    except OSError as exc:
        raise AdapterFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = parse_json(raw)
    except ValueError as exc:  # malformed, not UTF-8, or past the limits of bounded_json
        raise AdapterFileError(f"{path} is not a readable safetensors file: its header is not JSON "
                               f"({shorten(str(exc), 80)})") from exc
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path} is not a readable safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values()):
        raise AdapterFileError(f"{path}: its __metadata__ must map names to strings")
    data_bytes, memory = size - 8 - length, _memory_bytes()
    infos = {key: _tensor_info(path, key, info, data_bytes, memory) for key, info in header.items()}
    return Header(infos, metadata, 8 + length)


def _tensor_info(path: Path, key: str, info: object, data_bytes: int, memory: int) -> TensorInfo:
    where = f"{path}: tensor {shorten(key, 80)}"
    if not isinstance(info, dict):
        raise AdapterFileError(f"{where} is described by {shorten(info, 40)}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ITEM_BYTES:
        raise AdapterFileError(f"{where} has dtype {shorten(dtype, 20)}, which is not read here "
                               f"({', '.join(_ITEM_BYTES)})")
    ints = lambda v, n=None: (isinstance(v, list) and (n is None or len(v) == n)  # noqa: E731
                              and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))
    if not ints(shape) or not ints(offsets, 2) or offsets[0] > offsets[1]:
        raise AdapterFileError(f"{where} has a malformed shape or data_offsets")
    nbytes = math.prod(shape) * _ITEM_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise AdapterFileError(f"{where}: shape {shape} of {dtype} needs {nbytes:,} bytes, its data_offsets give "
                               f"{offsets[1] - offsets[0]:,}")
    if offsets[1] > data_bytes:
        raise AdapterFileError(f"{where} runs past the end of the file ({offsets[1]:,} of {data_bytes:,} bytes of "
                               "data): the file is truncated or hostile")
    if nbytes > memory:
        raise AdapterFileError(f"{where} declares {nbytes / 1e9:,.1f} GB, more than this machine's memory")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _dtype(path: str | Path, name: str, info: TensorInfo) -> Any:
    import torch

    if info.dtype not in _TORCH_DTYPES:
        raise AdapterFileError(f"{path}: tensor {name!r} has dtype {info.dtype}, which is not supported")
    return getattr(torch, _TORCH_DTYPES[info.dtype])


def _bytes_of(tensor: Tensor) -> memoryview:
    """A writable view of a contiguous CPU tensor's bytes."""
    import torch

    flat = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor.view(torch.uint8)
    return memoryview(flat.numpy())


def _read_into(f: BinaryIO, path: str | Path, header: Header, name: str, into: memoryview) -> None:
    """Read tensor `name`'s bytes from the open file into `into` (exactly its size)."""
    info = header.tensors[name]
    f.seek(header.data_start + info.begin)
    if f.readinto(into) != info.end - info.begin:
        raise AdapterFileError(f"{path} is truncated at tensor {name!r}")


def read_tensors(path: str | Path, names: Iterable[str], header: Header | None = None) -> dict[str, Tensor]:
    """Some tensors of a safetensors file, each read into fresh memory by its checked byte range (no mapping of
    the file stays behind); pass the file's `header` when reading it piece by piece, so it is parsed once."""
    import torch

    header = header or read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name in names:
            info = header.tensors[name]
            out[name] = torch.empty(info.shape, dtype=_dtype(path, name, info))
            _read_into(f, path, header, name, _bytes_of(out[name]))
    return out


def load_tensors(path: str | Path, keys: Iterable[str] | None = None,
                 header: Header | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors (all, or `keys`) and metadata of a safetensors file whose header passed `read_header` (pass it as
    `header` when reading one file piece by piece, so it is checked once)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if header is not None and keys is not None:  # checked already: read the byte ranges (no header parse again)
        return read_tensors(path, keys, header), header.metadata
    header = read_header(path)
    wanted = list(header.tensors) if keys is None else list(keys)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in wanted}, header.metadata
    except (SafetensorError, RuntimeError, OSError, MemoryError, ValueError) as exc:
        raise AdapterFileError(f"{path} is not a readable safetensors file: {shorten(str(exc), 200)}") from exc


def check_finite_floats(tensors: Mapping[str, Tensor], source: object, what: str = "adapter tensor") -> None:
    """Refuse tensors that are not floating point, or hold NaN or infinity."""
    import torch

    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise AdapterFileError(f"{source}: {what} {shorten(key, 80)} is {str(tensor.dtype).removeprefix('torch.')}"
                                   "; only floating-point tensors are accepted")
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"{source}: {what} {shorten(key, 80)} holds NaN or infinity; refusing it (it "
                                   "would poison every output)")


def untied(state: dict[str, Any]) -> dict[str, Any]:
    """`state` detached and contiguous, with tied tensors (one storage under two names, e.g. a language-model
    head tied to its token table) copied apart: a safetensors file holds each tensor once, and loading the
    file sets both names again."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if where in seen and tensor.numel() else tensor
        seen.add(where)
    return out
