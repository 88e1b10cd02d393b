"""Flax-serialized variable trees (msgpack) read lazily and written as a stream, in numpy alone.

The layout is flax.serialization's: one msgpack map of string keys whose leaves are arrays,
each an ext value of type 1 holding the msgpack array ``[shape, dtype name, raw C-order
bytes]`` (little-endian; bfloat16 as its 16-bit patterns). An array of more than
``MAX_CHUNK_SIZE`` bytes is stored as the map ``{"__msgpack_chunked_array__": True,
"shape": {"0": d0, ...}, "chunks": {"0": <1-D array>, ...}}`` of flat pieces of
``MAX_CHUNK_SIZE // itemsize`` values each.

The reader is a small parser for that subset of msgpack. It walks the file with bounded
reads and seeks, recording each array's offset, shape and dtype, and reads an array's bytes
only when its LazyTensor is loaded; every length is checked against the bytes left in the
file, so a truncated, corrupt or hostile file is refused with a CheckpointError after at
most a bounded amount of work. The writer computes every header from shapes and dtypes and
streams one tensor's bytes at a time; its output is byte for byte what
``flax.serialization.to_bytes`` writes for the same tree (keys in the tree's order; flax's
``msgpack_serialize`` without ``in_place`` sorts them first). Neither needs the msgpack
package, flax or jax.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CheckpointError
from .io import open_output_file
from .tensors import (
    MAX_NDIM,
    Extent,
    LazyTensor,
    check_finite,
    check_finite_stored,
    file_values,
    from_storage,
    itemsize,
    materialize,
    read_into,
    scratch_empty,
    shape_problem,
    stored_dtype,
    to_storage,
)

MAX_CHUNK_SIZE = 2**30  # flax.serialization's: arrays above this many bytes are stored in chunks
CHUNKED_MARK = "__msgpack_chunked_array__"
SEPARATOR = "/"
EXT_NDARRAY = 1  # flax's ext type codes
EXT_COMPLEX = 2
EXT_NPSCALAR = 3

MAX_DEPTH = 64  # a Flax variables tree is about ten levels deep
MAX_ENTRIES = 1_000_000  # values in one file (a RegNet has a few thousand)
MAX_KEY_BYTES = 65536

Progress = Callable[[str, int], None]


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Array:
    offset: int  # of the raw bytes in the file
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    at: int  # offset of the ext value, for messages


@dataclass(frozen=True)
class _Leaf:
    description: str  # what a non-array value is, for messages
    value: Any = None  # ints, bools, floats and nil keep their value (the chunked form needs them)


@dataclass
class MsgpackContents:
    """What a Flax msgpack file holds: arrays by '/'-joined path, lazily, and its other leaves described."""

    path: Path
    tensors: dict[str, LazyTensor] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)  # path -> what the non-array leaf is


def _kind(node: Any) -> str:
    if isinstance(node, dict):
        return "map"
    if isinstance(node, list):
        return "list"
    if isinstance(node, _Array):
        return "array"
    return node.description


class _Parser:
    """A bounded reader of the msgpack subset flax writes; values become dicts, lists, _Array and _Leaf."""

    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self.handle = handle
        self.size = size
        self.path = path
        self.position = 0
        self.entries = 0

    def fail(self, problem: str, at: int | None = None) -> CheckpointError:
        where = self.position if at is None else at
        return CheckpointError(f"cannot read {self.path} as a Flax msgpack file: {problem} (at byte {where})")

    def invalid(self, problem: str) -> CheckpointError:
        return CheckpointError(f"cannot read {self.path} as a Flax msgpack file: {problem}")

    def read(self, count: int, what: str) -> bytes:
        if count > self.size - self.position:
            raise self.fail(
                f"{what} needs {count} bytes, the file has {self.size - self.position} left: is it truncated?"
            )
        data = self.handle.read(count)
        if len(data) != count:
            raise self.fail(f"the file ended while reading {what}: was it truncated while being read?")
        self.position += count
        return data

    def skip(self, count: int, what: str) -> None:
        if count > self.size - self.position:
            raise self.fail(
                f"{what} claims {count} bytes, the file has {self.size - self.position} left: is it truncated?"
            )
        self.handle.seek(count, os.SEEK_CUR)
        self.position += count

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def count(self, number: int, minimum_bytes: int, what: str, at: int) -> int:
        if number * minimum_bytes > self.size - self.position:
            raise self.fail(
                f"a {what} of {number} entries cannot fit in the {self.size - self.position} bytes left", at
            )
        return number

    def value(self, depth: int) -> Any:
        """The next value (maps and lists recursively, arrays as offsets)."""
        if depth > MAX_DEPTH:
            raise self.fail(f"values nest deeper than {MAX_DEPTH} levels; a Flax variables tree is far shallower")
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise self.fail(f"more than {MAX_ENTRIES} values; a Flax variables file of one model has far fewer")
        at = self.position
        byte = self.read(1, "a value")[0]
        if byte <= 0x7F:
            return _Leaf("int", byte)
        if byte >= 0xE0:
            return _Leaf("int", byte - 0x100)
        if 0x80 <= byte <= 0x8F:
            return self.map(byte & 0x0F, depth, at)
        if 0x90 <= byte <= 0x9F:
            return self.array(byte & 0x0F, depth, at)
        if 0xA0 <= byte <= 0xBF:
            self.skip(byte & 0x1F, "a string")
            return _Leaf("string")
        simple = {0xC0: ("nil", None), 0xC2: ("bool", False), 0xC3: ("bool", True)}
        if byte in simple:
            return _Leaf(*simple[byte])
        lengths = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
        if byte in lengths:
            what = "bytes" if byte <= 0xC6 else "string"
            self.skip(self.unpack(lengths[byte], f"the length of {what}"), f"a {what} value")
            return _Leaf(what)
        numbers = {
            0xCA: ">f",
            0xCB: ">d",
            0xCC: ">B",
            0xCD: ">H",
            0xCE: ">I",
            0xCF: ">Q",
            0xD0: ">b",
            0xD1: ">h",
            0xD2: ">i",
            0xD3: ">q",
        }
        if byte in numbers:
            number = self.unpack(numbers[byte], "a number")
            return _Leaf("float" if byte in (0xCA, 0xCB) else "int", number)
        if byte in (0xDC, 0xDD):
            return self.array(self.unpack(">H" if byte == 0xDC else ">I", "a list length"), depth, at)
        if byte in (0xDE, 0xDF):
            return self.map(self.unpack(">H" if byte == 0xDE else ">I", "a map length"), depth, at)
        fixed = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
        if byte in fixed:
            return self.ext(fixed[byte], at)
        if byte in (0xC7, 0xC8, 0xC9):
            length = self.unpack({0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}[byte], "an ext length")
            return self.ext(length, at)
        raise self.fail(f"byte 0x{byte:02x} does not begin a msgpack value", at)

    def key(self) -> str:
        at = self.position
        byte = self.read(1, "a map key")[0]
        if 0xA0 <= byte <= 0xBF:
            length = byte & 0x1F
        elif byte in (0xD9, 0xDA, 0xDB):
            length = self.unpack({0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}[byte], "a key length")
        else:
            raise self.fail(f"expected a string map key, got msgpack type byte 0x{byte:02x}", at)
        if length > MAX_KEY_BYTES:
            raise self.fail(f"a map key of {length} bytes (the limit is {MAX_KEY_BYTES})", at)
        data = self.read(length, "a map key")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"the map key {data[:40]!r} is not UTF-8", at) from None

    def map(self, length: int, depth: int, at: int) -> dict[str, Any]:
        self.count(length, 2, "map", at)
        out: dict[str, Any] = {}
        for _ in range(length):
            key_at = self.position
            key = self.key()
            if key in out:
                raise self.fail(f"the key {key!r} appears twice in one map", key_at)
            out[key] = self.value(depth + 1)
        return out

    def array(self, length: int, depth: int, at: int) -> list[Any]:
        self.count(length, 1, "list", at)
        return [self.value(depth + 1) for _ in range(length)]

    def ext(self, length: int, at: int) -> Any:
        code = struct.unpack(">b", self.read(1, "an ext type"))[0]
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            self.skip(length, "an ext value")
            return _Leaf("complex number" if code == EXT_COMPLEX else f"ext value of type {code}")
        end = self.position + length
        if length > self.size - self.position:
            raise self.fail(
                f"an array claims {length} bytes, the file has {self.size - self.position} left: is it truncated?", at
            )
        array = self.ndarray(end, at)
        if code == EXT_NPSCALAR:
            return _Leaf(f"numpy scalar ({array.dtype})")
        return array

    def ndarray(self, end: int, at: int) -> _Array:
        """[shape, dtype name, bytes] inside an ext value ending at ``end``."""
        head = self.read(1, "an array header")[0]
        if head != 0x93:
            raise self.fail(f"expected an array as [shape, dtype, bytes] (msgpack 0x93), got byte 0x{head:02x}", at)
        head = self.read(1, "an array shape")[0]
        if 0x90 <= head <= 0x9F:
            ndim = head & 0x0F
        elif head in (0xDC, 0xDD):
            ndim = self.unpack(">H" if head == 0xDC else ">I", "a shape length")
        else:
            raise self.fail(f"expected an array's shape as a list of integers, got byte 0x{head:02x}", at)
        if ndim > MAX_NDIM:
            raise self.fail(f"an array of {ndim} dimensions (numpy allows {MAX_NDIM})", at)
        shape = []
        for _ in range(ndim):
            byte = self.read(1, "an array dimension")[0]
            if byte <= 0x7F:
                shape.append(byte)
            elif byte in (0xCC, 0xCD, 0xCE, 0xCF):
                shape.append(self.unpack({0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}[byte], "a dimension"))
            else:
                raise self.fail(f"expected an array dimension as a non-negative integer, got byte 0x{byte:02x}", at)
        byte = self.read(1, "an array dtype")[0]
        if 0xA0 <= byte <= 0xBF:
            length = byte & 0x1F
        elif byte in (0xD9, 0xC4):
            length = self.unpack(">B", "a dtype length")
        else:
            raise self.fail(f"expected an array's dtype name as a short string, got byte 0x{byte:02x}", at)
        name = self.read(length, "an array dtype").decode("ascii", errors="replace")
        try:
            size = itemsize(name)
        except ValueError:
            raise self.fail(f"an array of dtype {name!r}; expected one of the numeric dtypes", at) from None
        byte = self.read(1, "an array's bytes")[0]
        if byte not in (0xC4, 0xC5, 0xC6):
            raise self.fail(f"expected an array's data as msgpack bytes (0xc4-0xc6), got byte 0x{byte:02x}", at)
        nbytes = self.unpack({0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[byte], "an array's byte count")
        problem = shape_problem(shape, name)
        if problem:
            raise self.fail(f"an array with an impossible shape: {problem}", at)
        expected = math.prod(shape) * size
        if nbytes != expected:
            raise self.fail(
                f"an array of shape {tuple(shape)} and dtype {name} needs {expected} bytes, holds {nbytes}", at
            )
        if self.position + nbytes != end:
            raise self.fail(
                f"an array's ext value ends at byte {end}, its [shape, dtype, bytes] at byte {self.position + nbytes}",
                at,
            )
        offset = self.position
        self.skip(nbytes, "an array's data")
        return _Array(offset, tuple(int(d) for d in shape), name, nbytes, at)


def _raw_dtype(dtype: str) -> np.dtype:
    return np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")


def _stored_loader(path: Path, pieces: list[_Array], shape: tuple[int, ...], dtype: str) -> Callable[[], np.ndarray]:
    """The values as stored (bfloat16 as uint16 bit patterns), read from the file's pieces into one array."""

    def load() -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64))
        if len(pieces) == 1:  # one run of bytes: mapped where large, as safetensors' are
            return file_values(path, pieces[0].offset, (size,), _raw_dtype(dtype), "an array").reshape(shape)
        raw = scratch_empty((size,), _raw_dtype(dtype))
        start = 0
        for piece in pieces:
            count = piece.nbytes // raw.itemsize
            if count:
                read_into(path, piece.offset, raw[start : start + count], "an array")
            start += count
        return raw.astype(raw.dtype.newbyteorder("="), copy=False).reshape(shape)

    return load


