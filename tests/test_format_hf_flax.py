"""``hf-flax``: transformers' flax_model.msgpack directories, read and written, checked against transformers' Flax RegNet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.base import ReferenceUnavailable
from regnet_core.formats.hf import transformers_config_fields
from regnet_core.msgpack_io import read_msgpack, write_msgpack

from .helpers import tiny_config

PIXELS = np.random.default_rng(7).standard_normal((2, 3, 40, 40)).astype(np.float32)
RTOL = 1e-5


def _relative(expected: np.ndarray, got: np.ndarray) -> float:
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    return float(np.max(np.abs(expected - got)) / np.max(np.abs(expected)))


def _transformers():
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    transformers = pytest.importorskip("transformers")
    from transformers.utils import logging

    logging.set_verbosity_error()
    return transformers


def _flax_logits(model, params) -> np.ndarray:
    """Logits of a transformers Flax model on PIXELS, in one compiled forward."""
    import jax

    forward = jax.jit(lambda p, x: model(x, params=p, train=False).logits)
    with jax.default_matmul_precision("highest"):
        return np.asarray(forward(params, PIXELS))


def _torch_logits(directory: Path) -> np.ndarray:
    import torch

    transformers = _transformers()
    model = transformers.RegNetForImageClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.from_numpy(PIXELS)).logits.numpy()


def _random_like(tree, seed: int):
    """Random float32 values for every leaf of an abstract tree; BatchNorm scales and variances positive."""
    import jax

    rng = np.random.default_rng(seed)

    def fill(path, leaf) -> np.ndarray:
        noise = rng.random(leaf.shape, dtype=np.float32)
        return noise + 0.5 if path[-1].key in ("scale", "var") else noise - 0.5

    return jax.tree_util.tree_map_with_path(fill, tree)


@pytest.fixture(scope="module")
def transformers_flax(tmp_path_factory) -> dict:
    """Directories saved by transformers' FlaxRegNetForImageClassification: random weights and BN statistics.

    The variables tree is transformers' own (its init, traced abstractly); the files are its save_pretrained's.
    """
    transformers = _transformers()
    import functools

    import jax

    root = tmp_path_factory.mktemp("transformers_flax")
    config = transformers.RegNetConfig(**transformers_config_fields(tiny_config("y")))
    model = transformers.FlaxRegNetForImageClassification(config, _do_init=False)
    shapes = jax.eval_shape(functools.partial(model.init_weights, input_shape=(1, 32, 32, 3)), jax.random.PRNGKey(0))
    params = _random_like(shapes, seed=1)
    assert set(params) == {"params", "batch_stats"}
    model.save_pretrained(root / "single", params=params)
    model.save_pretrained(root / "sharded", params=params, max_shard_size="4KB")
    trunk = transformers.FlaxRegNetModel(config, _do_init=False)
    trunk.save_pretrained(root / "trunk", params={name: tree["regnet"] for name, tree in params.items()})
    return {"root": root, "logits": _flax_logits(model, params), "params": params}


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_transformers_flax_files_convert_to_hf_with_their_logits(transformers_flax, tmp_path: Path, layout: str):
    source = transformers_flax["root"] / layout
    if layout == "sharded":
        assert len(json.loads((source / "flax_model.msgpack.index.json").read_text())["weight_map"]) == 117
    checkpoint = read_checkpoint(source, "hf-flax")
    assert checkpoint.format == "hf-flax" and checkpoint.config_origin == "checkpoint" and checkpoint.with_head
    write_checkpoint(checkpoint, tmp_path / "hf", "hf", progress=False)
    assert _relative(transformers_flax["logits"], _torch_logits(tmp_path / "hf")) <= RTOL
    # BatchNorm statistics came across (transformers' own from_pt keeps them).
    mean = checkpoint.tensors["stem.bn.running_mean"].load()
    expected = transformers_flax["params"]["batch_stats"]["regnet"]["embedder"]["embedder"]["normalization"]["mean"]
    assert np.array_equal(mean, np.asarray(expected)) and np.count_nonzero(mean)


def test_a_transformers_flax_trunk_reads_as_a_trunk(transformers_flax):
    checkpoint = read_checkpoint(transformers_flax["root"] / "trunk", "hf-flax")
    assert not checkpoint.with_head and checkpoint.format == "hf-flax"
    assert "embedder.embedder.convolution.weight" in checkpoint.canonical_state()


@pytest.mark.parametrize("shard", ["4KB", "5GB"])
def test_our_output_loads_in_transformers_flax_with_equal_logits(tmp_path: Path, shard: str):
    transformers = _transformers()
    config = tiny_config("y")
    save_checkpoint(tmp_path / "src", config, random_state(build_model_spec(config), seed=3))
    checkpoint = read_checkpoint(tmp_path / "src")
    files = write_checkpoint(checkpoint, tmp_path / "out", "hf-flax", max_shard_size=shard, progress=False)
    names = sorted(path.name for path in files)
    if shard == "4KB":
        index = json.loads((tmp_path / "out" / "flax_model.msgpack.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"flax_model-00001-of-{len(shards):05d}.msgpack"
        assert names == sorted([*shards, "flax_model.msgpack.index.json", "config.json", "preprocessor_config.json"])
        assert "batch_stats/regnet/embedder/embedder/normalization/mean" in index["weight_map"]
    else:
        assert names == ["config.json", "flax_model.msgpack", "preprocessor_config.json"]
        paths = read_msgpack(tmp_path / "out" / "flax_model.msgpack").tensors
        assert "params/regnet/encoder/stages/1/layers/1/layer/2/attention/0/kernel" in paths
        assert sum(path.startswith("batch_stats/") for path in paths) == 2 * 19  # mean and var of 19 BatchNorms
    model, params = transformers.FlaxRegNetForImageClassification.from_pretrained(tmp_path / "out", _do_init=False)
    assert set(params) == {"params", "batch_stats"}
    assert _relative(_torch_logits(tmp_path / "src"), _flax_logits(model, params)) <= RTOL


def test_our_three_backends_load_a_flax_model_msgpack_directory(transformers_flax):
    pytest.importorskip("tensorflow")
    import regnet_flax
    import regnet_pt
    import regnet_tf
    from regnet_core.backends import get_backend

    source = transformers_flax["root"] / "single"
    models = {
        "pt": regnet_pt.RegNetForImageClassification.from_pretrained(source),
        "tf": regnet_tf.RegNetForImageClassification.from_pretrained(source),
        "flax": regnet_flax.from_pretrained(source),
    }
    for framework, model in models.items():
        logits = get_backend(framework).run(model, PIXELS, output_hidden_states=False)["logits"]
        assert _relative(transformers_flax["logits"], np.asarray(logits)) <= RTOL, framework


def test_transformers_flax_directories_and_files_are_detected(transformers_flax, tmp_path: Path):
    root = transformers_flax["root"]
    for name in ("single", "sharded", "trunk"):
        assert detect_format(root / name)[0].name == "hf-flax", name
    shutil.copy(root / "single" / "flax_model.msgpack", tmp_path / "weights.msgpack")
    assert detect_format(tmp_path / "weights.msgpack")[0].name == "hf-flax"
    checkpoint = read_checkpoint(root / "sharded")
    assert checkpoint.format == "hf-flax" and checkpoint.config_origin == "checkpoint"


def test_regnet_convert_to_hf_flax_verifies(tmp_path: Path, capsys, monkeypatch):
    # PyTorch and Flax run the result (TensorFlow, slow to import, is covered by the loading tests).
    monkeypatch.setattr("regnet_core.convert.installed_frameworks", lambda: ["pt", "flax"])
    config = tiny_config("y")
    save_checkpoint(tmp_path / "src", config, random_state(build_model_spec(config), seed=5))
    code = main(["convert", str(tmp_path / "src"), str(tmp_path / "out"), "--to", "hf-flax", "--verify", "--quiet"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "verify: PASS" in output and "(hf-flax)" in output


def test_x_models_are_written_with_a_warning_and_have_no_reference(tmp_path: Path):
    config = tiny_config("x")
    save_checkpoint(tmp_path / "src", config, random_state(build_model_spec(config), seed=2))
    checkpoint = read_checkpoint(tmp_path / "src")
    with pytest.warns(UserWarning, match="cannot build X models"):
        write_checkpoint(checkpoint, tmp_path / "out", "hf-flax", progress=False)
    back = read_checkpoint(tmp_path / "out", "hf-flax")
    assert back.format == "hf-flax" and back.config.layer_type == "x"
    for name, tensor in checkpoint.tensors.items():
        if not name.endswith("num_batches_tracked"):
            assert np.array_equal(back.tensors[name].load(), tensor.load()), name
    with pytest.raises(ReferenceUnavailable, match="cannot build X models"):
        get_format("hf-flax").reference_logits(back.foreign, back.config)
    odd = tiny_config("y", se_ratio=0.5)
    save_checkpoint(tmp_path / "odd", odd, random_state(build_model_spec(odd), seed=2))
    with pytest.warns(UserWarning, match="SE ratio 0.25, this model has 0.5"):
        write_checkpoint(read_checkpoint(tmp_path / "odd"), tmp_path / "odd_out", "hf-flax", progress=False)


def _our_directory(tmp_path: Path, shard: str = "4KB") -> Path:
    config = tiny_config("y")
    save_checkpoint(tmp_path / "src", config, random_state(build_model_spec(config), seed=1))
    write_checkpoint(
        read_checkpoint(tmp_path / "src"), tmp_path / "out", "hf-flax", max_shard_size=shard, progress=False
    )
    return tmp_path / "out"


def test_shard_indexes_naming_files_outside_the_directory_are_refused(tmp_path: Path):
    directory = _our_directory(tmp_path)
    index_path = directory / "flax_model.msgpack.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    shutil.copy(directory / index["weight_map"][name], tmp_path / "x")
    index["weight_map"][name] = "../x"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"names the shard '\.\./x'.*refusing to read outside"):
        read_checkpoint(directory, "hf-flax")
    index["weight_map"][name] = "flax_model-99999-of-99999.msgpack"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing"):
        read_checkpoint(directory, "hf-flax")


def test_files_without_batch_stats_are_refused_not_zeroed(tmp_path: Path):
    directory = _our_directory(tmp_path, "5GB")
    contents = read_msgpack(directory / "flax_model.msgpack")
    params = {n: t for n, t in contents.tensors.items() if n.startswith("params/")}
    from regnet_core.msgpack_io import nest

    write_msgpack(directory / "flax_model.msgpack", nest({n: t.load() for n, t in params.items()}))
    with pytest.raises(CheckpointError, match=r"missing: .*running_mean"):
        read_checkpoint(directory, "hf-flax")


def test_a_bare_msgpack_file_in_the_transformers_layout_infers_its_config(tmp_path: Path):
    directory = _our_directory(tmp_path, "5GB")
    bare = tmp_path / "weights.msgpack"
    shutil.copy(directory / "flax_model.msgpack", bare)
    checkpoint = read_checkpoint(bare)
    assert checkpoint.format == "hf-flax" and checkpoint.config_origin == "inferred"
    assert build_model_spec(checkpoint.config) == build_model_spec(tiny_config("y"))
