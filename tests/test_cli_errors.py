"""The command line's error contract: user errors exit 2 with one line, internal errors exit 3 with one line
that asks for --debug, --debug shows the traceback, a closed pipe ends quietly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core import cli, resources
from regnet_core.cli import main
from regnet_core.resources import ALLOW_LARGE_VARIABLE


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    paths = {
        "directory": tmp_path / "dir",
        "x": tmp_path / "x.npy",
        "x16": tmp_path / "x16.npy",
        "int": tmp_path / "int.npy",
        "empty": tmp_path / "empty.npy",
        "zero": tmp_path / "zero.npy",
        "nhwc": tmp_path / "nhwc.npy",
        "pickle": tmp_path / "pickle.npy",
        "list_json": tmp_path / "list.json",
        "vit_json": tmp_path / "vit.json",
        "preprocessor_json": tmp_path / "preprocessor_config.json",
        "bad_json": tmp_path / "bad.json",
        "nan_json": tmp_path / "nan.json",
        "typo_json": tmp_path / "typo.json",
    }
    paths["directory"].mkdir()
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(paths["x"], x)
    np.save(paths["x16"], x.astype(np.float16))
    np.save(paths["int"], (x * 100).astype(np.int64))
    np.save(paths["empty"], x[:0])
    np.save(paths["zero"], x[:, :, :0])
    np.save(paths["nhwc"], x.transpose(0, 2, 3, 1))
    np.save(paths["pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    paths["list_json"].write_text("[1, 2]")
    paths["vit_json"].write_text('{"model_type": "vit"}')
    paths["preprocessor_json"].write_text('{"do_resize": true, "size": {"shortest_edge": 224}}')
    paths["bad_json"].write_text('{"model_type": "regnet", "depths": [1, 2')
    paths["nan_json"].write_text('{"model_type": "regnet", "bottleneck_ratio": Infinity}')
    paths["typo_json"].write_text('{"model_type": "regnet", "hidden_sizes": [8, 16], "depths": [1, 1, 1]}')
    return {key: str(value) for key, value in paths.items()}


USER_ERRORS = [
    (["info", "regnet-x-002", "--image-size", "-3"], "expected a positive integer"),
    (["init", "regnet-x-002", "--out", "{tmp}/o", "--seed", "-1"], "expected a seed from 0 to 4294967295, got '-1'"),
    (["init", "regnet-x-002", "--out", "{tmp}/o", "--seed", "1" + "0" * 30], "expected a seed from 0 to 4294967295"),
    (["logits", "regnet-x-002", "--input", "{x}", "--output", "{tmp}/y.npy", "--seed", "x"], "expected a seed"),
    (["parity", "regnet-x-002", "--seed", "-5"], "expected a seed"),
    (["predict", "regnet-x-002", "{x}", "--seed", "-1"], "expected a seed"),
    (["export", "regnet-x-002", "--to", "onnx", "{tmp}/m.onnx", "--seed", "-1"], "expected a seed"),
    (["bench", "regnet-x-002", "--seed", "-1"], "expected a seed"),
    (["info", "{list_json}"], "a RegNet config must be a JSON object, got list"),
    (["info", "{vit_json}"], "expected a config with model_type 'regnet', got 'vit'"),
    (["info", "{preprocessor_json}"], "not a RegNet config"),
    (["info", "{bad_json}"], "is not valid JSON"),
    (["info", "{nan_json}"], "bottleneck_ratio must be a number > 0 (finite), got inf"),
    (["info", "{typo_json}"], "one entry per stage"),
    (["info", "{directory}"], "expected config.json in"),
    (["logits", "regnet-x-002", "--input", "{x}", "--output", "{directory}"], "is a directory; expected the path"),
    (["logits", "regnet-x-002", "--input", "{directory}", "--output", "{tmp}/y.npy"], "cannot read"),
    (["logits", "regnet-x-002", "--input", "{int}", "--output", "{tmp}/y.npy"], "floating point, got dtype int64"),
    (["logits", "regnet-x-002", "--input", "{empty}", "--output", "{tmp}/y.npy"], "empty batch"),
    (["logits", "regnet-x-002", "--input", "{zero}", "--output", "{tmp}/y.npy"], "height or width 0"),
    (["logits", "regnet-x-002", "--input", "{nhwc}", "--output", "{tmp}/y.npy"], "looks like an NHWC batch"),
    (["logits", "regnet-x-002", "--input", "{pickle}", "--output", "{tmp}/y.npy"], "cannot read"),
    (["init", "regnet-x-002", "--framework", "mxnet", "--out", "{tmp}/o"], "unknown framework 'mxnet'"),
    (["convert", "regnet-x-002", "{tmp}/o", "--max-shard-size", "9" * 400 + "GB"], "expected a size such as 5GB"),
    (["convert", "regnet-x-002", "{tmp}/o", "--max-shard-size", "-1"], "expected a size such as 5GB"),
]


@pytest.mark.parametrize(
    "argv, message", USER_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(USER_ERRORS)]
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, files, argv, message):
    argv = [arg.format(tmp=tmp_path, **files) for arg in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    assert _one_line(err).startswith("regnet: error: ")
    assert message in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "y.npy").exists()  # nothing half-written


def test_accepted_float_dtypes_run(capsys, tmp_path, files):
    code, out, err = _run(
        capsys, "logits", "regnet-x-002", "--input", files["x16"], "--output", str(tmp_path / "y.npy")
    )
    assert code == 0, err
    assert np.load(tmp_path / "y.npy").shape == (1, 1000)


def _raiser(error: BaseException):
    def run(args):
        raise error

    return run


@pytest.mark.parametrize(
    "error, code, expected",
    [
        (RuntimeError("boom in a framework"), 3, "regnet: internal error: RuntimeError: boom in a framework"),
        (AttributeError("'NoneType' object has no attribute 'x'"), 3, "internal error: AttributeError"),
        (OverflowError("int too large"), 3, "internal error: OverflowError: int too large"),
        (KeyError("stage"), 3, "internal error: KeyError: 'stage'"),
        (MemoryError("Unable to allocate 562 TiB"), 2, "regnet: error: out of memory: Unable to allocate 562 TiB"),
        (IsADirectoryError(21, "Is a directory", "out"), 2, "regnet: error: [Errno 21] Is a directory: 'out'"),
        (PermissionError(13, "Permission denied", "/root/x"), 2, "regnet: error: [Errno 13] Permission denied"),
        (ValueError("a\n  multi-line\nmessage"), 2, "regnet: error: a multi-line message"),
        (ValueError("\x1b[1mkeras colours\x1b[0m"), 2, "regnet: error: keras colours"),
    ],
)
def test_errors_are_sorted_into_user_and_internal(capsys, monkeypatch, error, code, expected):
    monkeypatch.setattr(cli, "_cmd_list", _raiser(error))
    got, _, err = _run(capsys, "list")
    assert got == code
    assert expected in _one_line(err)
    if code == 3:
        assert "rerun with --debug for the traceback" in err


@pytest.mark.parametrize("argv", [["--debug", "list"], ["list", "--debug"], ["list", "--json", "--debug"]])
def test_debug_shows_the_traceback_then_the_line(capsys, monkeypatch, argv):
    monkeypatch.setattr(cli, "_cmd_list", _raiser(RuntimeError("boom")))
    code, _, err = _run(capsys, *argv)
    assert code == 3
    assert err.startswith("Traceback (most recent call last):") and "raise error" in err
    assert err.rstrip("\n").splitlines()[-1].startswith("regnet: internal error: RuntimeError: boom")


def test_debug_variable_and_user_errors_with_debug(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_cmd_list", _raiser(ValueError("bad")))
    monkeypatch.setenv("REGNET_DEBUG", "1")
    code, _, err = _run(capsys, "list")
    assert code == 2 and "Traceback" in err and err.rstrip().endswith("regnet: error: bad")


def test_debug_alone_is_taken_off_the_command_line(capsys):
    code, _, err = _run(capsys, "--debug")
    assert code == 2 and err.rstrip("\n").splitlines()[-1].startswith(
        "regnet: error: the following arguments are required"
    )


def test_interrupt_exits_130(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_cmd_list", _raiser(KeyboardInterrupt()))
    code, _, err = _run(capsys, "list")
    assert code == 130 and _one_line(err) == "regnet: interrupted\n"


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--debug" in capsys.readouterr().out


def test_init_refuses_a_model_that_cannot_fit_unless_allowed(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    monkeypatch.setenv(ALLOW_LARGE_VARIABLE, "0")  # restored after the test (init sets it with --allow-large)
    code, _, err = _run(capsys, "init", "regnet-x-002", "--out", str(tmp_path / "big"))
    assert code == 2 and "regnet-x-002: the weights need about 0.0108 GB at float32" in _one_line(err)
    assert "--allow-large" in err and not (tmp_path / "big").exists()
    code, out, err = _run(capsys, "init", "regnet-x-002", "--out", str(tmp_path / "big"), "--allow-large")
    assert code == 0, err
    assert json.loads((tmp_path / "big" / "config.json").read_text())["hidden_sizes"] == [24, 56, 152, 368]


# ----------------------------------------------------------------------------- as a process
def _regnet() -> list[str]:
    beside = Path(sys.executable).parent / "regnet"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "regnet_core.cli"]


def test_a_closed_pipe_ends_quietly():
    """`regnet list | head -1`: no BrokenPipeError traceback, exit 0."""
    process = subprocess.Popen([*_regnet(), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    first = process.stdout.read(20)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert first.startswith(b"name")
    assert process.returncode == 0 and err == b""


def test_an_internal_error_in_a_process(tmp_path):
    script = (
        "import sys, regnet_core.cli as c\n"
        "def boom(args):\n    raise RuntimeError('boom')\n"
        "c._cmd_list = boom\nsys.exit(c.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "REGNET_DEBUG": ""}
    plain = subprocess.run([sys.executable, "-c", script, "list"], capture_output=True, text=True, env=env)
    assert plain.returncode == 3 and plain.stdout == ""
    assert plain.stderr == (
        "regnet: internal error: RuntimeError: boom (a bug; rerun with --debug for the traceback and report it)\n"
    )
    debug = subprocess.run([sys.executable, "-c", script, "list", "--debug"], capture_output=True, text=True, env=env)
    assert debug.returncode == 3 and "Traceback (most recent call last)" in debug.stderr and "boom" in debug.stderr


def test_a_user_error_in_a_process(tmp_path):
    result = subprocess.run(
        [*_regnet(), "init", "regnet-x-002", "--out", str(tmp_path), "--seed", "-1"], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_image_over_pillows_size_limit_is_bad_input(capsys, monkeypatch, tmp_path):
    """A decompression bomb (here: any image over a limit lowered to 100 pixels) is refused by name, exit 2."""
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    code, _, err = _run(capsys, "predict", "regnet-x-002", str(tmp_path / "big.png"))
    assert code == 2
    assert "expected an image within Pillow's size limit, got Image size (1024 pixels) exceeds limit" in _one_line(err)