def _lazy(path: Path, name: str, pieces: list[_Array], shape: tuple[int, ...], dtype: str) -> LazyTensor:
    stored = _stored_loader(path, pieces, shape, dtype)
    extent = Extent(str(path), pieces[0].offset, pieces[0].nbytes) if len(pieces) == 1 else None
    return LazyTensor(shape, dtype, lambda: from_storage(stored(), dtype), f"{name} in {path}", stored, extent=extent)


def _chunked(parser: _Parser, node: dict[str, Any], name: str) -> tuple[list[_Array], tuple[int, ...], str]:
    """(pieces, shape, dtype) of flax's chunked-array map, every part checked."""
    problem = f"the chunked array {name!r} "
    if set(node) != {CHUNKED_MARK, "shape", "chunks"}:
        raise parser.invalid(problem + f"has keys {sorted(node)}; expected {CHUNKED_MARK}, shape and chunks")
    shape_node, chunks_node = node["shape"], node["chunks"]
    if not isinstance(shape_node, dict) or set(shape_node) != {str(i) for i in range(len(shape_node))}:
        raise parser.invalid(problem + "has no shape map {'0': d0, '1': d1, ...}")
    shape = []
    for index in range(len(shape_node)):
        dim = shape_node[str(index)]
        if not isinstance(dim, _Leaf) or dim.description != "int" or dim.value < 0:
            raise parser.invalid(problem + f"has dimension {index} = {_kind(dim)}; expected a non-negative integer")
        shape.append(dim.value)
    if not isinstance(chunks_node, dict) or set(chunks_node) != {str(i) for i in range(len(chunks_node))}:
        raise parser.invalid(problem + "has no chunks map {'0': array, '1': array, ...}")
    pieces = [chunks_node[str(i)] for i in range(len(chunks_node))]
    if not pieces or not all(isinstance(p, _Array) and len(p.shape) == 1 for p in pieces):
        raise parser.invalid(problem + "has chunks that are not 1-D arrays")
    dtypes = {p.dtype for p in pieces}
    if len(dtypes) != 1:
        raise parser.invalid(problem + f"mixes dtypes {sorted(dtypes)} in its chunks")
    problem = shape_problem(shape, pieces[0].dtype)
    if problem:
        raise parser.invalid(problem + f" ({name!r})")
    total = sum(p.shape[0] for p in pieces)
    expected = math.prod(shape)
    if total != expected:
        raise parser.invalid(problem + f"of shape {tuple(shape)} needs {expected} values, its chunks hold {total}")
    return pieces, tuple(shape), pieces[0].dtype


