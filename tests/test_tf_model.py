"""Keras modules: built from specs with the native table's names, pycls init, clear input errors, graph modes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from regnet_core import (  # noqa: E402
    build_model_spec,
    get_config,
    get_entry,
    list_models,
    model_complexity,
    random_state,
)
from regnet_tf import RegNetForImageClassification, RegNetModel  # noqa: E402
from regnet_tf import backend as tf_backend  # noqa: E402
from regnet_tf.modeling import variable_shapes  # noqa: E402
from regnet_tf.weights import model_variables, native_table  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _random_model(config, seed=0, with_head=True):
    return tf_backend.from_canonical(config, random_state(build_model_spec(config), seed, with_head), with_head)


def _images(batch=2, size=32, channels=3, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype(np.float32))


def _variable_table(model):
    return {path: tuple(variable.shape) for path, variable in model_variables(model).items()}


@pytest.mark.parametrize(
    "config, with_head",
    [
        (tiny_config("x"), True),
        (tiny_config("y"), True),
        (tiny_config("y"), False),
        (tiny_config("y", num_labels=0), True),
        (get_config("regnet-x-002"), True),
        (get_config("regnet-y-004"), True),
    ],
    ids=["tiny-x", "tiny-y", "tiny-y-trunk", "tiny-y-no-labels", "regnet-x-002", "regnet-y-004"],
)
def test_built_variables_are_the_native_table(config, with_head):
    model = (RegNetForImageClassification if with_head else RegNetModel)(config)
    spec = build_model_spec(config)
    assert _variable_table(model) == native_table(spec, with_head)
    trainable = {v.path for v in model.trainable_variables}
    moving = {v.path for v in model.weights if "moving_" in v.path}
    assert moving and not (trainable & moving)
    assert model.count_params() == sum(int(np.prod(s)) for s in native_table(spec, with_head).values())
    if with_head:  # trainable values are the complexity report's parameter count
        assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == model_complexity(spec).params


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_builds_the_native_table_without_allocating(name):
    # Built in a Keras StatelessScope: variables get paths and shapes but no memory (regnet-y-10b-seer
    # would need 40 GB), so this compares the real Keras structure of every zoo model.
    config, with_head = get_config(name), not get_entry(name).is_trunk
    assert variable_shapes(config, with_head) == native_table(build_model_spec(config), with_head)


def test_variable_paths_do_not_depend_on_the_model_name():
    first, second = RegNetForImageClassification(tiny_config()), RegNetForImageClassification(tiny_config())
    assert first.name != second.name
    named = RegNetForImageClassification(tiny_config(), name="backbone")
    assert list(_variable_table(first)) == list(_variable_table(second)) == list(_variable_table(named))
    assert named.weights[0].path == "backbone/regnet/stem/conv/kernel"


def test_outputs_are_nhwc_with_transformers_fields():
    config = tiny_config("y")
    spec = build_model_spec(config)
    out = _random_model(config)(_images(2, 64), output_hidden_states=True)
    assert list(out) == ["logits", "last_hidden_state", "pooler_output", "hidden_states"]
    assert out.logits.shape == (2, 5)
    expected = [(2, 32, 32, 8)] + [
        (2, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2), s.width) for i, s in enumerate(spec.stages)
    ]
    assert [tuple(h.shape) for h in out.hidden_states] == expected
    assert out.pooler_output.shape == (2, 1, 1, 24)
    np.testing.assert_array_equal(out.last_hidden_state, out.hidden_states[-1])
    np.testing.assert_allclose(out.pooler_output, tf.reduce_mean(out.last_hidden_state, [1, 2], keepdims=True))
    assert "hidden_states" not in _random_model(config)(_images())


def test_trunk_and_classifier_share_weights_and_outputs():
    config = tiny_config("x")
    classifier = _random_model(config)
    trunk = RegNetModel(config)
    trunk.load_canonical_state(classifier.canonical_state())  # classification weights load into a trunk
    x = _images()
    a, b = classifier(x), trunk(x)
    np.testing.assert_array_equal(a.pooler_output, b.pooler_output)
    kernel, bias = classifier.classifier.kernel.numpy(), classifier.classifier.bias.numpy()
    np.testing.assert_allclose(a.logits, np.reshape(b.pooler_output, (2, -1)) @ kernel + bias, atol=1e-6)


def test_zero_labels_gives_pooled_features_as_logits():
    model = _random_model(tiny_config(num_labels=0))
    out = model(_images())
    assert model.classifier is None
    np.testing.assert_array_equal(out.logits, np.reshape(out.pooler_output, (2, 24)))


def test_pycls_initialisation():
    keras.utils.set_random_seed(0)
    model = RegNetForImageClassification(get_config("regnet-x-016"))
    conv = model.regnet.stages[2].blocks[0].conv_b.convolution
    expected_std = (2.0 / (9 * conv.out_channels)) ** 0.5
    assert abs(float(np.std(conv.kernel.numpy())) / expected_std - 1) < 0.05
    head = model.classifier
    assert abs(float(np.std(head.kernel.numpy())) - 0.01) < 0.001 and not np.any(head.bias.numpy())
    bn = model.regnet.stem.normalization
    assert np.all(bn.gamma.numpy() == 1) and not np.any(bn.beta.numpy())
    assert not np.any(bn.moving_mean.numpy()) and np.all(bn.moving_variance.numpy() == 1)
    y_model = RegNetForImageClassification(tiny_config("y"), zero_init_last_bn=True)
    for stage in y_model.regnet.stages:
        for block in stage.blocks:
            assert not np.any(block.conv_c.normalization.gamma.numpy())
            assert np.all(block.conv_a.normalization.gamma.numpy() == 1)
            assert not np.any(block.squeeze_excitation.reduce.bias.numpy())
            assert np.std(block.squeeze_excitation.reduce.kernel.numpy()) > 0


def test_seeded_build_is_reproducible():
    config = tiny_config("y")
    first = tf_backend.to_canonical(tf_backend.build(config, seed=3))
    again = tf_backend.to_canonical(tf_backend.build(config, seed=3))
    other = tf_backend.to_canonical(tf_backend.build(config, seed=4))
    name = "regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first[name], other[name])


def test_se_widths_come_from_the_block_input():
    model = RegNetForImageClassification(tiny_config("y", embedding_size=12))
    first = model.regnet.stages[0].blocks[0].squeeze_excitation.reduce
    assert first.kernel.shape == (1, 1, 8, 3)  # round(12 * 0.25) = 3
    second = model.regnet.stages[1].blocks[1].squeeze_excitation.reduce
    assert second.kernel.shape == (1, 1, 16, 4)


BAD_INPUTS = [
    ((3, 32, 32), np.float32, "4-D NHWC batch .* got a 3-D tensor"),
    ((2, 32, 32, 4), np.float32, "3 channels on axis 3 .* got shape \\((2|None), 32, 32, 4\\)"),
    ((2, 3, 32, 32), np.float32, "looks like an NCHW batch, expected NHWC"),
    ((2, 32, 32, 3), np.int32, "floating point, got dtype int32"),
]
BAD_IDS = ["rank-3", "four-channels", "nchw", "int32"]


@pytest.mark.parametrize("shape, dtype, message", BAD_INPUTS, ids=BAD_IDS)
def test_bad_input_is_named_eagerly(shape, dtype, message):
    model = RegNetForImageClassification(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(tf.zeros(shape, dtype))


@pytest.mark.parametrize("shape, dtype, message", BAD_INPUTS, ids=BAD_IDS)
def test_bad_input_is_named_in_tf_function_with_unknown_batch(shape, dtype, message):
    model = RegNetForImageClassification(tiny_config())
    signature = tf.TensorSpec((None, *shape[1:]), dtype)
    with pytest.raises(ValueError, match=message):
        tf.function(lambda x: model(x)["logits"], input_signature=[signature]).get_concrete_function()


def test_other_channel_counts_follow_num_channels():
    model = RegNetForImageClassification(tiny_config(num_channels=1))
    assert model(_images(2, 16, channels=1)).logits.shape == (2, 5)
    with pytest.raises(ValueError, match="1 channels"):
        model(_images(2, 16, channels=3))


def test_tf_function_and_xla_give_eager_logits():
    model = _random_model(tiny_config("y"))
    x = _images(2, 40)
    eager = model(x).logits.numpy()
    graph = tf.function(lambda images: model(images).logits)(x).numpy()
    xla = tf.function(lambda images: model(images).logits, jit_compile=True)(x).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-5)
    assert np.abs(eager).max() > 0.1  # random head: the comparison is not between zeros


def test_training_forward_updates_every_batchnorm_and_inference_does_not():
    model = _random_model(tiny_config("y"))
    statistics = {p: v for p, v in model_variables(model).items() if "moving_" in p}
    before = {p: v.numpy().copy() for p, v in statistics.items()}
    model(_images(4), training=False)
    assert all(np.array_equal(before[p], v.numpy()) for p, v in statistics.items())
    tf.function(lambda x: model(x, training=True).logits)(_images(4))
    changed = [p for p, v in statistics.items() if not np.array_equal(before[p], v.numpy())]
    assert sorted(changed) == sorted(statistics)  # stem, projections and every block layer


def test_training_mode_refuses_one_value_per_channel_like_pytorch():
    model = _random_model(tiny_config("y"))
    with pytest.raises(ValueError, match="more than one value per channel"):
        model(_images(1, 16), training=True)  # last stage is 1x1 at batch 1


def test_activation_choice_is_applied():
    x = _images()
    silu = _random_model(tiny_config(hidden_act="silu"))(x).logits.numpy()
    relu = _random_model(tiny_config(hidden_act="relu"))(x).logits.numpy()
    assert not np.allclose(silu, relu)


def test_functional_api_can_wrap_the_model():
    model = _random_model(tiny_config("y"))
    inputs = keras.Input((32, 32, 3))
    outputs = model(inputs)
    wrapper = keras.Model(inputs, keras.layers.Dense(2)(outputs["pooler_output"][:, 0, 0, :]))
    assert wrapper(_images()).shape == (2, 2)
    assert len(wrapper.weights) == len(model.weights) + 2


def _import_in_subprocess(code, **env):
    environment = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=ROOT)


def test_import_refuses_another_keras_backend_named_in_the_environment():
    result = _import_in_subprocess("import regnet_tf", KERAS_BACKEND="jax")
    assert result.returncode != 0
    assert (
        "KerasBackendError: regnet_tf needs Keras on the 'tensorflow' backend, but KERAS_BACKEND is 'jax'"
        in result.stderr
    )


def test_import_refuses_keras_already_loaded_on_another_backend():
    pytest.importorskip("jax")
    code = "import os, keras; os.environ.pop('KERAS_BACKEND'); import regnet_tf"
    result = _import_in_subprocess(code, KERAS_BACKEND="jax")
    assert result.returncode != 0
    assert "keras is already imported on 'jax'" in result.stderr


def test_import_selects_tensorflow_when_nothing_is_set():
    code = "import regnet_tf, keras, os; print(keras.config.backend(), os.environ['KERAS_BACKEND'])"
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**environment, "PYTHONPATH": str(ROOT)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tensorflow", "tensorflow"]
