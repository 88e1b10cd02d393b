"""Every bad checkpoint gets a clear error of our own type, in all three backends' from_pretrained and the CLI.

Each case builds a broken checkpoint from a good tiny one and names the error type and a
piece of the message (what was expected, what came). The same case is then read by
``from_pretrained`` of PyTorch, TensorFlow and Flax, and by ``regnet convert`` (exit 2,
one line on stderr, nothing written).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from regnet_core import RegNetConfig
from regnet_core.checkpoint import load_state, save_checkpoint, write_checkpoint_directory
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError, UnsafeCheckpointError
from regnet_core.specs import build_model_spec
from regnet_core.tensors import TensorError
from regnet_core.weights import CheckpointMismatchError, random_state
from tests.helpers import requires

CONFIG = RegNetConfig(hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, embedding_size=8, num_labels=3)
MARKER = "regnet-reliability-pickle-ran"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A tiny classification checkpoint in the formats the cases break: hf (single, sharded), hf-tf, hf-flax."""
    root = tmp_path_factory.mktemp("good")
    state = random_state(build_model_spec(CONFIG), seed=0)
    save_checkpoint(root / "single", CONFIG, state, architecture="RegNetForImageClassification")
    save_checkpoint(root / "sharded", CONFIG, state, max_shard_size="2KB", architecture="RegNetForImageClassification")
    checkpoint = read_checkpoint(root / "single")
    write_checkpoint(checkpoint, root / "tf", "hf-tf", progress=False)
    write_checkpoint(checkpoint, root / "flax", "hf-flax", progress=False)
    (root / "outside.safetensors").write_bytes((root / "single" / "model.safetensors").read_bytes())
    return {
        "root": root,
        "single": root / "single",
        "sharded": root / "sharded",
        "tf": root / "tf",
        "flax": root / "flax",
    }


# ----------------------------------------------------------------------------- how to break a checkpoint


def _copy(good: dict[str, Path], kind: str, where: Path) -> Path:
    shutil.copytree(good[kind], where)
    return where


def _rewrite_header(path: Path, change: Callable[[dict], dict]) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8 : 8 + length]))
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def _first(header: dict, suffix: str) -> str:
    return next(name for name in header if name.endswith(suffix))


def _edit_index(directory: Path, change: Callable[[dict], object]) -> None:
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps(change(json.loads(index.read_text()))))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _h5_classifier_dataset(handle) -> str:
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return next(name for name in names if "classifier" in name and name.endswith("bias:0"))


def _h5_edit(directory: Path, change: Callable) -> None:
    import h5py

    with h5py.File(directory / "tf_model.h5", "r+") as handle:
        change(handle, _h5_classifier_dataset(handle))


def _evil_pickle(path: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / MARKER}",))

    torch.save({"classifier.1.weight": Evil()}, path)


def _case_truncated(good, d):
    _truncate(_copy(good, "single", d) / "model.safetensors", 0.6)
    return d


def _case_empty_weights(good, d):
    (_copy(good, "single", d) / "model.safetensors").write_bytes(b"")
    return d


def _case_random_weights(good, d):
    (_copy(good, "single", d) / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(2000))
    return d


def _case_offsets_lie(good, d):
    def change(header):
        name = _first(header, "embedder.convolution.weight")
        header[name]["data_offsets"][1] += 4
        return header

    _rewrite_header(_copy(good, "single", d) / "model.safetensors", change)
    return d


def _case_overlap(good, d):
    def change(header):
        weight, bias = _first(header, "classifier.1.weight"), _first(header, "classifier.1.bias")
        header[bias]["data_offsets"] = list(header[weight]["data_offsets"][:1]) + [
            header[weight]["data_offsets"][0] + 12
        ]
        return header

    _rewrite_header(_copy(good, "single", d) / "model.safetensors", change)
    return d


def _case_huge_shape(good, d):
    def change(header):
        header[_first(header, "classifier.1.bias")]["shape"] = [2**62, 4]
        return header

    _rewrite_header(_copy(good, "single", d) / "model.safetensors", change)
    return d


def _case_integer_weights(good, d):
    state = load_state(good["single"])
    state["classifier.1.weight"] = state["classifier.1.weight"].astype(np.int32)
    write_checkpoint_directory(d, CONFIG, state)
    return d


