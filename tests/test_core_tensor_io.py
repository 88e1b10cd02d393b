"""safetensors read lazily and written as a stream (bfloat16 included), shard indexes, atomic outputs."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from regnet_core.containers import read_index
from regnet_core.errors import CheckpointError
from regnet_core.io import OutputExistsError, atomic_output
from regnet_core.safetensors_io import open_safetensors, read_header, write_safetensors
from regnet_core.tensors import (
    LazyTensor,
    TensorError,
    bfloat16_bits_to_float32,
    check_weight_dtypes,
    float32_to_bfloat16_bits,
    lazy,
)


def _bf16_reference(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16 worked out through float64 arithmetic on the bit patterns."""
    out = []
    for value in values.astype(np.float32):
        bits = int(np.array(value, np.float32).view(np.uint32))
        upper, lower = bits >> 16, bits & 0xFFFF
        if lower > 0x8000 or (lower == 0x8000 and upper & 1):
            upper += 1
        out.append(upper)
    return np.array(out, np.uint16)


def test_bfloat16_rounding_is_nearest_even_and_widening_is_exact():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.standard_normal(1000).astype(np.float32), np.array([1.0, -2.5, 65504.0, 1e-30, 3.0e38], np.float32)]
    )
    # Ties: 1 + 2^-8 sits exactly between two bfloat16 numbers; it must round to the even one (1.0).
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8], np.float32)
    bits = float32_to_bfloat16_bits(np.concatenate([values, ties]))
    assert np.array_equal(bits, _bf16_reference(np.concatenate([values, ties])))
    widened = bfloat16_bits_to_float32(bits)
    assert widened[-2] == 1.0 and widened[-1] == 1 + 2**-6
    # Widening then narrowing gives the same bits back.
    assert np.array_equal(float32_to_bfloat16_bits(widened), bits)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int64"])
def test_safetensors_round_trip_streams_every_dtype(tmp_path: Path, dtype: str):
    rng = np.random.default_rng(1)
    values = {
        "a.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal((7,)).astype(np.float32),
        "count": np.array(5, np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }
    dtypes = {name: (dtype if name != "count" else "int64") for name in values}
    if dtype == "int64":
        dtypes = {name: ("int64" if name == "count" else "float32") for name in values}
    path = tmp_path / "x.safetensors"
    seen = []
    write_safetensors(path, values, dtypes, {"format": "pt"}, progress=lambda name, n: seen.append(name))
    assert seen == list(values)
    tensors = open_safetensors(path)
    assert list(tensors) == list(values)
    for name, value in values.items():
        tensor = tensors[name]
        assert tensor.dtype == dtypes[name] and tensor.shape == value.shape
        loaded = tensor.load()
        if dtypes[name] == "bfloat16":
            assert np.array_equal(loaded, bfloat16_bits_to_float32(float32_to_bfloat16_bits(value)))
        else:
            assert np.array_equal(loaded, value.astype(dtypes[name]))


def test_our_bfloat16_files_are_what_the_safetensors_library_reads(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    value = torch.randn(5, 6).to(torch.bfloat16)
    save_file({"w": value}, str(tmp_path / "theirs.safetensors"))
    ours = open_safetensors(tmp_path / "theirs.safetensors")["w"].load()
    assert np.array_equal(ours, value.float().numpy())
    write_safetensors(tmp_path / "ours.safetensors", {"w": ours}, {"w": "bfloat16"})
    back = load_file(str(tmp_path / "ours.safetensors"))["w"]
    assert back.dtype == torch.bfloat16 and torch.equal(back, value)


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 8 bytes"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside the data section"),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            "overlaps",
        ),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "belong to no tensor"),
        ({"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "dtype 'Q8'"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative integers"),
        ({"w": [1, 2]}, b"", "not an object"),
    ],
)
def test_a_safetensors_header_that_lies_is_refused_before_reading(tmp_path: Path, header, data, message):
    path = _header_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        open_safetensors(path)


