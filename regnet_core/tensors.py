"""Lazy tensors: a name, a shape and a stored dtype now, the values only when asked for.

Checkpoint readers hand out ``LazyTensor`` objects so that a conversion or a load can walk
a model tensor by tensor and never hold more than one tensor's values (plus the model
being filled). numpy has no bfloat16, so bfloat16 values are widened to float32 on load
(exactly: bfloat16 is the top half of a float32) and narrowed again on write.
"""

from __future__ import annotations

import collections
import itertools
import math
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CheckpointError

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
_ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}


class TensorError(CheckpointError):
    """A tensor whose values cannot be used as weights (integers, NaN or infinity, bad bytes)."""


def dtype_name(dtype: Any) -> str:
    """A dtype's plain name ('float32', 'bfloat16', ...) from numpy, torch, ml_dtypes or a string."""
    text = str(dtype)
    for prefix in ("torch.", "<class 'numpy.", "dtype('"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.rstrip("')>")
    return {"half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16"}.get(text, text)


def itemsize(dtype: str) -> int:
    """Bytes per value of a dtype name."""
    if dtype not in _ITEMSIZE:
        raise TensorError(f"unsupported tensor dtype {dtype!r}; expected one of {', '.join(_ITEMSIZE)}")
    return _ITEMSIZE[dtype]


MAX_NDIM = 64  # numpy's limit
_MAX_ARRAY_BYTES = 2**62  # below what numpy can address, far above any weight


def shape_problem(shape: Any, dtype: str) -> str:
    """Why a shape read from a file cannot be an array of ``dtype`` ('' when it can): checked before allocating.

    Every dimension must be a non-negative integer, at most MAX_NDIM of them, and the
    values' bytes (zero dimensions aside, as numpy counts them) must be addressable.
    """
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        return f"expected a list of at most {MAX_NDIM} dimensions, got {shape!r}"
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"expected a list of non-negative integers, got {list(shape)!r}"
    if math.prod(d for d in shape if d) * itemsize(dtype) >= _MAX_ARRAY_BYTES:
        return f"the shape {list(shape)} of {dtype} is larger than any array can be"
    return ""


def read_into(path: Any, offset: int, target: np.ndarray, what: str = "a tensor") -> None:
    """Fill a C-contiguous array with a file's bytes from ``offset``; a short file or a failed read is a CheckpointError."""
    view = memoryview(target.reshape(-1).view(np.uint8)) if target.size else memoryview(b"")
    try:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(offset)
            done = 0
            while done < len(view):
                count = handle.readinto(view[done:])
                if not count:
                    raise CheckpointError(f"{path} ended while reading {what}: was it truncated after opening?")
                done += count
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None


MAP_FROM = 1 << 20  # bytes; larger tensors are mapped from their file rather than read into memory


def file_values(path: Any, offset: int, shape: tuple[int, ...], dtype: Any, what: str = "a tensor") -> np.ndarray:
    """A tensor's values at ``offset`` in a file, in native byte order: mapped (copy-on-write) when large, read when small.

    A large tensor is mapped rather than read: a transpose or a writer then takes its bytes
    straight from the page cache, with no copy into fresh memory first. The map is private
    (writing to the array never reaches the file) and is released when the last array using
    it goes. A file shorter than the tensor is a CheckpointError either way.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MAP_FROM:
        values = scratch_empty(shape, dtype)
        read_into(path, offset, values, what)
        return values.astype(dtype.newbyteorder("="), copy=False)
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset + nbytes:
                raise CheckpointError(f"{path} ended while reading {what}: was it truncated after opening?")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(handle.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if hasattr(mapped, "madvise"):  # start reading from the disk now, ahead of the first use
        mapped.madvise(mmap.MADV_WILLNEED)
    values = np.frombuffer(mapped, dtype, math.prod(shape), offset - start).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)  # a copy only for foreign byte order


def _anonymous_map(nbytes: int) -> mmap.mmap:
    """Private anonymous memory in ordinary pages.

    Measured on regnet-y-320 conversions here: Python's default anonymous map is shared
    (shmem), slower to fault in; asking for transparent huge pages made the conversions
    slower still (1.4 s against 1.0 s), though a lone 64 MB buffer faults in faster with them.
    """
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, nbytes, flags=flags) if flags else mmap.mmap(-1, nbytes)


class ScratchPool:
    """Large buffers for a conversion's temporaries, reused once nothing refers to them.

    Touching fresh memory is the dearest step of a conversion on the machines here: the
    kernel zeroes each new page (and the hypervisor backs it), at 0.3 to 2 GB/s, while
    copying into a page already in use runs at 8 GB/s. A conversion reads, transposes and
    writes tensors of tens of MB one after another, so it asks for the same sizes again and
    again. The pool lends buffers of ``MIN_BYTES`` and more, and takes one back only when its
    reference count shows that no array, view or memoryview refers to it any more: a buffer
    is never handed out while anything can still read or write it. Buffers waiting to be
    reused stay within ``limit`` bytes; smaller requests go to numpy as usual.

    Buffers are private anonymous memory maps (``_anonymous_map``). Every array lent refers
    to its map (through the array ``np.frombuffer`` made), so the map's reference count says
    whether it is in use.
    """

    MIN_BYTES = 1 << 20

    def __init__(self, limit: int = 256 * 2**20) -> None:
        self.limit = limit
        self._lent: list[mmap.mmap] = []
        self._free: list[mmap.mmap] = []  # by size, smallest first
        self._free_bytes = 0
        self._lock = threading.Lock()
        self.reused = 0  # requests served from a returned buffer (for tests and benchmarks)
        self._lent.append(mmap.mmap(-1, mmap.PAGESIZE))
        self._baseline = self._references(0)  # what the pool's own bookkeeping counts
        self._lent.pop().close()

    @property
    def free_bytes(self) -> int:
        """Bytes of the buffers waiting to be reused (at most ``limit``)."""
        return self._free_bytes

    def _references(self, index: int) -> int:
        return sys.getrefcount(self._lent[index])

    def _reclaim(self) -> None:
        for index in range(len(self._lent) - 1, -1, -1):
            if self._references(index) <= self._baseline:
                buffer = self._lent.pop(index)
                if len(buffer) > self.limit:
                    buffer.close()
                    continue
                self._free.append(buffer)
                self._free.sort(key=len)
                self._free_bytes += len(buffer)
                while self._free_bytes > self.limit:  # keep the larger ones: they cost the most to make again
                    dropped = self._free.pop(0)
                    self._free_bytes -= len(dropped)
                    dropped.close()

    def empty(self, shape: Iterable[int], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array, in reused memory where the pool has some that fits."""
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            self._reclaim()
            buffer = None
            for index, candidate in enumerate(self._free):
                if nbytes <= len(candidate) <= 4 * nbytes:
                    buffer = self._free.pop(index)
                    self._free_bytes -= len(buffer)
                    self.reused += 1
                    break
            used = -(-nbytes // self.MIN_BYTES) * self.MIN_BYTES
            if buffer is None:
                buffer = _anonymous_map(used)
            elif len(buffer) > used and hasattr(buffer, "madvise"):
                # The pages past what this use asks for go back to the system: a buffer lent again
                # for a smaller tensor holds no more memory than that tensor (the 10B model's 64 MB
                # pieces took its 247 MB transposes' buffers, and peak RSS rose by their difference).
                buffer.madvise(mmap.MADV_DONTNEED, used, len(buffer) - used)
            self._lent.append(buffer)
        return np.frombuffer(buffer, np.uint8, nbytes).view(dtype).reshape(shape)

    def clear(self) -> None:
        """Forget every buffer; those still in use are unmapped when their last user lets go."""
        with self._lock:
            self._lent.clear()
            for buffer in self._free:
                buffer.close()
            self._free.clear()
            self._free_bytes = 0


_scratch: ScratchPool | None = None
_scratch_users = 0
_scratch_lock = threading.Lock()


@contextmanager
def scratch_memory(limit: int = 256 * 2**20) -> Iterator[ScratchPool]:
    """Within the block, ``scratch_empty`` lends reused memory from one pool (nested blocks share it)."""
    global _scratch, _scratch_users
    with _scratch_lock:
        if _scratch is None:
            _scratch = ScratchPool(limit)
        _scratch_users += 1
        pool = _scratch
    try:
        yield pool
    finally:
        with _scratch_lock:
            _scratch_users -= 1
            if not _scratch_users:
                _scratch.clear()
                _scratch = None


def scratch_empty(shape: Iterable[int], dtype: Any) -> np.ndarray:
    """``np.empty``, from the active scratch pool where one is (see ``scratch_memory``)."""
    pool = _scratch
    return pool.empty(shape, dtype) if pool is not None else np.empty(tuple(shape), dtype)


def is_float(dtype: str) -> bool:
    """True for the floating dtypes a weight may have."""
    return dtype in FLOAT_DTYPES


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 numbers given as their uint16 bit patterns (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """uint16 bit patterns of float32 values rounded to bfloat16 (round to nearest, ties to even)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_storage(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Values from stored data: bfloat16 bit patterns (uint16) become float32, other dtypes pass through."""
    return bfloat16_bits_to_float32(raw) if dtype == "bfloat16" else raw


def stored_numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a dtype's stored form (uint16 bit patterns for bfloat16)."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """Stored form of values in a dtype: bfloat16 as uint16 bit patterns, others as numpy arrays."""
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(np.asarray(values, np.float32))
    return np.ascontiguousarray(values, dtype=np.dtype(dtype))


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype values of a stored dtype load as (bfloat16 loads as float32)."""
    return np.dtype(np.float32) if dtype == "bfloat16" else np.dtype(dtype)


@dataclass(frozen=True)
class Extent:
    """Where a tensor's stored bytes lie in a file, for reading them into the page cache ahead of use."""

    path: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class LazyTensor:
    """A tensor read on demand: ``shape`` and stored ``dtype`` now, ``load()`` for the values.

    ``source`` says where the tensor lives (file and name) for error messages.
    """

    shape: tuple[int, ...]
    dtype: str
    loader: Callable[[], np.ndarray]
    source: str = ""
    # The values as stored (bfloat16 as uint16 bit patterns), when the reader can give them
    # without widening: lets a writer pass bytes through unchanged.
    stored_loader: Callable[[], np.ndarray] | None = None
    # The stored values as C-contiguous pieces whose bytes, in order, are the whole tensor, for
    # writers that stream a large tensor without holding a second full copy (e.g. transposed).
    stored_blocks: Callable[[], Iterator[np.ndarray]] | None = None
    # Where the stored bytes lie in their file, when they are one run of bytes there: a
    # read-ahead (Prefetcher) brings them into the page cache before the loader asks.
    extent: Extent | None = None

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values."""
        return self.size * itemsize(self.dtype)

    def load(self) -> np.ndarray:
        """The values as a numpy array of the stored shape (bfloat16 widened to float32)."""
        value = np.asarray(self.loader())
        if tuple(value.shape) != tuple(self.shape):
            raise TensorError(f"{self.source or 'tensor'}: expected shape {self.shape}, read {tuple(value.shape)}")
        return value

    def load_stored(self) -> np.ndarray:
        """The values in their stored form (bfloat16 as uint16 bit patterns), of the tensor's shape."""
        if self.stored_loader is None:
            return to_storage(self.load(), self.dtype)
        value = np.asarray(self.stored_loader())
        if tuple(value.shape) != tuple(self.shape):
            raise TensorError(f"{self.source or 'tensor'}: expected shape {self.shape}, read {tuple(value.shape)}")
        return value

    def iter_stored(self) -> Iterator[np.ndarray]:
        """The stored values as C-contiguous pieces whose bytes, in order, are the whole tensor's."""
        if self.stored_blocks is None:
            yield self.load_stored()
            return
        total = 0
        for block in self.stored_blocks():
            total += block.size
            yield block
        if total != self.size:
            raise TensorError(f"{self.source or 'tensor'}: expected {self.size} values, the pieces held {total}")

    def map(
        self,
        transform: Callable[[np.ndarray], np.ndarray],
        shape: tuple[int, ...] | None = None,
        layout_only: bool = False,
    ) -> LazyTensor:
        """A lazy tensor whose values are ``transform(self.load())`` (``shape``: its new shape).

        ``layout_only`` says the transform only moves values (transpose, flip, reshape), so it
        applies to the stored form as well and a writer may pass the bytes through.
        """
        loader, stored = self.loader, self.stored_loader
        stored_loader = None
        if layout_only and stored is not None:

            def stored_loader() -> np.ndarray:
                return transform(np.asarray(stored()))

        return LazyTensor(
            tuple(self.shape if shape is None else shape),
            self.dtype,
            lambda: transform(np.asarray(loader())),
            self.source,
            stored_loader,
            extent=self.extent,
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self.load()
        return value if dtype is None else value.astype(dtype, copy=False)


def lazy(value: Any, source: str = "") -> LazyTensor:
    """A LazyTensor for an in-memory array (or a LazyTensor itself)."""
    if isinstance(value, LazyTensor):
        return value
    array = value
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    return LazyTensor(tuple(array.shape), dtype_name(array.dtype), lambda: array, source)


def stored_dtype(value: Any) -> str:
    """The stored dtype name of an array or a LazyTensor."""
    return value.dtype if isinstance(value, LazyTensor) else dtype_name(np.asarray(value).dtype)


def materialize(value: Any) -> np.ndarray:
    """numpy values of an array or a LazyTensor."""
    return value.load() if isinstance(value, LazyTensor) else np.asarray(value)


def total_bytes(values: Iterable[Any]) -> int:
    """Stored bytes of arrays and LazyTensors together."""
    total = 0
    for value in values:
        total += value.nbytes if isinstance(value, LazyTensor) else np.asarray(value).nbytes
    return total


_CHECK_SPAN = 1 << 20  # values checked at a time: the check's temporaries stay a few MB whatever the tensor


def _count_non_finite(values: np.ndarray, bfloat16_bits: bool) -> int:
    flat = np.asarray(values).reshape(-1)
    bad = 0
    for start in range(0, flat.size, _CHECK_SPAN):
        span = flat[start : start + _CHECK_SPAN]
        if bfloat16_bits:  # exponent all ones: infinity or NaN; its mask is the largest the exponent gives
            exponents = span.view(np.uint16) & 0x7F80
            if exponents.max() == 0x7F80:
                bad += int(np.count_nonzero(exponents == 0x7F80))
        # A sum is non-finite when any value is (NaN and infinity carry through it); only then are
        # the values counted one by one. Summing is a few times faster than isfinite's mask.
        elif not np.isfinite(np.add.reduce(span, dtype=np.float32 if span.itemsize < 4 else span.dtype)):
            bad += int(span.size - np.count_nonzero(np.isfinite(span)))
    return bad


def check_finite_stored(name: str, stored: np.ndarray, dtype: str) -> None:
    """check_finite on values in their stored form (bfloat16 bit patterns checked by their exponent)."""
    if dtype == "bfloat16":
        bad = _count_non_finite(stored, bfloat16_bits=True)
        if bad:
            raise TensorError(f"tensor {name} holds {bad} non-finite value(s) (NaN or infinity); refusing to use it")
    else:
        check_finite(name, stored)


def check_finite(name: str, values: np.ndarray) -> None:
    """Raise TensorError naming the tensor when it holds NaN or infinity (checked in spans: no full-size temporaries)."""
    if values.dtype.kind == "f" and values.size:
        bad = _count_non_finite(values, bfloat16_bits=False)
        if bad:
            raise TensorError(f"tensor {name} holds {bad} non-finite value(s) (NaN or infinity); refusing to use it")


def check_weight_dtypes(state: Mapping[str, Any], integer_ok: Callable[[str], bool]) -> None:
    """Raise TensorError naming every tensor whose dtype is not floating (except where ``integer_ok``)."""
    bad = [
        f"{name} ({stored_dtype(value)})"
        for name, value in state.items()
        if not is_float(stored_dtype(value)) and not integer_ok(name)
    ]
    if bad:
        raise TensorError(f"expected floating-point weights, got {len(bad)} tensor(s) that are not: {', '.join(bad)}")


READ_AHEAD = 512 * 2**20  # bytes of source a Prefetcher brings into the page cache ahead of its loads
_READ_CHUNK = 8 * 2**20


def _cached(fd: int, start: int, end: int, probe: memoryview) -> bool:
    """Whether the first and last pages of bytes [start, end) of a file are in the page cache (asked without waiting)."""
    for at in (start, max(start, end - len(probe))):
        wanted = min(len(probe), end - at)
        try:
            if os.preadv(fd, [probe[:wanted]], at, os.RWF_NOWAIT) < wanted:
                return False
        except BlockingIOError:
            return False
    return True


def _read_into_cache(fd: int, buffer: memoryview, start: int, end: int) -> bool:
    """Read bytes [start, end) of a file (at most ``len(buffer)``) through ``buffer``; False at the file's end.

    Read, not sent to /dev/null (``sendfile``) or only advised (``posix_fadvise``): copying
    touches each page, and on the virtual machines here the first touch of a freshly cached
    page was the slow part (10B -> flax from a cold cache: 21.6 s read, 24 to 26 s sent).
    """
    while start < end:
        count = os.preadv(fd, [buffer[: end - start]], start)
        if not count:
            return False  # the file is shorter than the extent: its loader reports that
        start += count
    return True


class Prefetcher:
    """Loads tensors ahead of their use in a background thread, within a memory budget.

    ``wrap()`` gives LazyTensors whose values come from the background thread when it got
    to them first: reading, transposing and casting the next tensors overlaps with writing
    the current one (file reads, numpy copies and writes release the GIL). Tensors are
    prefetched in the mapping's order while the bytes waiting for their consumer stay
    within ``budget``. A tensor larger than the budget is prefetched piece by piece (its
    ``iter_stored`` pieces, 64 MB for the layout moves), the thread staying at most a budget
    ahead of the consumer. A tensor asked for out of order is loaded by its consumer as
    usual, so memory stays bounded by the budget, one piece, and what the consumer holds.

    A second thread reads the files of the tensors that say where their bytes lie (``extent``)
    in the same order, up to ``read_ahead`` bytes ahead of the loading thread, into the page
    cache (not into this process's memory), 8 MB at a time through one buffer. A transpose of
    a mapped tensor reads it across its rows; from a cold cache those page faults read the
    disk at a fraction of its speed (150 to 300 MB/s here), while this thread reads it in
    order. Ranges already cached are skipped (their first and last pages asked for with
    ``RWF_NOWAIT``), so a warm source costs two small reads per 8 MB, not a copy. Once one
    piece of a tensor had to be read, the rest of it is read without asking: the kernel's
    own read-ahead makes the next piece's ends look cached before its middle is (asking
    made cold 10B -> flax 10 to 20% slower).
    """

    def __init__(
        self, tensors: Mapping[str, LazyTensor], budget: int = 256 * 2**20, read_ahead: int = READ_AHEAD
    ) -> None:
        self._tensors = dict(tensors)
        self._order = list(self._tensors)
        self._budget = budget
        self._read_ahead = read_ahead
        self._loading = 0  # index in the order of the tensor the loading thread is at
        # Bytes of the extents before each tensor in the order: how far the read-ahead is ahead.
        self._extent_starts = list(
            itertools.accumulate((self._extent_bytes(t) for t in self._tensors.values()), initial=0)
        )
        self._pieces: dict[str, collections.deque[np.ndarray]] = {}  # started by the thread, not yet taken
        self._finished: dict[str, BaseException | None] = {}  # the thread is done with it (and how)
        self._claimed: set[str] = set()  # the consumer has asked for it
        self._waiting_bytes = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="regnet-prefetch", daemon=True)
        self._thread.start()
        self._reader: threading.Thread | None = None
        if read_ahead > 0 and self._extent_starts[-1] and hasattr(os, "RWF_NOWAIT"):
            self._reader = threading.Thread(target=self._read_files_ahead, name="regnet-read-ahead", daemon=True)
            self._reader.start()

    @staticmethod
    def _extent_bytes(tensor: LazyTensor) -> int:
        """The bytes the read-ahead reads for a tensor: its extent's, when the tensor is mapped (MAP_FROM and more)."""
        return tensor.extent.nbytes if tensor.extent is not None and tensor.extent.nbytes >= MAP_FROM else 0

    def _read_files_ahead(self) -> None:
        """Read each tensor's extent into the page cache, in load order, at most ``read_ahead`` bytes ahead."""
        files: dict[str, int] = {}
        buffer = memoryview(bytearray(_READ_CHUNK))
        probe = memoryview(bytearray(mmap.PAGESIZE))
        try:
            for index, name in enumerate(self._order):
                extent = self._tensors[name].extent
                if extent is None or not self._extent_bytes(self._tensors[name]):
                    continue  # no extent, or a small tensor: its loader reads it whole, in order
                with self._condition:
                    while (
                        not self._closed
                        and self._extent_starts[index] - self._extent_starts[self._loading] > self._read_ahead
                    ):
                        self._condition.wait()
                    if self._closed:
                        return
                if extent.path not in files:
                    files[extent.path] = os.open(extent.path, os.O_RDONLY)
                fd, end = files[extent.path], extent.offset + extent.nbytes
                cold = False  # once a piece had to be read, the rest of the extent is read without asking
                for start in range(extent.offset, end, len(buffer)):
                    stop = min(start + len(buffer), end)
                    if self._closed:
                        return
                    cold = cold or not _cached(fd, start, stop, probe)
                    if cold and not _read_into_cache(fd, buffer, start, stop):
                        break
        except OSError:
            return  # only an optimisation: the loader reads these bytes itself and reports what is wrong
        finally:
            for fd in files.values():
                os.close(fd)

    def _wait_for_room(self, size: int) -> bool:
        """Wait (holding the condition) until ``size`` more bytes fit, or nothing waits; False once closed."""
        while not self._closed and self._waiting_bytes and self._waiting_bytes + size > self._budget:
            self._condition.wait()
        return not self._closed

    def _put(self, name: str, piece: np.ndarray) -> None:
        with self._condition:
            self._pieces[name].append(piece)
            self._waiting_bytes += piece.nbytes
            self._condition.notify_all()

    def _run(self) -> None:
        for index, name in enumerate(self._order):
            tensor = self._tensors[name]
            size = tensor.nbytes
            with self._condition:
                self._loading = index
                self._condition.notify_all()
                # A whole tensor starts when it fits beside what waits; a streamed one once half the
                # budget is free (tensors a writer takes late, such as Flax's batch_stats, may wait long).
                if not self._wait_for_room(size if size <= self._budget else self._budget // 2):
                    return
                if name in self._claimed:
                    continue
                self._pieces[name] = collections.deque()
            outcome: BaseException | None = None
            try:
                if size <= self._budget:
                    self._put(name, tensor.load_stored())
                else:
                    for piece in tensor.iter_stored():
                        self._put(name, piece)
                        del piece
                        with self._condition:
                            if not self._wait_for_room(0):
                                return
            except BaseException as error:  # handed to the consumer, which raises it
                outcome = error.with_traceback(None) if isinstance(error, Exception) else error
            with self._condition:
                self._finished[name] = outcome
                self._condition.notify_all()

    def _take(self, name: str) -> Iterator[np.ndarray]:
        """The pieces the thread makes of a tensor it started, as they come."""
        while True:
            with self._condition:
                while True:
                    if self._closed:
                        raise RuntimeError("the prefetcher was closed while a tensor was being read")
                    queue = self._pieces[name]
                    if queue:
                        piece = queue.popleft()
                        self._waiting_bytes -= piece.nbytes
                        self._condition.notify_all()
                        break
                    if name in self._finished:
                        error = self._finished.pop(name)
                        del self._pieces[name]
                        if error is not None:
                            raise error
                        return
                    self._condition.wait()
            yield piece
            del piece

    def _started(self, name: str) -> bool:
        """Claim a tensor for the consumer; True when the thread has started it (its pieces come from there)."""
        with self._condition:
            self._claimed.add(name)
            return name in self._pieces

    def stored(self, name: str) -> np.ndarray:
        """A tensor's stored values: prefetched if the thread got there, else loaded now."""
        tensor = self._tensors[name]
        if not self._started(name):
            return tensor.load_stored()
        pieces = list(self._take(name)) if tensor.nbytes <= self._budget else None
        if pieces is not None and len(pieces) == 1:
            return pieces[0]
        # A tensor streamed in pieces, wanted whole (a cast, say): joined as the pieces come.
        raw = np.empty(tensor.size, stored_numpy_dtype(tensor.dtype))
        flat = raw.view(np.uint8)
        filled = 0
        for piece in pieces if pieces is not None else self._take(name):
            data = np.ascontiguousarray(piece).reshape(-1).view(np.uint8)
            if filled + data.size > flat.size:
                raise TensorError(f"{tensor.source or name}: its pieces hold more than {tensor.size} values")
            flat[filled : filled + data.size] = data
            filled += data.size
        if filled != flat.size:
            raise TensorError(f"{tensor.source or name}: expected {tensor.size} values, the pieces held fewer")
        return raw.reshape(tensor.shape)

    def blocks(self, name: str) -> Iterator[np.ndarray]:
        """A tensor's stored values in pieces: those the thread read ahead, else the tensor's own pieces."""
        if self._started(name):
            yield from self._take(name)
        else:
            yield from self._tensors[name].iter_stored()

    def wrap(self) -> dict[str, LazyTensor]:
        """The tensors, as LazyTensors served by this prefetcher."""
        out = {}
        for name, tensor in self._tensors.items():

            def stored(name: str = name) -> np.ndarray:
                return self.stored(name)

            def values(name: str = name, dtype: str = tensor.dtype) -> np.ndarray:
                return from_storage(self.stored(name), dtype)

            def blocks(name: str = name) -> Iterator[np.ndarray]:
                return self.blocks(name)

            out[name] = LazyTensor(tensor.shape, tensor.dtype, values, tensor.source, stored, blocks)
        return out

    def close(self) -> None:
        """Stop prefetching and drop what is waiting."""
        with self._condition:
            self._closed = True
            self._pieces.clear()
            self._waiting_bytes = 0
            self._condition.notify_all()
        self._thread.join(timeout=60)
        if self._reader is not None:
            self._reader.join(timeout=60)
