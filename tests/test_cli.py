"""The `regnet` command: figures, files and exit codes (0 ok, 2 bad input in one line)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core.cli import main
from tests.helpers import REFERENCE_ZOO, requires


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_prints_the_exact_figures(capsys):
    code, out, _ = _run(capsys, "info", "regnet-y-040", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "regnet-y-040"
    assert {k: info[k] for k in ("flops", "params", "acts")} == REFERENCE_ZOO["regnet-y-040"]["pycls_at_224"]
    assert [s["width"] for s in info["stages"]] == [128, 192, 512, 1088]
    assert [s["depth"] for s in info["stages"]] == [2, 6, 12, 2]
    assert [s["groups"] for s in info["stages"]] == [2, 3, 8, 17]
    assert [s["group_width"] for s in info["stages"]] == [64, 64, 64, 64]
    assert [s["stride"] for s in info["stages"]] == [2, 2, 2, 2]
    assert [s["se_width"] for s in info["stages"]] == [8, 32, 48, 128]
    assert info["stages"][1]["block_se_widths"] == [32] + [48] * 5


def test_info_text_and_other_sizes(capsys):
    code, out, _ = _run(capsys, "info", "regnet-x-002", "--image-size", "112")
    assert code == 0 and "regnet-x-002" in out and "at 112x112" in out
    code, out, _ = _run(capsys, "info", "regnet-y-10b-seer", "--json")
    info = json.loads(out)
    assert info["num_labels"] == 0 and [s["width"] for s in info["stages"]] == [2020, 4040, 11110, 28280]


def test_list_shows_the_zoo(capsys):
    code, out, _ = _run(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 34
    by_name = {row["name"]: row for row in rows}
    assert by_name["regnet-x-016"]["flops"] == REFERENCE_ZOO["regnet-x-016"]["pycls_at_224"]["flops"]
    code, out, _ = _run(capsys, "list")
    assert code == 0 and "regnet-y-10b-seer" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "regnet-y-04"], "unknown RegNet 'regnet-y-04'; did you mean regnet-y-040"),
        (["info", "regnet-y-040", "--image-size", "0"], "expected a positive integer"),
        (["frobnicate"], "invalid choice"),
        (["init", "regnet-x-002", "--framework", "mxnet", "--out", "x"], "unknown framework 'mxnet'"),
        (["logits", "regnet-x-002", "--input", "missing.npy", "--output", "y.npy"], "no input file at missing.npy"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("regnet: error: ")
    assert message in err


@requires("torch")
def test_init_then_logits_round_trip(tmp_path, capsys):
    out_dir = tmp_path / "ckpt"
    code, out, _ = _run(capsys, "init", "regnet-x-002", "--framework", "pt", "--out", str(out_dir), "--seed", "3")
    assert code == 0 and (out_dir / "model.safetensors").exists()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = _run(
        capsys,
        "logits",
        str(out_dir),
        "--framework",
        "pt",
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(tmp_path / "y.npy"),
    )
    assert code == 0
    logits = np.load(tmp_path / "y.npy")
    import torch

    from regnet_pt import RegNetForImageClassification

    model = RegNetForImageClassification.from_pretrained(out_dir)
    with torch.no_grad():
        np.testing.assert_array_equal(logits, model(torch.from_numpy(x)).logits.numpy())
    # same seed, same weights
    _run(capsys, "init", "regnet-x-002", "--out", str(tmp_path / "again"), "--seed", "3")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out_dir / "model.safetensors").read_bytes()


@requires("torch")
def test_logits_of_a_zoo_name_uses_seeded_random_weights(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        assert (
            _run(
                capsys,
                "logits",
                "regnet-y-002",
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / f"{name}.npy"),
                "--seed",
                str(seed),
            )[0]
            == 0
        )
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in "abc")
    assert a.shape == (1, 1000) and np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 32, 32, 3), np.float32), "looks like an NHWC batch"),
        (np.zeros((3, 32, 32), np.float32), "4-D NCHW batch"),
        (np.zeros((1, 3, 32, 32), np.uint8), "floating point, got dtype uint8"),
    ],
)
def test_logits_rejects_bad_arrays_and_writes_nothing(tmp_path, capsys, array, message):
    np.save(tmp_path / "x.npy", array)
    code, _, err = _run(
        capsys, "logits", "regnet-x-002", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")
    )
    assert code == 2 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_logits_of_a_bad_checkpoint_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    code, _, err = _run(
        capsys,
        "logits",
        str(tmp_path / "empty"),
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(tmp_path / "y.npy"),
    )
    assert code == 2 and "cannot tell the format" in err and "a directory holding nothing" in err


def test_console_script_exit_codes():
    beside = Path(sys.executable).parent / "regnet"
    exe = str(beside) if beside.exists() else shutil.which("regnet")
    if exe is None:
        pytest.skip("the regnet console script is not installed")
    ok = subprocess.run([exe, "info", "regnet-x-002"], capture_output=True, text=True)
    assert ok.returncode == 0 and "regnet-x-002" in ok.stdout
    bad = subprocess.run([exe, "info", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    module = subprocess.run([sys.executable, "-m", "regnet_core.cli", "info", "nope"], capture_output=True, text=True)
    assert module.returncode == 2


@requires("torch")
def test_logits_of_a_trunk_writes_pooled_features_and_info_reads_directories(tmp_path, capsys):
    from regnet_pt import RegNetModel
    from tests.helpers import tiny_config

    RegNetModel(tiny_config()).save_pretrained(tmp_path / "trunk")
    np.save(tmp_path / "x.npy", np.ones((2, 3, 32, 32), np.float32))
    code, out, err = _run(
        capsys,
        "logits",
        str(tmp_path / "trunk"),
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(tmp_path / "f.npy"),
    )
    assert code == 0 and "trunk without a classifier" in err
    assert np.load(tmp_path / "f.npy").shape == (2, 24)
    code, out, _ = _run(capsys, "info", str(tmp_path / "trunk"), "--json")
    info = json.loads(out)
    assert code == 0 and info["name"] == "trunk" and info["num_labels"] == 0
    assert [s["width"] for s in info["stages"]] == [8, 16, 24]