def _case_keys(good, d):
    state = load_state(good["single"])
    del state["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]
    state["regnet.encoder.stages.9.extra.weight"] = np.ones(3, np.float32)
    state["classifier.1.weight"] = np.ones((4, 16), np.float32)
    write_checkpoint_directory(d, CONFIG, state)
    return d


def _case_config_disagrees(good, d):
    config = json.loads((_copy(good, "single", d) / "config.json").read_text())
    config["hidden_sizes"] = [16, 32]
    (d / "config.json").write_text(json.dumps(config))
    return d


def _case_config_not_json(good, d):
    (_copy(good, "single", d) / "config.json").write_text("{not json")
    return d


def _case_missing_path(good, d):
    return d / "nowhere"


def _case_empty_directory(good, d):
    d.mkdir()
    return d


def _case_no_config_no_weights(good, d):
    d.mkdir()
    (d / "README.md").write_text("notes")
    return d


def _case_config_without_weights(good, d):
    d.mkdir()
    shutil.copy(good["single"] / "config.json", d)
    return d


def _case_index_parent(good, d):
    _edit_index(
        _copy(good, "sharded", d),
        lambda j: {**j, "weight_map": dict.fromkeys(j["weight_map"], "../outside.safetensors")},
    )
    return d


def _case_index_absolute(good, d):
    outside = str(good["root"] / "outside.safetensors")
    _edit_index(_copy(good, "sharded", d), lambda j: {**j, "weight_map": dict.fromkeys(j["weight_map"], outside)})
    return d


def _case_index_symlink(good, d):
    _copy(good, "sharded", d)
    os.symlink(good["root"] / "outside.safetensors", d / "link.safetensors")
    _edit_index(d, lambda j: {**j, "weight_map": dict.fromkeys(j["weight_map"], "link.safetensors")})
    return d


def _case_index_list(good, d):
    _edit_index(_copy(good, "sharded", d), lambda j: {**j, "weight_map": sorted(j["weight_map"].items())})
    return d


def _case_index_numbers(good, d):
    _edit_index(_copy(good, "sharded", d), lambda j: {**j, "weight_map": dict.fromkeys(j["weight_map"], 1)})
    return d


def _case_index_top_list(good, d):
    _edit_index(_copy(good, "sharded", d), lambda j: [j])
    return d


def _case_index_not_json(good, d):
    (_copy(good, "sharded", d) / "model.safetensors.index.json").write_text('{"weight_map": ')
    return d


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("model-*-of-*.safetensors"))


def _case_index_missing_shard(good, d):
    _shards(_copy(good, "sharded", d))[1].unlink()
    return d


def _case_index_directory(good, d):
    _copy(good, "sharded", d)
    (d / "sub").mkdir()
    _edit_index(d, lambda j: {**j, "weight_map": {**j["weight_map"], "classifier.1.bias": "sub"}})
    return d


def _case_index_lists_absent_tensor(good, d):
    first = _shards(_copy(good, "sharded", d))[0].name
    _edit_index(d, lambda j: {**j, "weight_map": {**j["weight_map"], "extra.weight": first}})
    return d


def _case_tensor_in_two_shards(good, d):
    first, second = _shards(_copy(good, "sharded", d))[:2]
    shutil.copy(first, second)
    return d


def _case_pickle_with_code_bin(good, d):
    d.mkdir()
    shutil.copy(good["single"] / "config.json", d)
    _evil_pickle(d / "pytorch_model.bin")
    return d


def _case_pickle_with_code_pth(good, d):
    d.mkdir()
    _evil_pickle(d / "model.pth")
    return d / "model.pth"


def _case_truncated_pth(good, d):
    import torch

    d.mkdir()
    torch.save({name: torch.from_numpy(value) for name, value in load_state(good["single"]).items()}, d / "w.pth")
    _truncate(d / "w.pth", 0.5)
    return d / "w.pth"


def _case_random_pth(good, d):
    d.mkdir()
    (d / "w.pth").write_bytes(np.random.default_rng(1).bytes(3000))
    return d / "w.pth"


def _case_truncated_h5(good, d):
    _truncate(_copy(good, "tf", d) / "tf_model.h5", 0.5)
    return d


def _case_h5_external_link(good, d):
    import h5py

    _copy(good, "tf", d)
    with h5py.File(good["root"] / "outside.h5", "a") as handle:
        handle.require_dataset("secret", (3,), np.float32)

    def change(handle, name):
        del handle[name]
        handle[name] = h5py.ExternalLink(str(good["root"] / "outside.h5"), "/secret")

    _h5_edit(d, change)
    return d


def _case_h5_external_storage(good, d):
    (good["root"] / "secret.bin").write_bytes(np.zeros(3, np.float32).tobytes())

    def change(handle, name):
        del handle[name]
        handle.create_dataset(name, (3,), np.float32, external=[(str(good["root"] / "secret.bin"), 0, 12)])

    _h5_edit(_copy(good, "tf", d), change)
    return d


def _case_h5_virtual(good, d):
    import h5py

    with h5py.File(good["root"] / "outside-v.h5", "a") as handle:
        handle.require_dataset("secret", (3,), np.float32)

    def change(handle, name):
        del handle[name]
        layout = h5py.VirtualLayout(shape=(3,), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(good["root"] / "outside-v.h5"), "secret", shape=(3,))
        handle.create_virtual_dataset(name, layout)

    _h5_edit(_copy(good, "tf", d), change)
    return d


