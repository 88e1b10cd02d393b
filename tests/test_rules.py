"""The rules every backend shares, defined once in the core, and each backend's use of them.

Activation names are checked against transformers' own ACT2FN table (the outside meaning of
each hidden_act); the loss choice against the cases transformers' loss function distinguishes.
"""

import numpy as np
import pytest

from regnet_core.config import ACTIVATIONS
from regnet_core.outputs import (
    BCE_WITH_LOGITS,
    CROSS_ENTROPY,
    IGNORE_INDEX,
    MSE,
    check_class_targets,
    choose_loss,
    labels_are_integers,
)
from regnet_core.rules import ACTIVATION_FUNCTIONS, activation_function
from regnet_core.weights import state_has_head
from tests.helpers import requires, tiny_config

GRID = np.linspace(-6.0, 6.0, 241, dtype=np.float32)


def test_config_validates_exactly_the_names_of_the_activation_table():
    assert ACTIVATIONS == tuple(ACTIVATION_FUNCTIONS)
    assert activation_function("swish") == activation_function("silu") == "silu"
    assert activation_function(None) is None
    with pytest.raises(ValueError, match="unknown activation 'gelu_new'; expected one of relu, silu"):
        activation_function("gelu_new")


def _reference(name, dtype=np.float32):
    """transformers' ACT2FN[name] on the grid, computed in ``dtype``."""
    torch = pytest.importorskip("torch")
    transformers_activations = pytest.importorskip("transformers.activations")
    with torch.no_grad():
        return transformers_activations.ACT2FN[name](torch.from_numpy(GRID.astype(dtype))).numpy()


# TensorFlow and Flax run other float32 kernels: they are compared with transformers' function
# evaluated in float64, within float32 rounding on values up to 6 (seen: at most 6.3e-7). The
# tanh approximation of GELU differs from the exact form by up to 4.7e-4 on this grid.
FLOAT32_ATOL = 1e-6


@requires("torch")
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_pytorch_activation_is_transformers_function_bit_for_bit(name):
    import torch

    from regnet_pt.modeling import make_activation

    with torch.no_grad():
        got = make_activation(name)(torch.from_numpy(GRID.copy())).numpy()
    np.testing.assert_array_equal(got, _reference(name))


@requires("tensorflow")
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_tensorflow_activation_is_transformers_function(name):
    import tensorflow as tf

    from regnet_tf.modeling import activation_function as tf_activation

    got = tf_activation(name)(tf.constant(GRID)).numpy()
    np.testing.assert_allclose(got, _reference(name, np.float64), rtol=0, atol=FLOAT32_ATOL)


@requires("flax")
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_flax_activation_is_transformers_function(name):
    import jax.numpy as jnp

    import regnet_flax

    got = np.asarray(regnet_flax.activation_function(name)(jnp.asarray(GRID)))
    np.testing.assert_allclose(got, _reference(name, np.float64), rtol=0, atol=FLOAT32_ATOL)


def test_gelu_is_the_exact_form_not_the_tanh_approximation():
    # x * Phi(x) at x = 1: Phi(1) = 0.841344746...; the tanh approximation gives 0.841191990.
    reference = _reference("gelu")
    index = int(np.argmin(np.abs(GRID - 1.0)))
    assert GRID[index] == 1.0
    assert abs(float(reference[index]) - 0.8413447460685429) < 1e-6


@pytest.mark.parametrize(
    "framework_module, function",
    [("regnet_pt.modeling", "make_activation"), ("regnet_tf.modeling", "activation_function")],
)
def test_backends_refuse_an_unknown_activation_by_name(framework_module, function):
    module = pytest.importorskip(framework_module)
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        getattr(module, function)("mish")


# ----------------------------------------------------------------------------- the loss rule


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("int64", True),
        ("int32", True),
        ("torch.int64", True),
        ("torch.int32", True),
        ("uint8", False),  # transformers: only torch.long and torch.int are class indices
        ("int16", False),
        ("float32", False),
        ("bool", False),
    ],
)
def test_only_int32_and_int64_labels_are_class_indices(dtype, expected):
    assert labels_are_integers(dtype) is expected


