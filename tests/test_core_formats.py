"""Neutral names, config inference, format detection and the hf conversion path, numpy only."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError
from regnet_core.formats import FORMAT_NAMES, detect_format, get_format, neutral
from regnet_core.formats.base import NameTable
from regnet_core.formats.infer import InferenceError, infer_config
from regnet_core.io import OutputExistsError
from regnet_core.safetensors_io import open_safetensors, write_safetensors
from regnet_core.weights import parameter_table
from regnet_core.zoo import ZOO

from .helpers import tiny_config


@pytest.mark.parametrize("name", list(ZOO))
def test_neutral_names_round_trip_every_zoo_table(name: str):
    spec = build_model_spec(get_config(name))
    for with_head in (True, False):
        canonical = [t.name for t in parameter_table(spec, with_head)]
        to_neutral, unknown = neutral.from_canonical(canonical)
        assert not unknown
        assert len(set(to_neutral.values())) == len(canonical)
        back = neutral.to_canonical(to_neutral.values(), with_prefix=with_head)
        assert [back[to_neutral[c]] for c in canonical] == canonical


def test_neutral_names_of_a_y_block_put_conv_c_after_the_se():
    spec = build_model_spec(tiny_config("y"))
    names = neutral.to_canonical(["s0.b0.c.conv.weight", "s0.b0.se.reduce.weight", "head.weight"])
    assert names["s0.b0.c.conv.weight"] == "regnet.encoder.stages.0.layers.0.layer.3.convolution.weight"
    assert names["s0.b0.se.reduce.weight"] == "regnet.encoder.stages.0.layers.0.layer.2.attention.0.weight"
    x_names = neutral.to_canonical(["s0.b0.c.conv.weight"])
    assert x_names["s0.b0.c.conv.weight"] == "encoder.stages.0.layers.0.layer.2.convolution.weight"
    assert spec.stages[0].blocks[0].has_se


def test_name_tables_map_both_ways_with_one_based_and_repeated_fields():
    table = NameTable(
        [
            ("trunk.block{stage1}.block{stage1}-{block}.f.a.0.weight", "s{stage}.b{block}.a.conv.weight"),
            ("trunk.block{stage1}.block{stage1}-{block}.f.a.1.{bn}", "s{stage}.b{block}.a.bn.{bn}"),
            ("s{stage1}.b{block1}.se.fc1.{wb}", "s{stage}.b{block}.se.reduce.{wb}"),
        ]
    )
    assert table.to_neutral("trunk.block2.block2-3.f.a.0.weight") == "s1.b3.a.conv.weight"
    assert table.to_neutral("trunk.block2.block3-3.f.a.0.weight") is None  # the repeated field must agree
    assert table.to_neutral("trunk.block1.block1-0.f.a.1.running_var") == "s0.b0.a.bn.running_var"
    assert table.to_neutral("s1.b1.se.fc1.bias") == "s0.b0.se.reduce.bias"
    assert table.from_neutral("s3.b0.a.bn.num_batches_tracked") == "trunk.block4.block4-0.f.a.1.num_batches_tracked"
    assert table.from_neutral("s0.b0.c.conv.weight") is None


def _neutral_shapes(config) -> dict[str, tuple[int, ...]]:
    spec = build_model_spec(config)
    with_head = spec.head.num_labels > 0
    table = parameter_table(spec, with_head)
    to_neutral, _ = neutral.from_canonical([t.name for t in table])
    return {to_neutral[t.name]: t.shape for t in table}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_architecture_is_inferred_from_its_shapes_alone(name: str):
    config = get_config(name)
    inferred = infer_config(_neutral_shapes(config))
    assert build_model_spec(inferred.config) == build_model_spec(config)
    assert name in inferred.zoo_matches


@pytest.mark.parametrize(
    "changes",
    [
        dict(layer_type="x"),
        dict(se_ratio=0.5),
        dict(bottleneck_ratio=0.5, hidden_sizes=[16, 32, 48]),
        dict(downsample_in_first_stage=False),
        dict(num_channels=1),
        dict(num_labels=0),
        dict(groups_width=16, hidden_sizes=[8, 32, 48]),
    ],
)
def test_config_variants_are_inferred_exactly(changes):
    config = tiny_config(**changes)
    inferred = infer_config(_neutral_shapes(config))
    assert build_model_spec(inferred.config) == build_model_spec(config)
    assert not inferred.zoo_matches


def test_contradicting_weights_are_refused_naming_the_tensors():
    shapes = _neutral_shapes(tiny_config())
    shapes["s1.b1.a.conv.weight"] = (16, 8, 1, 1)  # the second block's input is the stage width 16
    expected = (
        r"s2\.b2\.conv1\.conv\.weight \(s1\.b1\.a\.conv\.weight\) has shape \(16, 8, 1, 1\), expected \(16, 16, 1, 1\)"
    )
    with pytest.raises(InferenceError, match=expected):
        infer_config(shapes, {"s1.b1.a.conv.weight": "s2.b2.conv1.conv.weight"})
    shapes = _neutral_shapes(tiny_config())
    del shapes["s1.b0.proj.conv.weight"]
    for key in [k for k in shapes if k.startswith("s1.b0.proj.")]:
        del shapes[key]
    with pytest.raises(InferenceError, match="stage 1 block 0 changes width"):
        infer_config(shapes)
    shapes = _neutral_shapes(tiny_config())
    for key in [k for k in shapes if k.startswith("s2.b1.se.")]:
        del shapes[key]
    with pytest.raises(InferenceError, match="some blocks have squeeze-and-excitation and some do not"):
        infer_config(shapes)
    shapes = _neutral_shapes(tiny_config())
    shapes["head.weight"] = (5, 99)
    with pytest.raises(InferenceError, match="head.weight has shape"):
        infer_config(shapes)


def _hf_dir(tmp_path: Path, config=None, name="ckpt", **save) -> tuple[Path, dict]:
    config = config or tiny_config()
    state = random_state(build_model_spec(config), seed=3)
    directory = tmp_path / name
    save_checkpoint(directory, config, state, architecture="RegNetForImageClassification", **save)
    return directory, state


def test_every_format_is_registered_by_its_cli_name():
    for name in FORMAT_NAMES:
        assert get_format(name).name == name
    with pytest.raises(FormatError, match="unknown checkpoint format 'onnx'"):
        get_format("onnx")


def test_an_hf_directory_reads_lazily_and_converts_to_sharded_bfloat16(tmp_path: Path):
    source, state = _hf_dir(tmp_path)
    checkpoint = read_checkpoint(source)
    assert checkpoint.format == "hf" and checkpoint.config_origin == "checkpoint" and checkpoint.with_head
    files = write_checkpoint(checkpoint, tmp_path / "out", dtype="bfloat16", max_shard_size="8KB", progress=False)
    names = sorted(p.name for p in files)
    assert "model.safetensors.index.json" in names and sum(n.endswith(".safetensors") for n in names) > 2
    back = read_checkpoint(tmp_path / "out").canonical_state()
    assert set(back) == set(state)
    for name, value in state.items():
        got = back[name].load()
        if value.dtype == np.float32:
            assert back[name].dtype == "bfloat16"
            np.testing.assert_allclose(got, value, rtol=2**-8, atol=0)
        else:
            assert np.array_equal(got, value)
    with pytest.raises(OutputExistsError):
        write_checkpoint(checkpoint, tmp_path / "out", progress=False)


def test_a_bare_safetensors_file_infers_its_config(tmp_path: Path):
    config = tiny_config(num_labels=7)
    state = random_state(build_model_spec(config), seed=1)
    write_safetensors(tmp_path / "w.safetensors", state)
    checkpoint = read_checkpoint(tmp_path / "w.safetensors")
    assert checkpoint.config_origin == "inferred"
    assert build_model_spec(checkpoint.config) == build_model_spec(config)
    assert checkpoint.config.num_labels == 7


def test_an_unknown_file_is_refused_listing_what_was_seen(tmp_path: Path):
    write_safetensors(tmp_path / "w.safetensors", {"encoder.layer.0.attention.weight": np.ones((2, 2), np.float32)})
    with pytest.raises(FormatError, match=r"cannot tell the format .* encoder\.layer\.0\.attention\.weight"):
        detect_format(tmp_path / "w.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FormatError, match="a file named notes.txt"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(FormatError, match="no such file"):
        detect_format(tmp_path / "absent")


def test_extra_tensors_in_a_known_format_are_listed(tmp_path: Path):
    source, _ = _hf_dir(tmp_path)
    tensors = {name: t.load() for name, t in open_safetensors(source / "model.safetensors").items()}
    tensors["regnet.encoder.stages.9.extra"] = np.ones(2, np.float32)
    write_safetensors(source / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"no hf RegNet tensor.*1 unexpected: regnet\.encoder\.stages\.9\.extra"):
        read_checkpoint(source)


def test_weights_that_disagree_with_the_config_are_refused_at_read(tmp_path: Path):
    source, _ = _hf_dir(tmp_path)
    config = json.loads((source / "config.json").read_text())
    config["hidden_sizes"] = [8, 16, 32]
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        read_checkpoint(source)


def test_pytorch_pickles_with_code_are_refused_and_nothing_runs(tmp_path: Path):
    pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(path, "hf")
    assert not marker.exists()


def test_pytorch_model_bin_directories_read_like_safetensors_ones(tmp_path: Path):
    torch = pytest.importorskip("torch")
    source, state = _hf_dir(tmp_path)
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "config.json").write_text((source / "config.json").read_text())
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, directory / "pytorch_model.bin")
    checkpoint = read_checkpoint(directory)
    got = checkpoint.canonical_state()
    assert all(np.array_equal(got[k].load(), v) for k, v in state.items())