def _case_h5_unwritten_dataset(good, d):
    def change(handle, name):
        del handle[name]
        handle.create_dataset(name, (3,), np.float32)  # declared, never written: no storage

    _h5_edit(_copy(good, "tf", d), change)
    return d


def _case_truncated_msgpack(good, d):
    _truncate(_copy(good, "flax", d) / "flax_model.msgpack", 0.7)
    return d


def _case_random_msgpack(good, d):
    (_copy(good, "flax", d) / "flax_model.msgpack").write_bytes(np.random.default_rng(2).bytes(1500))
    return d


# name -> (build(good, directory) -> path to read, error type, message pattern, needs)
CASES: dict[str, tuple[Callable, type, str, str | None]] = {
    "truncated safetensors": (
        _case_truncated,
        CheckpointError,
        r"not a valid safetensors file: .*outside the data",
        None,
    ),
    "empty safetensors": (
        _case_empty_weights,
        CheckpointError,
        r"expected an 8-byte header length, the file has 0",
        None,
    ),
    "random bytes as safetensors": (_case_random_weights, CheckpointError, r"not a valid safetensors file", None),
    "header offsets lie": (_case_offsets_lie, CheckpointError, r"needs 864 bytes, its offsets give 868", None),
    "header overlaps": (_case_overlap, CheckpointError, r"needs 12 bytes|overlaps", None),
    "header shape too large": (_case_huge_shape, CheckpointError, r"shape \[4611686018427387904, 4\]", None),
    "integer weights": (_case_integer_weights, TensorError, r"expected floating-point weights.*\(int32\)", None),
    "missing, unexpected and mis-shaped keys": (
        _case_keys,
        CheckpointMismatchError,
        r"1 missing: .*stages\.1\.layers\.0\.layer\.1\.convolution\.weight.*unexpected: .*extra\.weight.*"
        r"wrong shape: .*classifier\.1\.weight \(expected \(3, 16\), got \(4, 16\)\)",
        None,
    ),
    "config disagrees with the weights": (
        _case_config_disagrees,
        CheckpointMismatchError,
        r"with the wrong shape: .*expected \(16, 8, 1, 1\), got \(8, 8, 1, 1\)",
        None,
    ),
    "config.json not JSON": (_case_config_not_json, CheckpointError, r"config\.json is not valid JSON", None),
    "path does not exist": (_case_missing_path, CheckpointError, r"no checkpoint at .*no such file or directory", None),
    "empty directory": (_case_empty_directory, FormatError, r"saw a directory holding nothing", None),
    "directory without config.json or weights": (
        _case_no_config_no_weights,
        FormatError,
        r"cannot tell the format of .*holding README\.md; expected a checkpoint directory",
        None,
    ),
    "config.json without weights": (
        _case_config_without_weights,
        CheckpointError,
        r"expected model\.safetensors, model\.safetensors\.index\.json, .* found config\.json",
        None,
    ),
    "index names ../": (_case_index_parent, UnsafeCheckpointError, r"'\.\./outside\.safetensors'.*outside", None),
    "index names an absolute path": (_case_index_absolute, UnsafeCheckpointError, r"not a plain file name", None),
    "index names a symlink out": (_case_index_symlink, UnsafeCheckpointError, r"resolves outside", None),
    "index weight_map is a list": (_case_index_list, CheckpointError, r"weight_map that is a JSON array", None),
    "index weight_map values not strings": (
        _case_index_numbers,
        CheckpointError,
        r"maps '.*' to 1; expected a shard file name",
        None,
    ),
    "index is a list": (_case_index_top_list, CheckpointError, r"not a shard index: .*got a JSON array", None),
    "index not JSON": (_case_index_not_json, CheckpointError, r"is not a shard index", None),
    "index names a missing shard": (
        _case_index_missing_shard,
        CheckpointError,
        r"lists the shard model-00002-of-\d{5}\.safetensors, which is missing",
        None,
    ),
    "index names a directory": (
        _case_index_directory,
        CheckpointError,
        r"lists the shard sub, which is a directory",
        None,
    ),
    "index lists an absent tensor": (
        _case_index_lists_absent_tensor,
        CheckpointError,
        r"lack tensors their index lists: extra\.weight",
        None,
    ),
    "a tensor in two shards": (_case_tensor_in_two_shards, CheckpointError, r"appears in more than one shard", None),
    "pickle that runs code (pytorch_model.bin)": (
        _case_pickle_with_code_bin,
        UnsafeCheckpointError,
        r"refused to unpickle .*asks to import posix\.system.*nothing in the file was run",
        "torch",
    ),
    "pickle that runs code (.pth)": (
        _case_pickle_with_code_pth,
        UnsafeCheckpointError,
        r"refused to unpickle .*asks to import posix\.system",
        "torch",
    ),
    "truncated .pth": (_case_truncated_pth, CheckpointError, r"incomplete PyTorch file.*truncated", "torch"),
    "random bytes as .pth": (_case_random_pth, CheckpointError, r"is not a PyTorch file: expected a zip", "torch"),
    "truncated tf_model.h5": (
        _case_truncated_h5,
        CheckpointError,
        r"tf_model\.h5 is not an HDF5 file .*or is damaged",
        None,
    ),
    "h5 external link": (_case_h5_external_link, UnsafeCheckpointError, r"is a link to .*outside\.h5.*outside", None),
    "h5 external storage": (_case_h5_external_storage, UnsafeCheckpointError, r"stored in external files", None),
    "h5 virtual dataset": (_case_h5_virtual, UnsafeCheckpointError, r"is a virtual dataset", None),
    "h5 dataset without data": (
        _case_h5_unwritten_dataset,
        CheckpointError,
        r"declares shape \(3,\).*stores 0 bytes",
        None,
    ),
    "truncated flax_model.msgpack": (_case_truncated_msgpack, CheckpointError, r"Flax msgpack file: .*truncated", None),
    "random bytes as msgpack": (_case_random_msgpack, CheckpointError, r"as a Flax msgpack file", None),
}


