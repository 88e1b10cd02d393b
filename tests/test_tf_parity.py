"""TensorFlow against PyTorch on the same random canonical weights: outputs, gradients, BN updates."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from regnet_core import build_model_spec, get_config, random_state  # noqa: E402
from regnet_core.weights import BN_MEAN, BN_VAR, TRAINABLE_KINDS, parameter_table  # noqa: E402
from regnet_pt import backend as pt_backend  # noqa: E402
from regnet_tf import backend as tf_backend  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# Agreed bounds: forward max abs diff <= 1e-4 and <= 1e-5 of the reference's largest value;
# gradients and BN statistics within 1e-4 / 1e-5 relative (max abs diff / max abs value).
FORWARD_ABS, FORWARD_REL, GRADIENT_REL, STATS_REL = 1e-4, 1e-5, 1e-4, 1e-5


def _pair(config, seed=0, with_head=True):
    state = random_state(build_model_spec(config), seed, with_head)
    return pt_backend.from_canonical(config, state, with_head), tf_backend.from_canonical(config, state, with_head)


def _batch(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _assert_close(name, got, expected):
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    assert diff <= FORWARD_ABS and diff <= FORWARD_REL * scale, (
        f"{name}: max abs diff {diff:.3g}, max |value| {scale:.3g}"
    )


def _assert_outputs_match(config, pixel_values, with_head=True):
    pt_model, tf_model = _pair(config, with_head=with_head)
    expected = pt_backend.run(pt_model, pixel_values)
    got = tf_backend.run(tf_model, pixel_values)
    assert sorted(got) == sorted(expected)
    for name in ("logits", "last_hidden_state", "pooler_output"):
        if name in expected:
            _assert_close(name, got[name], expected[name])
    assert len(got["hidden_states"]) == len(expected["hidden_states"]) == len(config.depths) + 1
    for index, (a, b) in enumerate(zip(got["hidden_states"], expected["hidden_states"], strict=True)):
        _assert_close(f"hidden_states[{index}]", a, b)


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_tiny_blocks_match_pytorch(layer_type):
    _assert_outputs_match(tiny_config(layer_type), _batch((2, 3, 32, 32)))


@pytest.mark.parametrize("size", [(33, 47), (17, 18)], ids=["odd-33x47", "mixed-17x18"])
def test_odd_image_sizes_pad_symmetrically_like_pytorch(size):
    # "SAME" padding would shift every stride-2 layer by one pixel on these sizes.
    _assert_outputs_match(tiny_config("y"), _batch((2, 3, *size)))


@pytest.mark.parametrize("activation", ["silu", "gelu", "tanh", "sigmoid"])
def test_every_activation_matches_pytorch(activation):
    _assert_outputs_match(tiny_config("y", hidden_act=activation), _batch((2, 3, 32, 32)))


def test_trunk_and_featureless_head_match_pytorch():
    _assert_outputs_match(tiny_config("x"), _batch((2, 3, 32, 32)), with_head=False)
    _assert_outputs_match(tiny_config("y", num_labels=0), _batch((2, 3, 32, 32)))


@pytest.mark.parametrize("name", ["regnet-y-002", "regnet-x-002"])
def test_zoo_model_matches_pytorch_at_64(name):
    _assert_outputs_match(get_config(name), _batch((2, 3, 64, 64)))


@pytest.mark.parametrize(
    "config", [tiny_config("x"), tiny_config("y"), get_config("regnet-y-002")], ids=["x", "y", "y-002"]
)
def test_gradients_match_pytorch(config):
    pt_model, tf_model = _pair(config)
    pixel_values = _batch((2, 3, 32, 32))
    labels = np.array([1, config.num_labels - 1])
    expected = pt_backend.gradients(pt_model, pixel_values, labels)
    got = tf_backend.gradients(tf_model, pixel_values, labels)
    assert abs(got["loss"] - expected["loss"]) <= 1e-5 * abs(expected["loss"])
    assert _relative(got["input"], expected["input"]) <= GRADIENT_REL
    trainable = [t.name for t in parameter_table(build_model_spec(config)) if t.kind in TRAINABLE_KINDS]
    assert sorted(got["params"]) == sorted(expected["params"]) == sorted(trainable)
    worst = max((_relative(got["params"][n], expected["params"][n]), n) for n in trainable)
    assert worst[0] <= GRADIENT_REL, worst


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_training_forward_updates_bn_statistics_like_pytorch(layer_type):
    config = tiny_config(layer_type)
    pt_model, tf_model = _pair(config)
    pixel_values = _batch((3, 3, 32, 32))
    before = random_state(build_model_spec(config), 0)
    expected = pt_backend.train_forward(pt_model, pixel_values)
    got = tf_backend.train_forward(tf_model, pixel_values)
    statistics = [t.name for t in parameter_table(build_model_spec(config)) if t.kind in (BN_MEAN, BN_VAR)]
    for name in statistics:
        assert not np.array_equal(got[name], before[name]), f"{name} was not updated"
        assert _relative(got[name], expected[name]) <= STATS_REL, name
    for name, value in before.items():  # weights untouched by a forward pass
        if name not in statistics and "num_batches_tracked" not in name:
            assert np.array_equal(got[name], value), name
