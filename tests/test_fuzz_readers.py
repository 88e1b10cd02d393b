"""Fuzzing the checkpoint readers: random and mutated bytes give our error, quickly, in bounded memory.

Each reader gets a valid file of its format, mutated (bytes changed, cut, inserted, deleted)
or replaced by random bytes, and must either read every tensor or raise CheckpointError
(a ValueError of ours): no other exception, no crash, no hang (hypothesis' deadline), and no
allocation beyond a fixed bound (tracemalloc, which sees numpy's buffers).

The default run is short (REGNET_FUZZ_EXAMPLES examples per reader and input kind, 25
unless set; eight times that for headers and indexes, which parse in a millisecond). A long
run, e.g. before a release::

    REGNET_FUZZ_EXAMPLES=20000 REGNET_FUZZ_DEADLINE_MS=10000 .venv/bin/python -m pytest tests/test_fuzz_readers.py -q
"""

from __future__ import annotations

import itertools
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regnet_core import RegNetConfig
from regnet_core.checkpoint import save_checkpoint
from regnet_core.containers import open_pickle_state, read_index
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError
from regnet_core.formats.hf_tf import read_h5
from regnet_core.formats.keras_native import read_native
from regnet_core.msgpack_io import read_msgpack
from regnet_core.safetensors_io import open_safetensors
from regnet_core.specs import build_model_spec
from regnet_core.weights import random_state
from tests.helpers import requires

EXAMPLES = int(os.environ.get("REGNET_FUZZ_EXAMPLES", "25"))
DEADLINE_MS = int(os.environ.get("REGNET_FUZZ_DEADLINE_MS", "3000"))
MEMORY_BOUND = 64 * 2**20  # the inputs are a few kilobytes; any read past this is unbounded
CONFIG = RegNetConfig(hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, embedding_size=8, num_labels=3)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
# Headers and indexes are parsed in about a millisecond: they get more examples for the same time.
FUZZ_CHEAP = settings(FUZZ, max_examples=8 * EXAMPLES)
_names = itertools.count()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    """One valid file per reader, written by our writers from the same tiny checkpoint."""
    root = tmp_path_factory.mktemp("fuzz")
    state = random_state(build_model_spec(CONFIG), seed=0)
    save_checkpoint(root / "hf", CONFIG, state, architecture="RegNetForImageClassification")
    save_checkpoint(root / "sharded", CONFIG, state, max_shard_size="2KB", architecture="RegNetForImageClassification")
    checkpoint = read_checkpoint(root / "hf")
    write_checkpoint(checkpoint, root / "w.msgpack", "flax", progress=False)
    write_checkpoint(checkpoint, root / "tf", "hf-tf", progress=False)
    write_checkpoint(checkpoint, root / "k.weights.h5", "keras", progress=False)
    files = {
        "safetensors": root / "hf" / "model.safetensors",
        "msgpack": root / "w.msgpack",
        "hf-tf h5": root / "tf" / "tf_model.h5",
        "keras h5": root / "k.weights.h5",
        "index": root / "sharded" / "model.safetensors.index.json",
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        write_checkpoint(checkpoint, root / "t.pth", "timm", progress=False)
        files["pickle"] = root / "t.pth"
    work = root / "work"
    work.mkdir()
    shards = root / "sharded"
    for shard in shards.glob("model-*.safetensors"):  # an index is fuzzed beside real shards
        (work / shard.name).symlink_to(shard)
    files["work"] = work
    return files


def _load_all(tensors) -> None:
    for tensor in tensors.values():
        tensor.load()


READERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "safetensors": (".safetensors", lambda p: _load_all(open_safetensors(p))),
    "msgpack": (".msgpack", lambda p: _load_all(read_msgpack(p).tensors)),
    "hf-tf h5": (".h5", lambda p: _load_all(read_h5(p))),
    "keras h5": (".weights.h5", lambda p: _load_all(read_native(p)[0])),
    "pickle": (".pth", lambda p: _load_all(open_pickle_state(p))),
    "index": (".index.json", lambda p: read_index(p)),
}


def _check(samples: dict[str, Path], kind: str, data: bytes) -> None:
    """Read ``data`` with the reader of ``kind``: it reads, or raises CheckpointError, within the memory bound."""
    suffix, read = READERS[kind]
    path = samples["work"] / f"case{next(_names)}{suffix}"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        read(path)
    except CheckpointError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        path.unlink()
    assert peak < MEMORY_BOUND, f"{kind}: {peak / 2**20:.0f} MiB allocated for {len(data)} input bytes"


_MUTATION = st.one_of(
    st.tuples(st.just("set"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    st.tuples(st.just("number"), st.floats(0, 1, exclude_max=True), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63])),
)


def _mutate(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, where, value in mutations:
        if not out:
            break
        at = min(int(where * len(out)), len(out) - 1)
        if op == "set":
            out[at] = value
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = value
        elif op == "delete":
            del out[at : at + value]
        else:  # a large or zero number where a length, offset or dimension may be
            out[at : at + 8] = (value % 2**64).to_bytes(8, "little" if at % 2 else "big")
    return bytes(out)


def _kinds() -> list:
    return [pytest.param(kind, marks=[requires("torch")] if kind == "pickle" else [], id=kind) for kind in READERS]


@pytest.mark.parametrize("kind", _kinds())
def test_each_sample_reads_whole(samples, kind):
    """The unmutated files read: the fuzzing below starts from valid input."""
    suffix, read = READERS[kind]
    read(samples[kind])


@pytest.mark.parametrize("kind", _kinds())
@FUZZ
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=6))
def test_mutated_files_give_our_error(samples, kind, mutations):
    _check(samples, kind, _mutate(samples[kind].read_bytes(), mutations))


@pytest.mark.parametrize("kind", _kinds())
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_give_our_error(samples, kind, data):
    _check(samples, kind, data)


# Small dimensions, zero, and ones whose products overflow 64 bits or exceed what numpy can address.
_DIMENSION = st.one_of(
    st.integers(-1, 4), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64 - 1, 2**64]), st.integers(0, 2**70)
)


@FUZZ_CHEAP
@given(
    header=st.dictionaries(
        st.text(max_size=8),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F8", "x"]),
                "shape": st.lists(_DIMENSION, max_size=4),
                "data_offsets": st.one_of(
                    st.lists(st.sampled_from([0, 4, 8, 16]), min_size=2, max_size=2),
                    st.lists(st.integers(-4, 2**64), max_size=3),
                ),
            }
        ),
        max_size=4,
    ),
    data=st.binary(max_size=32),
)
def test_safetensors_headers_that_lie_give_our_error(samples, header, data):
    text = json.dumps(header).encode()
    _check(samples, "safetensors", len(text).to_bytes(8, "little") + text + data)


@FUZZ_CHEAP
@given(
    weight_map=st.one_of(
        st.dictionaries(
            st.text(max_size=12),
            st.one_of(
                st.sampled_from(["../x.safetensors", "/etc/hostname", "model-00001-of-00002.safetensors", "", "."]),
                st.text(max_size=20),
                st.integers(),
                st.none(),
                st.lists(st.text(max_size=3), max_size=2),
            ),
            max_size=5,
        ),
        st.lists(st.text(max_size=5), max_size=3),
        st.text(max_size=5),
        st.none(),
    )
)
def test_shard_indexes_give_our_error(samples, weight_map):
    _check(samples, "index", json.dumps({"metadata": {}, "weight_map": weight_map}).encode())