def _params():
    out = []
    for name, (_, _, _, needs) in CASES.items():
        marks = [requires(needs)] if needs else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _load_pt(path: Path) -> None:
    import regnet_pt

    regnet_pt.RegNetForImageClassification.from_pretrained(path)


def _load_tf(path: Path) -> None:
    import regnet_tf

    regnet_tf.RegNetForImageClassification.from_pretrained(path)


def _load_flax(path: Path) -> None:
    import regnet_flax

    regnet_flax.from_pretrained(path)


BACKENDS = [
    pytest.param(_load_pt, marks=requires("torch"), id="pt"),
    pytest.param(_load_tf, marks=requires("tensorflow"), id="tf"),
    pytest.param(_load_flax, marks=requires("flax"), id="flax"),
]


@pytest.mark.parametrize("load", BACKENDS)
@pytest.mark.parametrize("case", _params())
def test_from_pretrained_gives_our_error(good, tmp_path, case, load):
    build, error_type, pattern, _ = CASES[case]
    path = build(good, tmp_path / "ckpt")
    with pytest.raises(error_type, match=pattern) as caught:
        load(path)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, CheckpointError)
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, CheckpointError)
    assert not (tmp_path / "ckpt" / MARKER).exists()  # nothing in a pickle ran


@pytest.mark.parametrize("case", _params())
def test_convert_exits_2_with_one_line_and_writes_nothing(good, tmp_path, capsys, case):
    build, _, pattern, _ = CASES[case]
    path = build(good, tmp_path / "ckpt")
    code = main(["convert", str(path), str(tmp_path / "out"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("regnet: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert pytest.importorskip("re").search(pattern, err), err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert not (tmp_path / "ckpt" / MARKER).exists()


# ----------------------------------------------------------------------------- unreadable files


def _deny(monkeypatch, denied: Path) -> None:
    """Make opening ``denied`` fail as an unreadable file does (chmod 0 does not stop root)."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == denied.resolve():
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize("file_name", ["model.safetensors", "config.json"])
def test_an_unreadable_file_is_named_with_the_reason(good, tmp_path, capsys, monkeypatch, file_name):
    directory = _copy(good, "single", tmp_path / "ckpt")
    _deny(monkeypatch, directory / file_name)
    with pytest.raises(CheckpointError, match=rf"cannot read .*{file_name}: Permission denied"):
        read_checkpoint(directory)
    code = main(["convert", str(directory), str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Permission denied" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_named(good, tmp_path):
    directory = _copy(good, "single", tmp_path / "ckpt")
    os.chmod(directory / "model.safetensors", 0)
    try:
        with pytest.raises(CheckpointError, match="cannot read .*model.safetensors: Permission denied"):
            read_checkpoint(directory)
    finally:
        os.chmod(directory / "model.safetensors", 0o644)


def test_a_directory_with_weights_but_no_config_says_it_inferred_the_architecture(good, tmp_path, capsys):
    directory = _copy(good, "single", tmp_path / "ckpt")
    (directory / "config.json").unlink()
    checkpoint = read_checkpoint(directory)
    assert checkpoint.config_origin == "inferred"
    assert build_model_spec(checkpoint.config) == build_model_spec(CONFIG)
    assert main(["convert", str(directory), str(tmp_path / "out"), "--quiet"]) == 0
    assert "inferred:" in capsys.readouterr().out
