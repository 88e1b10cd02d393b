"""Past one device, on each framework's own engine: the data-parallel step equals the one-device step.

Each check runs a worker from tests/distributed in its own process (device counts must be set
before the framework initialises) and reads back one JSON line of measured differences.
Tolerances are stated against the size of the update the one-device step made: float32
all-reduces sum in another order than one device does, nothing else may differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import requires

ROOT = Path(__file__).resolve().parent.parent

# Data-parallel weights may differ from one-device weights by float32 rounding only: measured
# about 1e-7 absolute (a few ulps) after two SGD steps; without synchronised BatchNorm the
# same runs differ by percents of the update, four to six orders of magnitude more.
SYNCED_DIFFERENCE_OVER_UPDATE = 1e-5


def run_worker(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``python -m tests.distributed.MODULE`` from the repository root; its RESULT line as a dict."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-m", f"tests.distributed.{module}", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise AssertionError(f"worker {module} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def assert_equal_to_one_device(result: dict, what: str) -> None:
    assert result["largest_update"] > 1e-3, f"{what}: the step changed nothing, the comparison would be empty"
    assert result["difference_over_update"] <= SYNCED_DIFFERENCE_OVER_UPDATE, f"{what}: {result}"


def assert_differs_from_one_device(result: dict, what: str) -> None:
    # Each replica normalising with its own half batch is a different step, visibly.
    assert result["difference_over_update"] > 100 * SYNCED_DIFFERENCE_OVER_UPDATE, f"{what}: {result}"


# ----------------------------------------------------------------------------- TensorFlow


def _check_mirrored(result: dict) -> None:
    assert result["replicas"] == 2
    assert_equal_to_one_device(result["synced"], "MirroredStrategy, synchronised BatchNorm")
    assert result["synced"]["loss"] == pytest.approx(result["single_loss"], rel=1e-6)
    assert_differs_from_one_device(result["unsynced"], "MirroredStrategy, per-replica BatchNorm")


@requires("tensorflow")
def test_keras_fit_under_mirrored_strategy_equals_fit_on_one_device():
    _check_mirrored(run_worker("tf_mirrored"))


@pytest.mark.slow
@requires("tensorflow")
def test_keras_fit_under_mirrored_strategy_with_a_keras_loss_equals_fit_on_one_device():
    result = run_worker("tf_mirrored", "--keras-loss")
    _check_mirrored(result)
    assert_equal_to_one_device(result["synced_keras_loss"], "MirroredStrategy, Keras loss")


# ----------------------------------------------------------------------------- PyTorch


@requires("torch")
def test_ddp_and_fsdp_with_sync_batchnorm_over_two_gloo_processes_equal_one_process():
    result = run_worker("pt_ddp")
    assert result["processes"] == 2
    assert_equal_to_one_device(result["synced"], "DDP with sync_batchnorm()")
    assert result["synced"]["between_processes"] == 0.0  # DDP keeps replicas (and synced statistics) identical
    assert result["synced"]["loss"] == pytest.approx(result["single_loss"], rel=1e-6)
    assert_differs_from_one_device(result["unsynced"], "DDP with per-process BatchNorm")
    assert_equal_to_one_device(result["fsdp"], "FSDP (fully_shard_blocks) with sync_batchnorm()")
    assert result["fsdp"]["between_processes"] == 0.0


@requires("torch")
def test_sync_batchnorm_conversion_keeps_tensors_layout_names_and_single_process_behaviour():
    import numpy as np
    import torch

    from regnet_core import build_model_spec, random_state
    from regnet_pt import backend as pt_backend
    from regnet_pt.distributed import SyncBatchNorm2d
    from tests.distributed.common import batches, small_config

    config = small_config()
    state = random_state(build_model_spec(config), seed=0)
    plain, synced = pt_backend.from_canonical(config, state), pt_backend.from_canonical(config, state)
    tensors_before = {name: tensor for name, tensor in synced.state_dict(keep_vars=True).items()}
    assert synced.sync_batchnorm() is synced
    norms = [module for module in synced.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(module, SyncBatchNorm2d) for module in norms)
    after = synced.state_dict(keep_vars=True)
    assert list(after) == list(tensors_before)
    assert all(after[name] is tensors_before[name] for name in after)  # the very same tensors: optimizers stay valid
    assert synced.regnet.embedder.embedder.convolution.weight.is_contiguous(memory_format=torch.channels_last)

    images = torch.from_numpy(np.ascontiguousarray(batches()[0][:4].transpose(0, 3, 1, 2)))
    with torch.no_grad():  # eval mode, with and without folding: plain BatchNorm
        torch.testing.assert_close(synced(images).logits, plain(images).logits, rtol=0, atol=0)
        synced.fold_batchnorm()
        plain.fold_batchnorm()
        torch.testing.assert_close(synced(images).logits, plain(images).logits, rtol=0, atol=0)
    # training without a process group: plain BatchNorm, statistics updated the same way
    synced.train()
    plain.train()
    torch.testing.assert_close(synced(images).logits, plain(images).logits, rtol=0, atol=0)
    for name, value in pt_backend.to_canonical(plain).items():
        np.testing.assert_array_equal(pt_backend.to_canonical(synced)[name], value, err_msg=name)

    synced.sync_batchnorm(False)
    assert not any(isinstance(module, SyncBatchNorm2d) for module in synced.modules())
    assert all(synced.state_dict(keep_vars=True)[name] is tensors_before[name] for name in tensors_before)


# ----------------------------------------------------------------------------- Flax


def _check_flax(result: dict) -> None:
    assert result["devices"] == 8
    for form in ("sharded_jit", "shard_map_axis_name"):
        assert_equal_to_one_device(result[form], f"Flax, {form}")
        assert result[form]["loss"] == pytest.approx(result["single_loss"], rel=1e-6)
    assert result["sharded_jit"]["batch_sharded"]


@requires("jax")
def test_flax_data_parallel_over_8_host_devices_equals_one_device():
    _check_flax(run_worker("flax_sharded"))


@pytest.mark.slow
@requires("jax")
def test_flax_shard_map_without_axis_name_differs_from_one_device():
    result = run_worker("flax_sharded", "--unsynced")
    _check_flax(result)
    assert_differs_from_one_device(result["shard_map_unsynced"], "Flax shard_map, per-device BatchNorm")
