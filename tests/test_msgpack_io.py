"""The streaming Flax msgpack reader and writer: byte-compatible with flax.serialization, lazy, and safe on bad input."""

from __future__ import annotations

import copy
import io
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from regnet_core import msgpack_io
from regnet_core.errors import CheckpointError
from regnet_core.msgpack_io import read_msgpack, write_msgpack
from regnet_core.tensors import LazyTensor, bfloat16_bits_to_float32, float32_to_bfloat16_bits


def _tree() -> dict:
    """Arrays that exercise every header form flax writes (fixext16, ext8/16, map16, str8, uint dims, 17 axes)."""
    rng = np.random.default_rng(0)
    return {
        "params": {
            "conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32), "bias": np.zeros(2, np.float32)},
            "scalar": np.array(1.5, np.float32),  # a 16-byte payload: fixext16
            "wide": rng.normal(size=(300, 70)).astype(np.float32),  # ext32, uint16 dimension
            "half": rng.normal(size=(5,)).astype(np.float16),
            "steps": np.arange(300, dtype=np.int64),
            "mask": np.array([True, False]),
            "empty": np.zeros((0, 3), np.uint8),
            "a_key_longer_than_thirty_one_characters": np.ones((1,) * 16 + (2,), np.float64),
            **{f"k{i}": np.full((i,), i, np.int32) for i in range(16)},  # a map of more than 15 entries
        },
        "batch_stats": {"bn": {"mean": np.ones(1, np.float32), "var": np.ones(4, np.float32)}},
    }


def _ours(tree, **kwargs) -> bytes:
    buffer = io.BytesIO()
    written = write_msgpack(buffer, tree, **kwargs)
    assert written == len(buffer.getvalue())
    return buffer.getvalue()


def _leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _bfloat16_pair(shape, seed=1):
    """(LazyTensor stored as bfloat16, the same values as flax holds them: an ml_dtypes bfloat16 array)."""
    jnp = pytest.importorskip("jax.numpy")
    values = bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.random.default_rng(seed).normal(size=shape)))
    return LazyTensor(shape, "bfloat16", lambda: values), np.asarray(values, dtype=jnp.bfloat16)


def test_written_bytes_equal_flax_to_bytes_and_restore_in_flax():
    serialization = pytest.importorskip("flax.serialization")
    ours_bf16, flax_bf16 = _bfloat16_pair((7, 5))
    tree = _tree()
    ours = _ours({**tree, "extra": {"bf16": ours_bf16}})
    theirs = serialization.to_bytes(copy.deepcopy({**tree, "extra": {"bf16": flax_bf16}}))
    assert ours == theirs
    restored = serialization.msgpack_restore(ours)
    assert str(restored["extra"]["bf16"].dtype) == "bfloat16"
    assert np.array_equal(restored["extra"]["bf16"].astype(np.float32), ours_bf16.load())
    for path, value in msgpack_io._leaves(tree):
        got = _leaf(restored, path)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), path


def test_flax_files_read_lazily_with_their_dtypes_and_order(tmp_path: Path):
    serialization = pytest.importorskip("flax.serialization")
    _, flax_bf16 = _bfloat16_pair((3, 4))
    tree = _tree()
    path = tmp_path / "v.msgpack"
    path.write_bytes(serialization.to_bytes(copy.deepcopy({**tree, "extra": {"bf16": flax_bf16}})))
    contents = read_msgpack(path)
    assert list(contents.tensors)[:3] == ["params/conv/kernel", "params/conv/bias", "params/scalar"]
    assert contents.others == {}
    for name, tensor in contents.tensors.items():
        if name == "extra/bf16":
            assert tensor.dtype == "bfloat16" and tensor.load().dtype == np.float32
            assert np.array_equal(tensor.load(), flax_bf16.astype(np.float32))
            continue
        expected = _leaf(tree, name)
        assert tensor.shape == expected.shape and tensor.dtype == expected.dtype.name, name
        assert np.array_equal(tensor.load(), expected), name


