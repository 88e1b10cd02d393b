"""Large outputs are written around the page cache (O_DIRECT): same bytes, same errors, a buffered fallback."""

from __future__ import annotations

import errno
import fcntl
import os

import numpy as np
import pytest

import regnet_core.io as rio
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.io import DirectWriter, open_output_file
from regnet_core.msgpack_io import write_msgpack
from regnet_core.safetensors_io import open_safetensors, write_safetensors

from .helpers import tiny_config

HAS_DIRECT = hasattr(os, "O_DIRECT")
CHUNK = 8192  # two pages: small enough that tests cross many chunk boundaries


def _direct_works(path) -> bool:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(descriptor)
    os.unlink(path)
    return True


@pytest.fixture
def direct_dir(tmp_path):
    if not HAS_DIRECT or not _direct_works(tmp_path / "probe"):
        pytest.skip("this file system does not take O_DIRECT")
    return tmp_path


@pytest.mark.parametrize("sizes", [[], [1], [4095], [4096], [CHUNK - 1, 1], [CHUNK + 1], [3, CHUNK * 3 + 7, 0, 5000]])
def test_the_file_holds_exactly_the_bytes_written(direct_dir, sizes):
    rng = np.random.default_rng(len(sizes))
    pieces = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
    path = direct_dir / "out.bin"
    with DirectWriter(path, chunk=CHUNK) as writer:
        for piece in pieces:
            assert writer.write(piece) == piece.size
        assert writer.tell() == sum(sizes)
        assert fcntl.fcntl(writer._fd, fcntl.F_GETFL) & os.O_DIRECT
    assert path.read_bytes() == b"".join(piece.tobytes() for piece in pieces)


def test_a_refused_unbuffered_write_carries_on_buffered(direct_dir, monkeypatch):
    real_write = os.pwrite
    refused = []

    def write(descriptor, data, offset):
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(descriptor, data, offset)

    monkeypatch.setattr(rio.os, "pwrite", write)
    data = np.arange(CHUNK * 2 + 100, dtype=np.uint8)
    path = direct_dir / "out.bin"
    with DirectWriter(path, chunk=CHUNK) as writer:
        writer.write(data)
    assert refused == [CHUNK]  # once: then the descriptor is buffered
    assert path.read_bytes() == data.tobytes()


def test_a_failed_write_is_raised_and_nothing_more_is_written(direct_dir, monkeypatch):
    real_write = os.pwrite
    calls = []

    def write(descriptor, data, offset):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(descriptor, data, offset)

    monkeypatch.setattr(rio.os, "pwrite", write)
    writer = DirectWriter(direct_dir / "out.bin", chunk=CHUNK)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(10):
            writer.write(np.zeros(CHUNK, np.uint8))
    with pytest.raises(ValueError, match="failed file"):
        writer.write(b"more")
    writer.close()  # closes the descriptor; the error was already raised
    assert len(calls) == 2
    writer.close()  # twice is harmless


