"""Reading source files ahead of a conversion: where each reader's bytes lie, and the read-ahead thread's order and lead."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import regnet_core.tensors
from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.formats import hf_tf
from regnet_core.formats.keras_native import read_native
from regnet_core.msgpack_io import open_msgpack
from regnet_core.safetensors_io import open_safetensors
from regnet_core.tensors import MAP_FROM, Extent, LazyTensor, Prefetcher

from .helpers import tiny_config


def _little_endian_bytes(stored: np.ndarray) -> bytes:
    return np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()


@pytest.mark.parametrize("target", ["hf", "flax.msgpack", "keras.weights.h5", "hf-tf"])
def test_every_reader_says_where_each_tensor_lies_in_its_file(tmp_path, target):
    config = tiny_config("y")
    source = tmp_path / "hf"
    save_checkpoint(source, config, random_state(build_model_spec(config), 0, True))
    destination = source if target == "hf" else tmp_path / target
    if target != "hf":
        write_checkpoint(read_checkpoint(source), destination, "hf-tf" if target == "hf-tf" else None, progress=False)
    if target == "hf":
        path, tensors = source / "model.safetensors", open_safetensors(source / "model.safetensors")
    elif target == "flax.msgpack":
        path, tensors = destination, open_msgpack(destination)
    elif target == "keras.weights.h5":
        path, tensors = destination, read_native(destination)[0]
    else:
        path = destination / "tf_model.h5"
        tensors = hf_tf.read_h5(path)
    content = path.read_bytes()
    marked = 0
    for name, tensor in tensors.items():
        if tensor.extent is None:
            assert tensor.nbytes <= 8, f"{name} ({tensor.nbytes} bytes) does not say where it lies"
            continue
        marked += 1
        extent = tensor.extent
        assert extent.path == str(path) and extent.nbytes == tensor.nbytes, name
        assert content[extent.offset : extent.offset + extent.nbytes] == _little_endian_bytes(tensor.load_stored()), (
            name
        )
    assert marked >= len(tensors) - 20  # all but scalars (BN counters), which h5 may keep in its headers


def test_layout_moves_keep_the_source_bytes_extent(tmp_path):
    config = tiny_config("y")
    save_checkpoint(tmp_path / "hf", config, random_state(build_model_spec(config), 0, True))
    write_checkpoint(read_checkpoint(tmp_path / "hf"), tmp_path / "w.msgpack", progress=False)
    raw = {tensor.extent for tensor in open_msgpack(tmp_path / "w.msgpack").values()}
    canonical = read_checkpoint(tmp_path / "w.msgpack").tensors  # conv and dense kernels transposed on load
    assert all(tensor.extent in raw for tensor in canonical.values() if tensor.nbytes > 8)


SIZE = MAP_FROM  # bytes of each tensor: the read-ahead leaves smaller ones to their loaders
COUNT = SIZE // 4  # float32 values


class Blocked:
    """Tensors of SIZE bytes at consecutive places in one file; the first one's load waits for ``release``."""

    def __init__(self, path, count: int) -> None:
        self.release = threading.Event()
        self.values = [np.full(COUNT, index, np.float32) for index in range(count)]
        path.write_bytes(b"".join(v.tobytes() for v in self.values))
        self.tensors = {f"t{i}": self._tensor(path, i) for i in range(count)}

    def _tensor(self, path, index: int) -> LazyTensor:
        def load() -> np.ndarray:
            if index == 0:
                assert self.release.wait(10)
            return self.values[index].copy()

        extent = Extent(str(path), SIZE * index, SIZE)
        return LazyTensor((COUNT,), "float32", load, f"t{index}", load, extent=extent)


@pytest.fixture
def reads(monkeypatch):
    """The (start, end) ranges the read-ahead thread reads, in order, every range taken as not cached."""
    seen: list[tuple[int, int]] = []
    read = regnet_core.tensors._read_into_cache

    def recording(fd, buffer, start, end):
        seen.append((start, end))
        return read(fd, buffer, start, end)

    monkeypatch.setattr(regnet_core.tensors, "_read_into_cache", recording)
    monkeypatch.setattr(regnet_core.tensors, "_cached", lambda fd, start, end, probe: False)
    return seen


