"""safetensors read lazily and written as a stream, in numpy alone (bfloat16 included).

The reader parses and checks the header itself (every offset inside the file, sizes that
agree with shapes and dtypes, no overlaps or holes), then reads each tensor's bytes only
when it is loaded, with a plain positioned read: nothing is memory-mapped, so a reader
walking a 40 GB checkpoint holds one tensor at a time. The writer computes the header from
shapes and dtypes first and then streams each tensor's bytes in order.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CheckpointError
from .io import open_output_file
from .tensors import (
    Extent,
    LazyTensor,
    check_finite,
    check_finite_stored,
    file_values,
    from_storage,
    itemsize,
    materialize,
    shape_problem,
    stored_dtype,
    to_storage,
)

# safetensors dtype codes <-> our dtype names (numpy names, plus bfloat16).
CODES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
DTYPE_CODES = {name: code for code, name in CODES.items()}
_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
_ALIGN = 8


def _raw_dtype(dtype: str) -> np.dtype:
    # bfloat16 is read as its uint16 bit patterns; all safetensors data is little-endian.
    return np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid safetensors file: {problem}")


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """(tensor entries, metadata, data start) of a safetensors file, every entry checked against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"expected an 8-byte header length, the file has {size} bytes")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER or length > size - 8:
                raise _fail(path, f"the header claims {length} bytes, the file has {size - 8} after the length")
            text = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"the header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "__metadata__ is not an object of strings")
    start = 8 + length
    data_size = size - start
    spans = []
    for name, entry in header.items():
        spans.append((*_check_entry(path, name, entry, data_size), name))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin < covered:
            raise _fail(path, f"tensor {name!r} overlaps the tensor before it (offset {begin} < {covered})")
        if begin > covered:
            raise _fail(path, f"bytes {covered}..{begin} belong to no tensor (before {name!r})")
        covered = end
    if covered != data_size:
        raise _fail(path, f"the tensors cover {covered} bytes, the data section has {data_size}")
    return header, {str(k): str(v) for k, v in metadata.items()}, start


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise _fail(path, f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in CODES:
        raise _fail(path, f"tensor {name!r} has dtype {dtype!r}, expected one of {', '.join(CODES)}")
    problem = shape_problem(shape, CODES[dtype]) if isinstance(shape, list) else "expected a list"
    if problem:
        raise _fail(path, f"tensor {name!r} has shape {shape!r}: {problem}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise _fail(path, f"tensor {name!r} has data_offsets {offsets!r}, expected [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _fail(path, f"tensor {name!r} spans bytes {begin}..{end}, outside the data section of {data_size} bytes")
    expected = math.prod(shape) * itemsize(CODES[dtype])  # Python integers: a lying shape cannot overflow
    if end - begin != expected:
        raise _fail(
            path,
            f"tensor {name!r} of shape {shape} and dtype {dtype} needs {expected} bytes, its offsets give {end - begin}",
        )
    return begin, end


def _reader(
    path: Path, start: int, begin: int, end: int, dtype: str, shape: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return file_values(path, start + begin, shape, _raw_dtype(dtype))

    return load


def _values(stored: Callable[[], np.ndarray], dtype: str) -> Callable[[], np.ndarray]:
    return lambda: from_storage(stored(), dtype)


def open_safetensors(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Every tensor of a safetensors file as a LazyTensor (values read on ``load()``)."""
    path = Path(path)
    header, _, start = read_header(path)
    out = {}
    for name, entry in header.items():
        dtype, shape = CODES[entry["dtype"]], tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        stored = _reader(path, start, begin, end, dtype, shape)
        extent = Extent(str(path), start + begin, end - begin)
        out[name] = LazyTensor(shape, dtype, _values(stored, dtype), f"{name} in {path}", stored, extent=extent)
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file."""
    return read_header(path)[1]


Progress = Callable[[str, int], None]


def write_safetensors(
    handle_or_path: str | os.PathLike | BinaryIO,
    tensors: Mapping[str, Any],
    dtypes: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> int:
    """Stream tensors (arrays or LazyTensors) into a safetensors file; returns the bytes written.

    ``dtypes`` names each tensor's output dtype (default: its stored dtype); values are
    checked for NaN and infinity as they pass. ``progress(name, nbytes)`` is called per tensor.
    """
    dtypes = dict(dtypes or {})
    header: dict[str, Any] = {}
    offset = 0
    order = []
    for name, value in tensors.items():
        dtype = dtypes.get(name) or stored_dtype(value)
        shape = [int(d) for d in np.shape(value)]
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)
        header[name] = {"dtype": DTYPE_CODES[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        order.append((name, value, dtype, nbytes))
        offset += nbytes
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _ALIGN)
    own = not hasattr(handle_or_path, "write")
    handle = open_output_file(handle_or_path, 8 + len(text) + offset) if own else handle_or_path
    try:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for name, value, dtype, nbytes in order:
            if isinstance(value, LazyTensor) and value.dtype == dtype:
                # Same dtype: the stored bytes pass through in pieces, never widened nor held twice.
                done = 0
                for block in value.iter_stored():
                    check_finite_stored(name, block, dtype)
                    done += handle.write(memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8)))
                if done != nbytes:
                    raise CheckpointError(f"tensor {name}: expected {nbytes} bytes, produced {done}")
                if progress is not None:
                    progress(name, nbytes)
                continue
            values = materialize(value)
            check_finite(name, values)
            stored = to_storage(values, dtype)
            del values
            if stored.nbytes != nbytes:
                raise CheckpointError(f"tensor {name}: expected {nbytes} bytes, produced {stored.nbytes}")
            handle.write(memoryview(np.ascontiguousarray(stored).reshape(-1).view(np.uint8)))
            del stored
            if progress is not None:
                progress(name, nbytes)
    finally:
        if own:
            handle.close()
    return 8 + len(text) + offset


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards
