"""Conversion temporaries: reused memory that never aliases live data, mapped inputs, fast and exact transposes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError
from regnet_core.safetensors_io import open_safetensors, write_safetensors
from regnet_core.tensors import (
    MAP_FROM,
    ScratchPool,
    TensorError,
    check_finite,
    file_values,
    scratch_empty,
    scratch_memory,
)
from regnet_core.weights import (
    CONV,
    DENSE,
    from_channels_last,
    from_channels_last_blocks,
    to_channels_last,
    to_channels_last_blocks,
)

from .helpers import tiny_config

MB = 1 << 20


def test_a_buffer_is_lent_again_only_once_nothing_refers_to_it():
    pool = ScratchPool(limit=64 * MB)
    first = pool.empty((MB,), np.float32)
    first[:] = 1
    view = first[10:20]
    del first
    second = pool.empty((MB,), np.float32)  # the first buffer is still seen through `view`
    second[:] = 2
    assert pool.reused == 0
    assert np.all(view == 1)
    del view
    third = pool.empty((MB,), np.float32)
    assert pool.reused == 1
    third[:] = 3
    exported = memoryview(third)
    del third
    fourth = pool.empty((MB,), np.float32)  # a memoryview holds the buffer too
    fourth[:] = 4
    assert pool.reused == 1
    assert np.all(np.frombuffer(exported, np.float32) == 3)
    del exported, second, fourth
    pool.empty((MB // 2,), np.float64)
    assert pool.reused == 2


def _anonymous_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("this system shows no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_a_buffer_lent_again_for_less_gives_back_the_pages_it_does_not_need():
    pool = ScratchPool(limit=256 * MB)
    big = pool.empty((64 * MB,), np.uint8)
    big[:] = 1  # every page resident
    del big
    before = _anonymous_rss()
    small = pool.empty((16 * MB,), np.uint8)
    assert pool.reused == 1
    assert before - _anonymous_rss() >= 40 * MB  # the last 48 MB went back
    small[:] = 2
    del small
    again = pool.empty((64 * MB,), np.uint8)  # the whole buffer once more: the pages given back read as zeros
    assert pool.reused == 2
    assert np.all(again[: 16 * MB] == 2) and not again[16 * MB :].any()


def test_kept_results_are_never_overwritten_by_later_requests():
    pool = ScratchPool(limit=32 * MB)
    kept = []
    for value in range(20):
        array = pool.empty((3, MB // 2), np.float32)
        array[:] = value
        if value % 3 == 0:
            kept.append((value, array[1]))  # a view keeps the whole buffer
        del array
    assert pool.reused > 0
    for value, row in kept:
        assert np.all(row == value)


def test_buffers_waiting_for_reuse_stay_within_the_limit():
    pool = ScratchPool(limit=8 * MB)
    arrays = [pool.empty((MB,), np.float32) for _ in range(4)]  # 4 MB each
    del arrays
    pool.empty((MB // 4,), np.float32)  # takes the returned buffers back, keeps at most 8 MB of them
    assert pool.free_bytes <= 8 * MB
    huge = pool.empty((4 * MB,), np.float32)  # 16 MB: above the limit, never kept for reuse
    del huge
    pool.empty((MB // 4,), np.float32)
    assert pool.free_bytes <= 8 * MB
    pool.clear()
    assert pool.free_bytes == 0


def test_small_requests_and_requests_outside_a_pool_are_plain_numpy_arrays():
    small = ScratchPool().empty((10, 10), np.float32)
    assert small.flags.owndata and small.shape == (10, 10)
    outside = scratch_empty((MB,), np.uint8)
    assert outside.flags.owndata
    with scratch_memory() as pool, scratch_memory() as nested:
        assert nested is pool
        inside = scratch_empty((MB,), np.uint8)
        assert not inside.flags.owndata and inside.flags.c_contiguous and inside.flags.writeable
    after = scratch_empty((MB,), np.uint8)
    assert after.flags.owndata


@pytest.mark.parametrize("count", [100, MAP_FROM // 4 + 3])  # read, and mapped
def test_file_values_are_the_stored_values_and_private_to_the_caller(tmp_path, count):
    values = np.random.default_rng(0).standard_normal(count).astype(np.float32)
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": values})
    before = path.read_bytes()
    loaded = open_safetensors(path)["w"].load_stored()
    assert np.array_equal(loaded, values)
    assert loaded.flags.writeable
    loaded[:] = 0  # a private copy on write: the file keeps its bytes
    assert path.read_bytes() == before
    assert np.array_equal(open_safetensors(path)["w"].load(), values)


@pytest.mark.parametrize("count", [100, MAP_FROM // 4 + 3])
def test_a_file_shorter_than_its_tensor_is_an_error_either_way(tmp_path, count):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": np.ones(count, np.float32)})
    tensor = open_safetensors(path)["w"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        tensor.load()
    with pytest.raises(CheckpointError, match="truncated"):
        file_values(path, 8, (path.stat().st_size,), np.uint8)  # 8 bytes past the end


def _reference(value: np.ndarray, kind: str) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)) if kind == CONV else value.T)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.float64])
@pytest.mark.parametrize(
    "shape",
    [(1544, 1400), (300, 7000), (1000, 3), (1100, 232, 3, 3), (1300, 1700, 1, 1), (7, 5, 3, 3)],
)
def test_layout_moves_are_exact_in_every_form(dtype, shape):
    """Large ones run on several threads in wide tiles, in reused memory; all equal numpy's transpose."""
    kind = CONV if len(shape) == 4 else DENSE
    value = (np.random.default_rng(1).standard_normal(shape) * 1000).astype(dtype)
    expected = _reference(value, kind)
    with scratch_memory():
        results = []
        for _ in range(2):  # the second round runs in memory the first gave back
            moved = to_channels_last(value, kind)
            back = from_channels_last(moved, kind)
            streamed = np.concatenate([b.reshape(-1).copy() for b in to_channels_last_blocks(value, kind, MB)])
            streamed_back = np.concatenate(
                [b.reshape(-1).copy() for b in from_channels_last_blocks(expected, kind, MB)]
            )
            results.append((moved, back))
            assert moved.flags.c_contiguous and back.flags.c_contiguous
            assert np.array_equal(streamed, expected.reshape(-1))
            assert np.array_equal(streamed_back, value.reshape(-1))
        for moved, back in results:  # results still held were never handed out again
            assert np.array_equal(moved, expected)
            assert np.array_equal(back, value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_finite_check_finds_one_bad_value_among_millions(bad):
    values = np.random.default_rng(2).standard_normal(5_000_000).astype(np.float32)
    check_finite("fine", values)
    values[4_321_987] = bad
    with pytest.raises(TensorError, match="w holds 1 non-finite"):
        check_finite("w", values)
    values[17] = -bad if not np.isnan(bad) else bad  # +inf and -inf sum to NaN: still found, and counted
    with pytest.raises(TensorError, match="w holds 2 non-finite"):
        check_finite("w", values)


def test_large_finite_float16_values_whose_sum_overflows_pass():
    check_finite("w", np.full(5_000_000, 65504, np.float16))


@pytest.mark.parametrize("target", ["flax.msgpack", "keras.weights.h5", "hf-tf"])
def test_conversions_with_mapped_multi_megabyte_tensors_round_trip_bit_exact(tmp_path, target):
    """Tensors above MAP_FROM are mapped from the source and transposed in reused memory, there and back."""
    config = tiny_config("y", hidden_sizes=[8, 16, 720], num_labels=600, groups_width=8)
    source = tmp_path / "hf"
    state = random_state(build_model_spec(config), 0, True)
    save_checkpoint(source, config, state)
    large = [name for name, t in open_safetensors(source / "model.safetensors").items() if t.nbytes >= MAP_FROM]
    assert len(large) >= 2  # the 720 x 720 projection and the 600 x 720 classifier at least
    before = (source / "model.safetensors").read_bytes()
    middle = tmp_path / target
    write_checkpoint(read_checkpoint(source), middle, "hf-tf" if target == "hf-tf" else None, progress=False)
    write_checkpoint(read_checkpoint(middle), tmp_path / "back", "hf", progress=False)
    assert (source / "model.safetensors").read_bytes() == before
    original = open_safetensors(source / "model.safetensors")
    returned = open_safetensors(tmp_path / "back" / "model.safetensors")
    assert set(returned) == set(original)
    for name, tensor in original.items():
        assert np.array_equal(returned[name].load(), tensor.load()), name


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_bfloat16_check_finds_bad_values_by_their_exponent(bad):
    from regnet_core.tensors import check_finite_stored, float32_to_bfloat16_bits

    bits = float32_to_bfloat16_bits(np.random.default_rng(3).standard_normal(3_000_000).astype(np.float32))
    check_finite_stored("fine", bits, "bfloat16")
    bits[[7, 2_500_000]] = float32_to_bfloat16_bits(np.array([bad, bad], np.float32))
    with pytest.raises(TensorError, match="w holds 2 non-finite"):
        check_finite_stored("w", bits, "bfloat16")