def read_msgpack(path: str | os.PathLike) -> MsgpackContents:
    """The arrays of a Flax msgpack file as LazyTensors by '/'-joined path (values read on ``load()``).

    The top level must be a map (a variables tree); leaves that are not arrays are listed
    in ``others``. Anything malformed raises CheckpointError naming the byte where it is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"expected a Flax msgpack file, got {path} ({'a directory' if path.exists() else 'no such path'})"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            parser = _Parser(handle, size, path)
            if not size:
                raise parser.fail("the file is empty; expected a Flax variables dict (a msgpack map)")
            tree = parser.value(0)
            if not isinstance(tree, dict):
                raise parser.invalid(f"expected a Flax variables dict (a msgpack map) at the top, got {_kind(tree)}")
            if parser.position != size:
                raise parser.fail(f"{size - parser.position} bytes follow the top-level map")
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    contents = MsgpackContents(path)
    _collect(parser, tree, "", contents)
    return contents


def _collect(parser: _Parser, node: dict[str, Any], prefix: str, contents: MsgpackContents) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if SEPARATOR in key or not key:
            raise parser.invalid(f"the key {name!r} is empty or holds {SEPARATOR!r}, which would make names ambiguous")
        if isinstance(value, dict) and CHUNKED_MARK in value:
            pieces, shape, dtype = _chunked(parser, value, name)
            contents.tensors[name] = _lazy(contents.path, name, pieces, shape, dtype)
        elif isinstance(value, dict):
            _collect(parser, value, name + SEPARATOR, contents)
        elif isinstance(value, _Array):
            contents.tensors[name] = _lazy(contents.path, name, [value], value.shape, value.dtype)
        else:
            contents.others[name] = _kind(value) if not isinstance(value, list) else f"list of {len(value)} values"


def open_msgpack(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Every array of a Flax msgpack file as a LazyTensor by '/'-joined path."""
    return read_msgpack(path).tensors