@pytest.mark.parametrize("chunk_size", [64, 1000])
def test_chunked_arrays_match_flax_both_ways(tmp_path: Path, monkeypatch, chunk_size: int):
    serialization = pytest.importorskip("flax.serialization")
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", chunk_size)
    monkeypatch.setattr(msgpack_io, "MAX_CHUNK_SIZE", chunk_size)
    ours_bf16, flax_bf16 = _bfloat16_pair((9, 13))
    tree = _tree()
    ours = _ours({**tree, "extra": {"bf16": ours_bf16}})
    theirs = serialization.to_bytes(copy.deepcopy({**tree, "extra": {"bf16": flax_bf16}}))
    assert ours == theirs and msgpack_io.CHUNKED_MARK.encode() in ours
    restored = serialization.msgpack_restore(ours)
    assert np.array_equal(restored["params"]["wide"], tree["params"]["wide"])
    path = tmp_path / "chunked.msgpack"
    path.write_bytes(theirs)
    contents = read_msgpack(path)
    assert contents.tensors["params/wide"].shape == (300, 70)
    assert np.array_equal(contents.tensors["params/wide"].load(), tree["params"]["wide"])
    assert np.array_equal(contents.tensors["extra/bf16"].load(), ours_bf16.load())
    assert contents.tensors["extra/bf16"].dtype == "bfloat16"