@pytest.mark.parametrize(
    "problem_type, num_labels, dtype, shape, expected",
    [
        (None, 1, "float32", (4,), ("regression", MSE, True)),
        (None, 1, "int64", (4, 1), ("regression", MSE, True)),
        (None, 5, "int64", (4,), ("single_label_classification", CROSS_ENTROPY, False)),
        (None, 5, "float32", (4, 5), ("multi_label_classification", BCE_WITH_LOGITS, False)),
        (None, 5, "uint8", (4, 5), ("multi_label_classification", BCE_WITH_LOGITS, False)),
        ("regression", 3, "float32", (4, 3), ("regression", MSE, False)),
        ("multi_label_classification", 3, "int64", (4, 3), ("multi_label_classification", BCE_WITH_LOGITS, False)),
        ("single_label_classification", 3, "float32", (4,), ("single_label_classification", CROSS_ENTROPY, False)),
    ],
)
def test_loss_choice(problem_type, num_labels, dtype, shape, expected):
    choice = choose_loss(problem_type, num_labels, dtype, shape, 4)
    assert (choice.problem_type, choice.function, choice.squeeze) == expected
    assert choice.ignore_index == (IGNORE_INDEX if choice.function == CROSS_ENTROPY else None)


def test_the_ignored_target_is_pytorchs_default():
    torch = pytest.importorskip("torch")
    import inspect

    assert IGNORE_INDEX == -100
    assert inspect.signature(torch.nn.functional.cross_entropy).parameters["ignore_index"].default == IGNORE_INDEX


def test_class_targets_outside_the_classes_are_named():
    check_class_targets(np.array([0, 4, IGNORE_INDEX]), 5)
    with pytest.raises(ValueError, match=r"in \[0, 5\) or -100, got \[5, -1\]"):
        check_class_targets(np.array([0, 5, -1]), 5)


# ----------------------------------------------------------------------------- heads and widths


def test_a_state_has_a_head_when_its_trunk_is_nested_under_regnet():
    assert state_has_head(["regnet.embedder.embedder.convolution.weight", "classifier.1.weight"])
    assert state_has_head({"regnet.embedder.embedder.convolution.weight": None})  # a classifier with 0 labels
    assert not state_has_head(["embedder.embedder.convolution.weight", "encoder.stages.0.layers.0.shortcut.x"])
    assert not state_has_head([])


@requires("flax")
def test_flax_squeeze_excitation_and_batchnorm_take_their_widths_from_the_specs():
    import jax
    import jax.numpy as jnp

    from regnet_core import build_model_spec
    from regnet_flax.modeling import BatchNorm, SqueezeExcitation

    block = build_model_spec(tiny_config("y")).stages[1].blocks[0]
    x = jnp.ones((1, 4, 4, block.bottleneck_width))
    se = SqueezeExcitation(block.bottleneck_width, block.se_width)
    params = se.init(jax.random.PRNGKey(0), x)["params"]
    assert params["attention_0"]["kernel"].shape == (1, 1, block.bottleneck_width, block.se_width)
    assert params["attention_2"]["kernel"].shape == (1, 1, block.se_width, block.bottleneck_width)
    with pytest.raises(ValueError, match=f"SqueezeExcitation expects {block.bottleneck_width} channels"):
        se.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, block.bottleneck_width + 8)))
    with pytest.raises(ValueError, match="BatchNorm expects 16 channels"):
        BatchNorm(features=16).init(jax.random.PRNGKey(0), jnp.ones((2, 3, 3, 8)))
    # Standalone (features=None) it normalises whatever channels come.
    variables = BatchNorm().init(jax.random.PRNGKey(0), jnp.ones((2, 3, 3, 8)))
    assert variables["params"]["scale"].shape == (8,)