# ----------------------------------------------------------------------------- writing


def _uint(value: int) -> bytes:
    if value < 0x80:
        return struct.pack("B", value)
    if value <= 0xFF:
        return struct.pack(">BB", 0xCC, value)
    if value <= 0xFFFF:
        return struct.pack(">BH", 0xCD, value)
    if value <= 0xFFFFFFFF:
        return struct.pack(">BI", 0xCE, value)
    return struct.pack(">BQ", 0xCF, value)


def _header(count: int, fixed: int, fixed_limit: int, codes: tuple[int, ...], what: str) -> bytes:
    if count <= fixed_limit:
        return struct.pack("B", fixed + count)
    if count <= 0xFFFF:
        return struct.pack(">BH", codes[0], count)
    if count <= 0xFFFFFFFF:
        return struct.pack(">BI", codes[1], count)
    raise CheckpointError(f"a {what} of {count} entries is more than msgpack can hold")


def _map_header(count: int) -> bytes:
    return _header(count, 0x80, 0x0F, (0xDE, 0xDF), "map")


def _array_header(count: int) -> bytes:
    return _header(count, 0x90, 0x0F, (0xDC, 0xDD), "list")


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    n = len(data)
    if n <= 0x1F:
        head = struct.pack("B", 0xA0 + n)
    elif n <= 0xFF:
        head = struct.pack(">BB", 0xD9, n)
    elif n <= 0xFFFF:
        head = struct.pack(">BH", 0xDA, n)
    else:
        head = struct.pack(">BI", 0xDB, n)
    return head + data


