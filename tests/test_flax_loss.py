"""Flax losses follow problem_type exactly as transformers (and regnet_pt) choose and compute them."""

import numpy as np
import pytest

pytest.importorskip("flax")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import regnet_flax  # noqa: E402
from regnet_core import build_model_spec, random_state  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

LOGITS = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32) * 3


def _loss(labels, num_labels=5, problem_type=None, logits=LOGITS):
    config = tiny_config(num_labels=num_labels, problem_type=problem_type)
    return float(regnet_flax.loss(jnp.asarray(logits[:, :num_labels]), labels, config))


def _torch(logits, num_labels=5):
    return torch.from_numpy(logits[:, :num_labels])


def test_integer_labels_give_cross_entropy():
    labels = np.array([0, 3, 4])
    expected = F.cross_entropy(_torch(LOGITS), torch.from_numpy(labels))
    assert _loss(labels) == pytest.approx(float(expected), rel=1e-6)
    assert _loss(labels.astype(np.int32)) == pytest.approx(float(expected), rel=1e-6)


def test_ignored_targets_are_left_out_of_the_mean():
    labels = np.array([0, -100, 4])
    expected = F.cross_entropy(_torch(LOGITS), torch.from_numpy(labels))
    assert _loss(labels) == pytest.approx(float(expected), rel=1e-6)


def test_float_labels_give_multi_label_bce():
    labels = (np.random.default_rng(1).uniform(size=(3, 5)) > 0.5).astype(np.float32)
    expected = F.binary_cross_entropy_with_logits(_torch(LOGITS), torch.from_numpy(labels))
    assert _loss(labels) == pytest.approx(float(expected), rel=1e-6)


def test_one_label_gives_regression_with_squeezed_shapes():
    labels = np.array([0.5, -1.0, 2.0], np.float32)
    expected = F.mse_loss(_torch(LOGITS, 1).squeeze(), torch.from_numpy(labels))
    assert _loss(labels, num_labels=1) == pytest.approx(float(expected), rel=1e-6)
    assert _loss(labels[:, None], num_labels=1) == pytest.approx(float(expected), rel=1e-6)


def test_explicit_problem_type_wins():
    labels = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)
    expected = F.mse_loss(_torch(LOGITS, 2), torch.from_numpy(labels))
    assert _loss(labels, 2, "regression") == pytest.approx(float(expected), rel=1e-6)
    int_labels = np.array([[0, 1], [1, 1], [0, 0]])
    expected = F.binary_cross_entropy_with_logits(_torch(LOGITS, 2), torch.from_numpy(int_labels).float())
    assert _loss(int_labels, 2, "multi_label_classification") == pytest.approx(float(expected), rel=1e-6)


def test_loss_comes_with_the_outputs_when_labels_are_given():
    config = tiny_config()
    module, variables = regnet_flax.from_canonical(config, random_state(build_model_spec(config)))
    images = jnp.asarray(np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32))
    labels = jnp.array([0, 1, 4])
    out = jax.jit(module.apply)(variables, images, labels=labels)
    assert list(out) == ["loss", "logits", "last_hidden_state", "pooler_output"]
    expected = F.cross_entropy(torch.from_numpy(np.array(out.logits)), torch.tensor([0, 1, 4]))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize(
    "labels, num_labels, problem_type, message",
    [
        (np.array([0, 1]), 5, None, "one label per image, shape \\(3,\\)"),
        (np.zeros((3, 4), np.float32), 5, "multi_label_classification", "labels of shape \\(3, 5\\)"),
        (np.array([0, 5, 1]), 5, None, "targets must be in \\[0, 5\\) or -100, got \\[5\\]"),
        (np.array([0, 1, 2]), 0, None, "no classifier"),
    ],
)
def test_bad_labels_are_named(labels, num_labels, problem_type, message):
    with pytest.raises(ValueError, match=message):
        _loss(labels, num_labels, problem_type, logits=LOGITS if num_labels else LOGITS[:, :0])


def test_label_shapes_are_checked_under_jit():
    config = tiny_config()
    with pytest.raises(ValueError, match="one label per image"):
        jax.jit(lambda logits, labels: regnet_flax.loss(logits, labels, config))(jnp.asarray(LOGITS), jnp.array([0, 1]))