def test_an_error_at_close_is_raised(direct_dir, monkeypatch):
    def write(descriptor, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(rio.os, "pwrite", write)
    writer = DirectWriter(direct_dir / "out.bin", chunk=CHUNK)
    writer.write(b"x" * 10)
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()
    assert writer._fd is None


def test_a_chunk_that_is_not_a_multiple_of_the_alignment_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096, got 5000"):
        DirectWriter(tmp_path / "x", chunk=5000)


def test_only_large_outputs_go_direct(direct_dir, monkeypatch):
    small = open_output_file(direct_dir / "small", rio.DIRECT_IO_FROM - 1)
    large = open_output_file(direct_dir / "large", rio.DIRECT_IO_FROM)
    small.close(), large.close()
    assert not isinstance(small, DirectWriter) and isinstance(large, DirectWriter)
    monkeypatch.setenv(rio.DIRECT_IO_VARIABLE, "0")
    turned_off = open_output_file(direct_dir / "off", rio.DIRECT_IO_FROM)
    turned_off.close()
    assert not isinstance(turned_off, DirectWriter)


def test_a_file_system_without_o_direct_gets_a_buffered_file(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if HAS_DIRECT and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(rio.os, "open", refuse_direct)
    handle = open_output_file(tmp_path / "x", rio.DIRECT_IO_FROM)
    handle.write(b"abc")
    handle.close()
    assert not isinstance(handle, DirectWriter) and (tmp_path / "x").read_bytes() == b"abc"


def test_safetensors_msgpack_and_a_conversion_write_the_same_bytes_either_way(direct_dir, monkeypatch, tmp_path):
    """The writers' output does not depend on the path taken; large tensors cross the staging buffers."""
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((300, 301)).astype(np.float32), "b": np.arange(7, dtype=np.float32)}
    config = tiny_config("y")
    from regnet_core import build_model_spec, random_state
    from regnet_core.checkpoint import save_checkpoint

    source = tmp_path / "hf"
    save_checkpoint(source, config, random_state(build_model_spec(config), 0, True))
    outputs = {}
    for mode in ("buffered", "direct"):
        monkeypatch.setattr(rio, "DIRECT_IO_FROM", 0 if mode == "direct" else 1 << 62)
        monkeypatch.setattr(rio, "_DIRECT_CHUNK", CHUNK)
        write_safetensors(direct_dir / f"{mode}.safetensors", tensors)
        write_msgpack(direct_dir / f"{mode}.msgpack", {"params": tensors})
        write_checkpoint(read_checkpoint(source), direct_dir / f"{mode}-flax.msgpack", progress=False)
        write_checkpoint(read_checkpoint(source), direct_dir / f"{mode}-hf", progress=False)
        outputs[mode] = {
            name: (direct_dir / f"{mode}{name}").read_bytes()
            for name in (".safetensors", ".msgpack", "-flax.msgpack", "-hf/model.safetensors")
        }
    assert outputs["direct"] == outputs["buffered"]
    back = open_safetensors(direct_dir / "direct.safetensors")
    assert np.array_equal(back["a"].load(), tensors["a"])


@pytest.mark.parametrize("held", [32 << 20, 1])  # unaligned ends held to the end, or written as they come
def test_positional_writes_land_at_their_offsets_direct_or_not(direct_dir, monkeypatch, held):
    """Unaligned heads and tails go through the ordinary descriptor, aligned middles through O_DIRECT."""
    monkeypatch.setattr(rio, "_DEFERRED_LIMIT", held)
    rng = np.random.default_rng(1)
    size = CHUNK * 4
    ranges = [(0, 10), (10, 4086), (4096, CHUNK + 5), (CHUNK * 2 + 3, CHUNK + 4093), (size - 1, 1)]
    for direct in (True, False):
        path = direct_dir / f"positional-{direct}.bin"
        base = rng.integers(0, 256, size, dtype=np.uint8)
        path.write_bytes(base.tobytes())
        expected = base.copy()
        with rio.PositionalWriter(path, direct=direct, chunk=CHUNK) as writer:
            assert writer.direct is direct
            for offset, length in ranges:
                piece = rng.integers(0, 256, length, dtype=np.uint8)
                assert writer.write_at(offset, piece) == length
                expected[offset : offset + length] = piece
        assert path.read_bytes() == expected.tobytes()


def test_hdf5_outputs_are_the_same_bytes_either_way(direct_dir, monkeypatch, tmp_path):
    """Keras and transformers-TF files: tree made by h5py, values written at their offsets, direct or buffered."""
    import h5py

    from regnet_core import build_model_spec, random_state
    from regnet_core.checkpoint import save_checkpoint

    config = tiny_config("y", hidden_sizes=[8, 16, 136], num_labels=130)  # 136x136 and 136x130: above 64 KB
    source = tmp_path / "hf"
    save_checkpoint(source, config, random_state(build_model_spec(config), 0, True))
    files = {}
    for mode in ("buffered", "direct"):
        monkeypatch.setattr(rio, "DIRECT_IO_FROM", 0 if mode == "direct" else 1 << 62)
        monkeypatch.setattr(rio, "_DIRECT_CHUNK", CHUNK)
        write_checkpoint(read_checkpoint(source), direct_dir / f"{mode}.weights.h5", progress=False)
        write_checkpoint(read_checkpoint(source), direct_dir / f"{mode}-tf", "hf-tf", progress=False)
        files[mode] = [
            (direct_dir / f"{mode}.weights.h5").read_bytes(),
            (direct_dir / f"{mode}-tf/tf_model.h5").read_bytes(),
        ]
    assert files["direct"] == files["buffered"]
    expected = read_checkpoint(source).canonical_state()
    back = read_checkpoint(direct_dir / "direct.weights.h5").canonical_state()
    for name, tensor in back.items():
        assert np.array_equal(tensor.load(), expected[name].load()), name
    with h5py.File(direct_dir / "direct.weights.h5") as handle:  # large datasets start on a 4096-byte boundary
        offsets = []
        handle.visititems(
            lambda name, item: (
                offsets.append(item.id.get_offset())
                if isinstance(item, h5py.Dataset) and item.nbytes >= 1 << 16
                else None
            )
        )
    assert offsets and all(offset % 4096 == 0 for offset in offsets)