def _bin_header(n: int) -> bytes:
    if n <= 0xFF:
        return struct.pack(">BB", 0xC4, n)
    if n <= 0xFFFF:
        return struct.pack(">BH", 0xC5, n)
    if n <= 0xFFFFFFFF:
        return struct.pack(">BI", 0xC6, n)
    raise CheckpointError(f"an array of {n} bytes is more than one msgpack value can hold; store it in chunks")


def _ext_header(length: int, code: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if length in fixed:
        head = struct.pack("B", fixed[length])
    elif length <= 0xFF:
        head = struct.pack(">BB", 0xC7, length)
    elif length <= 0xFFFF:
        head = struct.pack(">BH", 0xC8, length)
    elif length <= 0xFFFFFFFF:
        head = struct.pack(">BI", 0xC9, length)
    else:
        raise CheckpointError(f"an array of {length} bytes is more than one msgpack value can hold")
    return head + struct.pack("b", code)


def ndarray_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The bytes before an array's raw data: ext header, then [shape, dtype name, bytes header] as flax packs them."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)
    body = _array_header(3) + _array_header(len(shape)) + b"".join(_uint(int(d)) for d in shape)
    body += _str(dtype) + _bin_header(nbytes)
    return _ext_header(len(body) + nbytes, EXT_NDARRAY) + body


def _write_array(handle: BinaryIO, stored: np.ndarray, dtype: str) -> int:
    data = np.asarray(stored)  # not ascontiguousarray: it would give a 0-d value one axis
    data = np.asarray(data, dtype=data.dtype.newbyteorder("<"), order="C")
    head = ndarray_header(tuple(data.shape), dtype)
    handle.write(head)
    if data.size:
        handle.write(memoryview(data.reshape(-1).view(np.uint8)))
    return len(head) + data.nbytes


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}{SEPARATOR}")
        else:
            yield f"{prefix}{key}", value