def test_array_bytes_are_read_only_on_load(tmp_path: Path):
    values = np.arange(4 * 2**20, dtype=np.float32).reshape(2048, 2048)  # 16 MiB
    path = tmp_path / "big.msgpack"
    write_msgpack(path, {"params": {"w": values, "b": np.ones(3, np.float32)}})
    tracemalloc.start()
    try:
        contents = read_msgpack(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"opening used {peak} bytes"
    tensor = contents.tensors["params/w"]
    assert tensor.shape == (2048, 2048) and tensor.dtype == "float32"
    # Change the values on disk after opening: load() reads what is there now.
    raw = bytearray(path.read_bytes())
    start = bytes(raw).index(values[:4].tobytes())
    raw[start : start + 4] = np.float32(-7).tobytes()
    path.write_bytes(bytes(raw))
    assert tensor.load()[0, 0] == -7 and tensor.load()[0, 1] == 1


def test_the_writer_streams_one_tensor_at_a_time_and_reports_progress(tmp_path: Path):
    loaded: list[str] = []

    def lazy(name: str, shape: tuple[int, ...]) -> LazyTensor:
        def load() -> np.ndarray:
            loaded.append(name)
            return np.full(shape, len(loaded), np.float32)

        return LazyTensor(shape, "float32", load, name)

    tree = {"params": {"a": lazy("a", (2, 3)), "b": {"c": lazy("c", (4,))}}}
    seen: list[tuple[str, int]] = []
    write_msgpack(tmp_path / "s.msgpack", tree, {"params/b/c": "float16"}, progress=lambda n, b: seen.append((n, b)))
    assert loaded == ["a", "c"] and seen == [("params/a", 24), ("params/b/c", 8)]
    contents = read_msgpack(tmp_path / "s.msgpack")
    assert contents.tensors["params/b/c"].dtype == "float16"
    assert np.array_equal(contents.tensors["params/b/c"].load(), np.full(4, 2, np.float16))
    with pytest.raises(ValueError, match="non-finite"):
        write_msgpack(io.BytesIO(), {"w": np.array([np.nan], np.float32)})


def test_non_array_leaves_are_listed_not_read(tmp_path: Path):
    msgpack = pytest.importorskip("msgpack")
    path = tmp_path / "state.msgpack"
    array = msgpack.ExtType(1, msgpack.packb(((2,), "float32", np.ones(2, np.float32).tobytes())))
    data = {"step": 3, "name": "x", "cx": msgpack.ExtType(2, b"\x92\x01\x02"), "params": {"w": array}, "l": [1, 2]}
    path.write_bytes(msgpack.packb(data, use_bin_type=True))
    contents = read_msgpack(path)
    assert list(contents.tensors) == ["params/w"]
    assert contents.others == {"step": "int", "name": "string", "cx": "complex number", "l": "list of 2 values"}


def _valid_file_bytes() -> bytes:
    return _ours({"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float16)}})


def _ndarray_ext(inner: bytes) -> bytes:
    return b"\xc7" + bytes([len(inner)]) + b"\x01" + inner


_BAD = {
    "empty": b"",
    "never-used byte": b"\xc1 not msgpack",
    "a list at the top": b"\x93\x01\x02\x03",
    "an int at the top": b"\x05",
    "an integer key": b"\x81\x01\xc0",
    "a nil key": b"\x81\xc0\xc0",
    "a map claiming 2**32-1 entries": b"\xdf\xff\xff\xff\xff\xa1a\xc0",
    "a list claiming 2**32-1 entries": b"\x81\xa1a\xdd\xff\xff\xff\xff\x01",
    "a key claiming 4 GiB": b"\x81\xdb\xff\xff\xff\xffab",
    "bytes claiming 4 GiB": b"\x81\xa1a\xc6\xff\xff\xff\xff\x00",
    "an ext claiming 4 GiB": b"\x81\xa1a\xc9\xff\xff\xff\xff\x01\x93",
    "nesting 1000 deep": b"\x81\xa1a" * 1000 + b"\xc0",
    "trailing bytes": b"\x81\xa1a\xc0\x00",
    "a duplicate key": b"\x82\xa1a\xc0\xa1a\xc0",
    "a key holding /": b"\x81\xa3a/b\xc0",
    "an array of absurd shape": b"\x81\xa1w"
    + _ndarray_ext(b"\x93\x92\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x02\xa7float32\xc4\x08" + bytes(8)),
    "an array whose bytes disagree with its shape": b"\x81\xa1w"
    + _ndarray_ext(b"\x93\x91\x03\xa7float32\xc4\x08" + bytes(8)),
    "an array of unknown dtype": b"\x81\xa1w" + _ndarray_ext(b"\x93\x91\x01\xa6object\xc4\x08" + bytes(8)),
    "an array with a negative dimension": b"\x81\xa1w" + _ndarray_ext(b"\x93\x91\xff\xa7float32\xc4\x00"),
    "an array that is not [shape, dtype, bytes]": b"\x81\xa1w" + _ndarray_ext(b"\x92\x91\x01\xa7float32"),
    "an ext longer than its array": b"\x81\xa1w"
    + _ndarray_ext(b"\x93\x91\x01\xa7float32\xc4\x04" + bytes(4) + b"\xc0"),
    "a chunked array without chunks": b"\x81\xa1w\x82\xb9__msgpack_chunked_array__\xc3\xa5shape\x81\xa10\x02",
    "a chunked array of the wrong size": b"\x81\xa1w\x83\xb9__msgpack_chunked_array__\xc3\xa5shape\x81\xa10\x03"
    b"\xa6chunks\x81\xa10" + _ndarray_ext(b"\x93\x91\x02\xa7float32\xc4\x08" + bytes(8)),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_malformed_files_are_refused_naming_the_file(tmp_path: Path, case: str):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(_BAD[case])
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"cannot read .*bad\.msgpack as a Flax msgpack file: "):
        read_msgpack(path)
    assert time.perf_counter() - started < 1


def test_every_truncation_and_random_bytes_are_refused_quickly(tmp_path: Path):
    data = _valid_file_bytes()
    path = tmp_path / "t.msgpack"
    started = time.perf_counter()
    for end in range(len(data)):
        path.write_bytes(data[:end])
        with pytest.raises(CheckpointError):
            read_msgpack(path)
    rng = np.random.default_rng(0)
    for index in range(300):
        blob = rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        if index % 2:
            blob = b"\xdf" + blob  # a map32 header first: the parser goes further in
        path.write_bytes(blob)
        with pytest.raises(CheckpointError):
            read_msgpack(path)
    assert time.perf_counter() - started < 5
    path.write_bytes(data)
    assert set(read_msgpack(path).tensors) == {"params/w", "params/b"}


def test_a_file_truncated_after_opening_fails_on_load(tmp_path: Path):
    path = tmp_path / "v.msgpack"
    path.write_bytes(_valid_file_bytes())
    tensor = read_msgpack(path).tensors["params/w"]
    path.write_bytes(_valid_file_bytes()[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        tensor.load()


def test_directories_and_missing_paths_are_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="a directory"):
        read_msgpack(tmp_path)
    with pytest.raises(CheckpointError, match="no such path"):
        read_msgpack(tmp_path / "absent.msgpack")


def test_headers_follow_msgpack_size_classes():
    # ext8 below 256 bytes of payload, ext16 below 64 KiB, ext32 above; fixext for exact sizes.
    assert msgpack_io.ndarray_header((2,), "float32")[:2] == b"\xc7\x15"
    assert msgpack_io.ndarray_header((), "float32")[:1] == b"\xd8"
    assert msgpack_io.ndarray_header((100,), "float32")[:1] == b"\xc8"
    assert msgpack_io.ndarray_header((20000,), "float32")[:1] == b"\xc9"
    # payload: [ (1) + shape [20000] (1 + 3) + "float32" (8) + bin32 header (5) + the values
    assert struct.unpack(">I", msgpack_io.ndarray_header((20000,), "float32")[1:5])[0] == 18 + 80000
