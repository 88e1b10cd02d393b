"""Loading in every backend: float16 and bfloat16 checkpoints, one copy of the weights in memory, `regnet info` memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, random_state
from regnet_core.checkpoint import save_checkpoint, write_checkpoint_directory
from regnet_core.cli import main
from regnet_core.progress import ProgressBar
from regnet_core.tensors import LazyTensor, bfloat16_bits_to_float32, float32_to_bfloat16_bits
from regnet_core.weights import BN_COUNT, BN_VAR, BN_WEIGHT, parameter_table

from .helpers import requires, tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _logits(framework: str, directory: Path, pixel_values: np.ndarray) -> np.ndarray:
    if framework == "pt":
        import torch

        from regnet_pt import RegNetForImageClassification

        model = RegNetForImageClassification.from_pretrained(directory)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        with torch.no_grad():
            return model(torch.from_numpy(pixel_values)).logits.numpy()
    if framework == "tf":
        import regnet_tf

        model = regnet_tf.RegNetForImageClassification.from_pretrained(directory)
        return np.asarray(model(np.transpose(pixel_values, (0, 2, 3, 1)), training=False).logits)
    import regnet_flax

    module, variables = regnet_flax.from_pretrained(directory)
    return np.asarray(module.apply(variables, np.transpose(pixel_values, (0, 2, 3, 1))).logits)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_half_precision_checkpoints_load_in_every_backend(tmp_path: Path, framework: str, dtype: str):
    pytest.importorskip({"pt": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    config = tiny_config()
    state = random_state(build_model_spec(config), seed=2)
    save_checkpoint(tmp_path / "ckpt", config, state, architecture="RegNetForImageClassification", dtype=dtype)
    # The reference: the float32 weights rounded as the file holds them, in PyTorch.
    if dtype == "float16":
        rounded = {k: v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v for k, v in state.items()}
    else:
        rounded = {
            k: bfloat16_bits_to_float32(float32_to_bfloat16_bits(v)) if v.dtype == np.float32 else v
            for k, v in state.items()
        }
    save_checkpoint(tmp_path / "rounded", config, rounded, architecture="RegNetForImageClassification")
    pixel_values = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    pytest.importorskip("torch")
    expected = _logits("pt", tmp_path / "rounded", pixel_values)
    got = _logits(framework, tmp_path / "ckpt", pixel_values)
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))


_CHILD = r"""
import json, sys
import numpy as np
framework, path = sys.argv[1:3]
def peak():  # VmHWM: ru_maxrss would carry the parent's (pytest's) peak over fork and exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
if framework == "pt":
    import torch
    from regnet_pt import RegNetForImageClassification as Model
    load = Model.from_pretrained
elif framework == "tf":
    import regnet_tf, tensorflow
    load = regnet_tf.RegNetForImageClassification.from_pretrained
else:
    import jax, regnet_flax
    jax.numpy.zeros(1).block_until_ready()
    load = regnet_flax.from_pretrained
from regnet_core.convert import read_checkpoint
read_checkpoint(path)  # warm the readers' imports
before = peak()
model = load(path)
print(json.dumps({"before": before, "after": peak()}))
"""


def _synthetic_sharded(directory: Path, model: str) -> int:
    """A sharded checkpoint of a zoo model written lazily; returns the bytes of its weights."""
    config = get_config(model)
    tensors = {}
    for index, tensor in enumerate(parameter_table(build_model_spec(config), True)):

        def make(tensor=tensor, index=index) -> np.ndarray:
            if tensor.kind == BN_COUNT:
                return np.zeros((), np.int64)
            rng = np.random.default_rng(index)
            if tensor.kind in (BN_WEIGHT, BN_VAR):
                return rng.uniform(0.5, 1.5, tensor.shape).astype(np.float32)
            return (rng.standard_normal(tensor.shape, dtype=np.float32) * 0.02).astype(np.float32)

        tensors[tensor.name] = LazyTensor(tensor.shape, str(tensor.dtype), make, tensor.name)
    write_checkpoint_directory(
        directory, config.copy(architectures=["RegNetForImageClassification"]), tensors, max_shard_size="40MB"
    )
    return sum(t.nbytes for t in tensors.values())


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_loading_a_sharded_checkpoint_holds_one_copy_of_the_weights(tmp_path_factory, framework: str):
    pytest.importorskip({"pt": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    directory = tmp_path_factory.getbasetemp() / "x160-sharded"
    weights = _synthetic_sharded(directory, "regnet-x-160") if not directory.exists() else 218_000_000
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, framework, str(directory)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    grew = memory["after"] - memory["before"]
    # One copy of the weights plus transient per-tensor buffers and allocator slack (measured here:
    # PyTorch 1.03x, Flax 1.46x, TensorFlow 1.63x of the weights); two full copies would be 2x or more.
    assert grew < 1.8 * weights, (
        f"loading grew the peak RSS by {grew / 1e6:.0f} MB for {weights / 1e6:.0f} MB of weights"
    )


def test_regnet_info_reports_weight_memory_without_allocating(capsys):
    assert main(["info", "regnet-y-10b-seer", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Worked out from the table: every tensor's values at 4 (2) bytes, plus one int64 counter per BatchNorm.
    spec = build_model_spec(get_config("regnet-y-10b-seer"))
    table = parameter_table(spec, with_head=False)
    values = sum(int(np.prod(t.shape)) for t in table if t.kind != BN_COUNT)
    counters = sum(1 for t in table if t.kind == BN_COUNT)
    assert info["memory"]["float32"] == 4 * values + 8 * counters
    assert info["memory"]["bfloat16"] == 2 * values + 8 * counters
    assert 37e9 < info["memory"]["float32"] < 38e9
    assert main(["info", "regnet-y-10b-seer"]) == 0
    text = capsys.readouterr().out
    assert "37.30 GB at float32" in text and "18.65 GB at bfloat16" in text


def test_the_progress_bar_is_silent_off_a_terminal_and_draws_on_one():
    quiet = io.StringIO()
    bar = ProgressBar(100, 2, stream=quiet)
    bar("a", 50)
    bar("b", 50)
    bar.close()
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    loud = Terminal()
    bar = ProgressBar(100, 2, stream=loud)
    bar("a", 50)
    bar("b", 50)
    bar.close()
    assert "100.0%" in loud.getvalue() and "2/2 tensors" in loud.getvalue() and loud.getvalue().endswith("\n")
    forced_off = Terminal()
    bar = ProgressBar(100, 1, stream=forced_off, enabled=False)
    bar("a", 100)
    bar.close()
    assert forced_off.getvalue() == ""


@requires("torch")
def test_convert_quiet_prints_no_progress(tmp_path: Path, capfd):
    config = tiny_config()
    save_checkpoint(
        tmp_path / "a", config, random_state(build_model_spec(config)), architecture="RegNetForImageClassification"
    )
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--quiet"]) == 0
    captured = capfd.readouterr()
    assert "tensors" not in captured.err