def write_msgpack(
    target: str | os.PathLike | BinaryIO,
    tree: Mapping[str, Any],
    dtypes: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    chunk_size: int | None = None,
) -> int:
    """Stream a nested tree of arrays / LazyTensors into a Flax msgpack file; returns the bytes written.

    Keys must be strings. ``dtypes`` gives an output dtype per '/'-joined path (default: the
    stored one); values are checked for NaN and infinity as they pass. Arrays above
    ``chunk_size`` bytes (default ``MAX_CHUNK_SIZE``, flax's) are written in flax's chunked form.
    ``progress(path, nbytes)`` is called per array.
    """
    dtypes = dict(dtypes or {})
    limit = MAX_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    expected = 0
    for path, value in _leaves(tree):
        dtype = dtypes.get(path) or stored_dtype(value)
        size = itemsize(dtype)  # an unknown dtype is refused before anything is written
        if not isinstance(value, LazyTensor) and not hasattr(value, "shape"):
            raise CheckpointError(f"{path}: expected an array or a LazyTensor, got {type(value).__name__}")
        expected += size * int(np.prod(value.shape, dtype=np.int64))
    own = not hasattr(target, "write")
    handle = open_output_file(target, expected) if own else target
    try:
        return _write_node(handle, tree, "", dtypes, progress, limit)
    finally:
        if own:
            handle.close()


def _write_node(
    handle: BinaryIO,
    tree: Mapping[str, Any],
    prefix: str,
    dtypes: Mapping[str, str],
    progress: Progress | None,
    limit: int,
) -> int:
    written = handle.write(_map_header(len(tree)))
    for key, value in tree.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{prefix}{key!r}: Flax variables trees have string keys, got {type(key).__name__}")
        written += handle.write(_str(key))
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            written += _write_node(handle, value, path + SEPARATOR, dtypes, progress, limit)
            continue
        dtype = dtypes.get(path) or stored_dtype(value)
        if isinstance(value, LazyTensor) and value.dtype == dtype:
            # Same dtype: the stored bytes pass through in pieces, never widened nor held twice.
            written += _stream_array(handle, path, value, dtype, limit)
            if progress is not None:
                progress(path, value.nbytes)
            continue
        else:
            values = materialize(value)
            check_finite(path, values)
            stored = to_storage(values, dtype)
            del values
        shape = tuple(int(d) for d in np.shape(value))
        if stored.size == int(np.prod(shape, dtype=np.int64)):
            stored = stored.reshape(shape)  # to_storage gives 0-d values one axis
        if tuple(stored.shape) != shape:
            raise CheckpointError(f"{path}: expected shape {shape}, produced {tuple(stored.shape)}")
        if stored.nbytes > limit:
            written += _write_chunked(handle, stored, dtype, limit)
        else:
            written += _write_array(handle, stored, dtype)
        if progress is not None:
            progress(path, stored.nbytes)
        del stored
    return written


