"""Flax and PyTorch agree on one set of canonical weights: outputs, gradients and BN updates."""

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("torch")

from regnet_core import build_model_spec, get_config, random_state  # noqa: E402
from regnet_core.backends import get_backend  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

flax_backend = get_backend("flax")
pt_backend = get_backend("pt")


def test_the_backend_offers_the_whole_interface():
    assert (flax_backend.FRAMEWORK, flax_backend.LAYOUT, flax_backend.NATIVE_FORMAT) == ("flax", "NHWC", "flax")
    assert get_backend("jax") is flax_backend
    for name in (
        "build",
        "from_canonical",
        "to_canonical",
        "run",
        "gradients",
        "train_forward",
        "save_native",
        "load_native",
    ):
        assert callable(getattr(flax_backend, name)), name


def _pair(config, with_head=True, seed=0):
    state = random_state(build_model_spec(config), seed=seed, with_head=with_head)
    return flax_backend.from_canonical(config, state, with_head), pt_backend.from_canonical(config, state, with_head)


def _images(batch, size, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _assert_outputs_match(flax_out, pt_out):
    assert set(flax_out) == set(pt_out)
    if "logits" in pt_out:
        logits, expected = flax_out["logits"], pt_out["logits"]
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() <= min(1e-4, 1e-5 * np.abs(expected).max())
    for name in ("pooler_output", "last_hidden_state"):
        assert flax_out[name].shape == pt_out[name].shape, name
        assert _relative(flax_out[name], pt_out[name]) <= 1e-5, name
    assert len(flax_out["hidden_states"]) == len(pt_out["hidden_states"])
    for index, (got, want) in enumerate(zip(flax_out["hidden_states"], pt_out["hidden_states"], strict=True)):
        assert got.shape == want.shape, index
        assert _relative(got, want) <= 1e-5, index


@pytest.mark.parametrize("layer_type", ["x", "y"])
@pytest.mark.parametrize("hidden_act", ["relu", "silu", "gelu", "tanh", "sigmoid"])
def test_x_and_y_blocks_match_pytorch(layer_type, hidden_act):
    flax_model, pt_model = _pair(tiny_config(layer_type, hidden_act=hidden_act))
    images = _images(2, 32)
    _assert_outputs_match(flax_backend.run(flax_model, images), pt_backend.run(pt_model, images))


def test_trunk_matches_pytorch_on_odd_sizes():
    # 33 x 47 exercises the symmetric padding at stride 2 on odd sizes (where "SAME" would differ).
    config = tiny_config("y", num_labels=0)
    flax_model, pt_model = _pair(config, with_head=False)
    images = np.random.default_rng(2).normal(size=(3, 3, 33, 47)).astype(np.float32)
    _assert_outputs_match(flax_backend.run(flax_model, images), pt_backend.run(pt_model, images))


def test_zoo_model_matches_pytorch():
    flax_model, pt_model = _pair(get_config("regnet-y-002"))
    images = _images(2, 64)
    _assert_outputs_match(flax_backend.run(flax_model, images), pt_backend.run(pt_model, images))


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_gradients_match_pytorch(layer_type):
    flax_model, pt_model = _pair(tiny_config(layer_type))
    images, labels = _images(3, 32), np.array([0, 4, 2])
    got = flax_backend.gradients(flax_model, images, labels)
    expected = pt_backend.gradients(pt_model, images, labels)
    assert abs(got["loss"] - expected["loss"]) <= 1e-5 * abs(expected["loss"])
    assert got["input"].shape == expected["input"].shape
    assert _relative(got["input"], expected["input"]) <= 1e-4
    assert list(got["params"]) == list(expected["params"])
    for name, gradient in expected["params"].items():
        assert got["params"][name].shape == gradient.shape, name
        assert _relative(got["params"][name], gradient) <= 1e-4, name


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_training_forward_updates_batch_stats_like_pytorch(layer_type):
    config = tiny_config(layer_type)
    flax_model, pt_model = _pair(config)
    before = flax_backend.to_canonical(flax_model)
    images = _images(4, 32)
    got = flax_backend.train_forward(flax_model, images)
    expected = pt_backend.train_forward(pt_model, images)
    statistics = [name for name in expected if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * sum(name.endswith("running_mean") for name in before)
    for name in statistics:
        assert not np.array_equal(got[name], before[name]), name  # every BN moved
        assert _relative(got[name], expected[name]) <= 1e-5, name
    for name in expected:  # trainable weights are untouched by a forward
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert np.array_equal(got[name], expected[name]), name