def test_truncated_and_garbage_safetensors_are_refused(tmp_path: Path):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"w": np.ones((16, 16), np.float32)})
    raw = good.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(CheckpointError, match="data section"):
        open_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="8-byte header length"):
        open_safetensors(tmp_path / "tiny.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(CheckpointError, match="claims"):
        read_header(tmp_path / "huge.safetensors")
    (tmp_path / "notjson.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(CheckpointError, match="not JSON"):
        open_safetensors(tmp_path / "notjson.safetensors")


def test_lazy_tensors_read_nothing_until_loaded(tmp_path: Path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    tensor = open_safetensors(path)["w"]
    path.write_bytes(path.read_bytes()[:-8])  # truncated after the header was read
    with pytest.raises(CheckpointError, match="truncated"):
        tensor.load()


def test_non_finite_values_are_refused_on_write_with_the_tensor_name(tmp_path: Path):
    values = {"fine": np.ones(3, np.float32), "bad": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(TensorError, match="bad holds 1 non-finite"):
        write_safetensors(tmp_path / "x.safetensors", values)


def test_integer_weights_are_refused_by_name():
    state = {"w": lazy(np.ones(3, np.float32)), "i": lazy(np.ones(3, np.int32)), "count": np.array(1, np.int64)}
    with pytest.raises(TensorError, match=r"i \(int32\)"):
        check_weight_dtypes(state, lambda name: name == "count")
    check_weight_dtypes({"count": state["count"]}, lambda name: name == "count")


def test_lazy_map_composes_and_checks_shape():
    tensor = LazyTensor((2, 3), "float32", lambda: np.ones((2, 3), np.float32))
    assert tensor.map(lambda v: v.T, (3, 2)).load().shape == (3, 2)
    with pytest.raises(TensorError, match="expected shape"):
        tensor.map(lambda v: v.T).load()


@pytest.mark.parametrize(
    "weight_map, message",
    [
        ({"w": "../outside.safetensors"}, "not a plain file name"),
        ({"w": "/etc/passwd"}, "not a plain file name"),
        ({"w": "sub/x.safetensors"}, "not a plain file name"),
        ({"w": 3}, "expected a shard file name"),
        ({"w": "missing.safetensors"}, "missing"),
        ([["w", "x.safetensors"]], "weight_map"),
        ({}, "weight_map"),
    ],
)
def test_shard_indexes_never_lead_outside_the_directory(tmp_path: Path, weight_map, message):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=message):
        read_index(index)


def test_a_symlinked_shard_pointing_outside_is_refused(tmp_path: Path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    os.symlink(tmp_path / "outside.safetensors", directory / "link.safetensors")
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "link.safetensors"}}))
    with pytest.raises(CheckpointError, match="resolves outside"):
        read_index(index)


def test_atomic_output_appears_whole_and_refuses_to_replace_without_overwrite(tmp_path: Path):
    target = tmp_path / "out"
    with atomic_output(target) as temporary:
        temporary.mkdir()
        (temporary / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(OutputExistsError, match="already exists"):
        with atomic_output(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target, overwrite=True) as temporary:
            temporary.mkdir()
            (temporary / "a").write_text("2")
            raise RuntimeError("boom")
    assert (target / "a").read_text() == "1"  # the old content survives a failed replacement
    with atomic_output(target, overwrite=True) as temporary:
        temporary.mkdir()
        (temporary / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries left


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path: Path):
    target = tmp_path / "out.safetensors"
    stale = tmp_path / ".out.safetensors.tmp-999999999-deadbeef"
    stale.write_text("half")
    with atomic_output(target) as temporary:
        temporary.write_text("whole")
    assert not stale.exists() and target.read_text() == "whole"


def test_same_dtype_writes_pass_the_stored_bytes_through_layout_changes(tmp_path: Path):
    from regnet_core.tensors import LazyTensor

    rng = np.random.default_rng(5)
    values = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    write_safetensors(tmp_path / "a.safetensors", {"w": values}, {"w": "bfloat16"})
    tensor = open_safetensors(tmp_path / "a.safetensors")["w"]

    def widened() -> np.ndarray:
        raise AssertionError("the writer widened bfloat16 values it only had to move")

    moved = LazyTensor(tensor.shape, tensor.dtype, widened, "w", tensor.stored_loader).map(
        lambda v: np.ascontiguousarray(np.transpose(v, (3, 2, 0, 1))), (2, 3, 4, 3), layout_only=True
    )
    write_safetensors(tmp_path / "b.safetensors", {"w": moved})
    back = open_safetensors(tmp_path / "b.safetensors")["w"]
    assert back.dtype == "bfloat16"
    assert np.array_equal(back.load(), np.transpose(tensor.load(), (3, 2, 0, 1)))
    # A bfloat16 infinity (0x7F80) found while passing stored bytes through is refused too.
    bits = np.array([0x3F80, 0x7F80], "<u2").tobytes()
    path = _header_file(
        tmp_path / "c.safetensors", {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bits
    )
    with pytest.raises(TensorError, match="w holds 1 non-finite"):
        write_safetensors(tmp_path / "d.safetensors", {"w": open_safetensors(path)["w"]})