def _settle(reads: list, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(reads) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time to read more, which it must not


def test_the_read_ahead_reads_in_order_and_no_further_than_its_lead(tmp_path, reads):
    source = Blocked(tmp_path / "weights.bin", 10)
    prefetcher = Prefetcher(source.tensors, budget=100 * SIZE, read_ahead=5 * SIZE // 2)
    try:
        _settle(reads, 3)
        # The loading thread waits in t0: t1 and t2 start within 2.5 tensors of it, t3 does not.
        assert reads == [(0, SIZE), (SIZE, 2 * SIZE), (2 * SIZE, 3 * SIZE)]
        source.release.set()
        wrapped = prefetcher.wrap()
        for index, name in enumerate(source.tensors):
            assert np.array_equal(wrapped[name].load(), source.values[index])
        _settle(reads, 10)
    finally:
        prefetcher.close()
    assert reads == [(SIZE * i, SIZE * (i + 1)) for i in range(10)]


def test_closing_stops_a_waiting_read_ahead(tmp_path, reads):
    source = Blocked(tmp_path / "weights.bin", 10)
    prefetcher = Prefetcher(source.tensors, read_ahead=SIZE)
    _settle(reads, 2)
    source.release.set()
    prefetcher.close()
    assert not [t for t in threading.enumerate() if t.name == "regnet-read-ahead"]
    assert len(reads) < 10


def test_a_source_the_read_ahead_cannot_read_is_left_to_its_loader(tmp_path):
    values = np.arange(COUNT, dtype=np.float32)
    short = tmp_path / "short.bin"
    short.write_bytes(values[: COUNT // 2].tobytes())
    tensors = {
        "gone": LazyTensor(
            (COUNT,), "float32", lambda: values, "gone", extent=Extent(str(tmp_path / "gone.bin"), 0, SIZE)
        ),
        "short": LazyTensor((COUNT,), "float32", lambda: values, "short", extent=Extent(str(short), 0, SIZE)),
    }
    for order in (["gone", "short"], ["short", "gone"]):
        prefetcher = Prefetcher({name: tensors[name] for name in order})
        try:
            for name in order:
                assert np.array_equal(prefetcher.wrap()[name].load(), values)
        finally:
            prefetcher.close()
    prefetcher = Prefetcher(tensors)
    try:
        assert np.array_equal(prefetcher.wrap()["gone"].load(), values)
    finally:
        prefetcher.close()
    assert not [t for t in threading.enumerate() if t.name == "regnet-read-ahead"]


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="the read-ahead needs RWF_NOWAIT (Linux)")
def test_ranges_already_in_the_page_cache_are_asked_about_and_not_read(tmp_path, monkeypatch):
    probed: list[tuple[int, int]] = []
    seen: list[tuple[int, int]] = []
    cached, read = regnet_core.tensors._cached, regnet_core.tensors._read_into_cache

    def probing(fd, start, end, probe):
        probed.append((start, end))
        return cached(fd, start, end, probe)

    def reading(fd, buffer, start, end):
        seen.append((start, end))
        return read(fd, buffer, start, end)

    monkeypatch.setattr(regnet_core.tensors, "_cached", probing)
    monkeypatch.setattr(regnet_core.tensors, "_read_into_cache", reading)
    path = tmp_path / "weights.bin"
    path.write_bytes(np.arange(3 * COUNT + 250, dtype=np.float32).tobytes())  # just written: in the page cache
    tensors = {
        f"t{i}": LazyTensor(
            (COUNT,), "float32", lambda: np.zeros(COUNT, np.float32), f"t{i}", extent=Extent(str(path), SIZE * i, SIZE)
        )
        for i in range(3)
    }
    small = Extent(str(path), 3 * SIZE, 1000)  # read whole, in order, by its loader
    tensors["small"] = LazyTensor((250,), "float32", lambda: np.zeros(250, np.float32), "small", extent=small)
    prefetcher = Prefetcher(tensors)  # all three lie within the read-ahead's lead: it goes to the end at once
    try:
        for thread in threading.enumerate():
            if thread.name == "regnet-read-ahead":
                thread.join(10)
    finally:
        prefetcher.close()
    assert probed == [(0, SIZE), (SIZE, 2 * SIZE), (2 * SIZE, 3 * SIZE)]
    assert seen == []
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not cached(
            fd, 3 * SIZE, 5 * SIZE, memoryview(bytearray(4096))
        )  # past the end of the file: not there to skip
    finally:
        os.close(fd)