class _Pieces:
    """Bytes of a tensor's stored pieces, handed out in spans of any length (each piece checked finite)."""

    def __init__(self, path: str, tensor: LazyTensor, dtype: str) -> None:
        self._path, self._dtype = path, dtype
        self._pieces = tensor.iter_stored()
        self._current = memoryview(b"")

    def write(self, handle: BinaryIO, nbytes: int) -> int:
        """Write the next ``nbytes`` bytes."""
        left = nbytes
        while left:
            if not len(self._current):
                piece = next(self._pieces, None)
                if piece is None:
                    raise CheckpointError(f"{self._path}: the tensor ended {left} bytes early")
                check_finite_stored(self._path, piece, self._dtype)
                piece = np.ascontiguousarray(piece)
                self._current = memoryview(piece.reshape(-1).view(np.uint8))
            span = self._current[:left]
            handle.write(span)
            self._current = self._current[len(span) :]
            left -= len(span)
        return nbytes

    def finish(self) -> None:
        """Raise unless every byte was written."""
        if len(self._current) or next(self._pieces, None) is not None:
            raise CheckpointError(f"{self._path}: the tensor holds more values than its shape")


def _stream_array(handle: BinaryIO, path: str, tensor: LazyTensor, dtype: str, limit: int) -> int:
    """One array written from its stored pieces, in flax's plain or chunked form."""
    shape = tuple(int(d) for d in tensor.shape)
    size = int(np.prod(shape, dtype=np.int64))
    nbytes = size * itemsize(dtype)
    pieces = _Pieces(path, tensor, dtype)
    if nbytes <= limit:
        head = ndarray_header(shape, dtype)
        written = handle.write(head) + pieces.write(handle, nbytes)
    else:
        per_chunk = max(1, int(limit / itemsize(dtype)))
        starts = range(0, size, per_chunk)
        written = handle.write(_map_header(3) + _str(CHUNKED_MARK) + b"\xc3")
        written += handle.write(_str("shape") + _map_header(len(shape)))
        for index, dim in enumerate(shape):
            written += handle.write(_str(str(index)) + _uint(dim))
        written += handle.write(_str("chunks") + _map_header(len(starts)))
        for index, start in enumerate(starts):
            count = min(per_chunk, size - start)
            written += handle.write(_str(str(index)) + ndarray_header((count,), dtype))
            written += pieces.write(handle, count * itemsize(dtype))
    pieces.finish()
    return written


def _write_chunked(handle: BinaryIO, stored: np.ndarray, dtype: str, limit: int) -> int:
    """flax's chunked form: {mark: True, shape: {"0": d0, ...}, chunks: {"0": flat piece, ...}}."""
    per_chunk = max(1, int(limit / itemsize(dtype)))
    flat = stored.reshape(-1)
    starts = range(0, flat.size, per_chunk)
    written = handle.write(_map_header(3) + _str(CHUNKED_MARK) + b"\xc3")
    written += handle.write(_str("shape") + _map_header(stored.ndim))
    for index, dim in enumerate(stored.shape):
        written += handle.write(_str(str(index)) + _uint(int(dim)))
    written += handle.write(_str("chunks") + _map_header(len(starts)))
    for index, start in enumerate(starts):
        written += handle.write(_str(str(index)))
        written += _write_array(handle, flat[start : start + per_chunk], dtype)
    return written


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A nested tree from '/'-joined paths (in their order)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEPARATOR)
        node = tree
        for parent in parents:
            child = node.setdefault(parent, {})
            if not isinstance(child, dict):
                raise CheckpointError(f"{path}: {parent} is both a leaf and a subtree")
            node = child
        if leaf in node:
            raise CheckpointError(f"{path} is given twice, or is both a leaf and a subtree")
        node[leaf] = value
    return tree
