"""`regnet init/logits/convert/parity` across PyTorch, TensorFlow and Flax."""

import json

import numpy as np
import pytest

from regnet_core import parity as parity_module
from regnet_core.checkpoint import load_state
from regnet_core.cli import main
from tests.helpers import requires

pytestmark = [requires("torch"), requires("tensorflow"), requires("flax")]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def flax_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "y002"
    assert main(["init", "regnet-y-002", "--framework", "flax", "--out", str(directory), "--seed", "2"]) == 0
    return directory


def test_logits_agree_across_frameworks_from_one_directory(tmp_path, capsys, flax_checkpoint):
    x = np.random.default_rng(0).normal(size=(2, 3, 48, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    logits = {}
    for framework in ("pt", "tf", "flax"):
        out = tmp_path / f"{framework}.npy"
        code, _, err = _run(
            capsys, "logits", flax_checkpoint, "--framework", framework, "--input", tmp_path / "x.npy", "--output", out
        )
        assert code == 0, err
        logits[framework] = np.load(out)
    assert logits["pt"].shape == (2, 1000)
    scale = np.abs(logits["pt"]).max()
    for framework in ("tf", "flax"):
        difference = np.abs(logits[framework] - logits["pt"]).max()
        assert difference <= 1e-4 and difference <= 1e-5 * scale, framework


def test_init_in_each_framework_writes_a_loadable_checkpoint(tmp_path, capsys):
    for framework in ("tf", "flax"):
        code, out, err = _run(capsys, "init", "regnet-x-002", "--framework", framework, "--out", tmp_path / framework)
        assert code == 0, err
        state = load_state(tmp_path / framework)
        assert state["classifier.1.weight"].shape == (1000, 368)
        assert abs(float(state["classifier.1.weight"].std()) - 0.01) < 0.001  # pycls head init in every framework


def test_convert_round_trip_through_keras_and_flax_is_bit_exact(tmp_path, capsys, flax_checkpoint):
    steps = [
        (flax_checkpoint, tmp_path / "model.weights.h5"),
        (tmp_path / "model.weights.h5", tmp_path / "model.msgpack"),
        (tmp_path / "model.msgpack", tmp_path / "back"),
    ]
    for source, target in steps:
        extra = ["--config", flax_checkpoint] if str(source).endswith(".msgpack") else []
        code, out, err = _run(capsys, "convert", source, target, *extra)
        assert code == 0, err
    original, back = load_state(flax_checkpoint), load_state(tmp_path / "back")
    assert original.keys() == back.keys()
    for key in original:
        assert np.array_equal(original[key], back[key]), key
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [
        "RegNetForImageClassification"
    ]


def test_convert_forced_formats_and_trunks(tmp_path, capsys):
    assert _run(capsys, "init", "regnet-y-320-seer", "--out", tmp_path / "trunk")[0] == 0
    code, _, err = _run(capsys, "convert", tmp_path / "trunk", tmp_path / "trunk.msgpack", "--to", "flax")
    assert code == 0, err
    code, out, err = _run(
        capsys,
        "convert",
        tmp_path / "trunk.msgpack",
        tmp_path / "trunk2",
        "--from",
        "flax",
        "--config",
        "regnet-y-320-seer",
    )
    assert code == 0, err
    assert not any(k.startswith("classifier") for k in load_state(tmp_path / "trunk2"))
    assert json.loads((tmp_path / "trunk2" / "config.json").read_text())["architectures"] == ["RegNetModel"]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, t: ["convert", d, t / "m.msgpack", "--config", "regnet-y-004"], "does not match the model"),
        (lambda d, t: ["convert", t / "none.msgpack", t / "out"], "no such file or directory"),
        (lambda d, t: ["convert", d, d, "--overwrite"], "is the source itself"),
        (lambda d, t: ["convert", d, d.parent], "already exists; pass --overwrite"),
        (lambda d, t: ["convert", d, t / "model.h5bad", "--to", "keras"], "keras output is a file named *.weights.h5"),
        (lambda d, t: ["convert", d, t / "x", "--to", "onnx"], "unknown checkpoint format 'onnx'"),
        (lambda d, t: ["convert", d, t / "x.safetensors"], "--to timm"),
    ],
)
def test_convert_errors_exit_2_and_write_nothing(tmp_path, capsys, flax_checkpoint, make_args, message):
    before = sorted(p.name for p in flax_checkpoint.parent.iterdir())
    code, _, err = _run(capsys, *make_args(flax_checkpoint, tmp_path))
    assert code == 2 and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in flax_checkpoint.parent.iterdir()) == before


def test_convert_infers_a_msgpack_config_and_checks_a_given_one(tmp_path, capsys, flax_checkpoint):
    assert _run(capsys, "convert", flax_checkpoint, tmp_path / "m.msgpack")[0] == 0
    code, out, err = _run(capsys, "convert", tmp_path / "m.msgpack", tmp_path / "out")
    assert code == 0, err
    assert "inferred: RegNetY" in out and "this is regnet-y-002" in out
    code, _, err = _run(capsys, "convert", tmp_path / "m.msgpack", tmp_path / "out2", "--config", "regnet-y-004")
    assert code == 2 and "does not match the model" in err
    assert not (tmp_path / "out2").exists()


def test_parity_command_passes_and_prints_json(capsys):
    code, out, err = _run(capsys, "parity", "regnet-x-002", "--image-size", "32", "--batch", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and report["frameworks"] == ["pt", "tf", "flax"]
    assert [p["frameworks"] for p in report["pairs"]] == [["pt", "tf"], ["pt", "flax"], ["tf", "flax"]]
    names = [o["name"] for o in report["pairs"][0]["outputs"]]
    assert names[-3:] == ["last_hidden_state", "pooler_output", "logits"] and len(names) == 8
    assert report["input_shape"] == [1, 3, 32, 32]


def test_parity_command_exits_1_and_names_the_first_divergence(capsys, monkeypatch, flax_checkpoint):
    monkeypatch.setattr(parity_module, "RTOL", 0.0)  # nothing but bit-identical outputs would pass
    code, out, _ = _run(capsys, "parity", flax_checkpoint, "--frameworks", "pt,tf", "--image-size", "32")
    assert code == 1
    assert "pt vs tf: DIVERGE, first at hidden_states[" in out and out.strip().endswith("FAIL")
    assert "ABOVE TOLERANCE" in out


def test_parity_command_input_errors(capsys):
    assert _run(capsys, "parity", "regnet-x-002", "--frameworks", "pt,mxnet")[0] == 2
    code, _, err = _run(capsys, "parity", "regnet-x-002", "--frameworks", "pt")
    assert code == 2 and "at least two different frameworks" in err
