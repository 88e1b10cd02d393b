"""TensorFlow fast paths: compiled eager inference calls, predict without tf.data, folded BatchNorm, mixed bfloat16."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from regnet_core import build_model_spec, random_state  # noqa: E402
from regnet_tf import RegNetBackbone, RegNetForImageClassification, RegNetModel  # noqa: E402
from regnet_tf import backend as tf_backend  # noqa: E402
from regnet_tf.modeling import compiled_calls, resolve_dtype  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# bfloat16 keeps 8 bits of mantissa; on the tiny random models (seeds 0 to 3) the logits differ
# from float32 by 0.4% to 1.4% of their largest magnitude; the bound leaves a margin of about 3.
BF16_LOGITS_REL = 0.04


def _state(config, seed=0, with_head=True):
    return random_state(build_model_spec(config), seed, with_head)


def _model(config, seed=0, with_head=True, dtype=None):
    return tf_backend.from_canonical(config, _state(config, seed, with_head), with_head, dtype=dtype)


def _images(batch=3, size=32, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(dtype)


def _plain(model, *args, **kwargs):
    with compiled_calls(False):
        return model(*args, **kwargs)


def _assert_outputs_equal(got, expected, rtol=1e-5):
    assert type(got) is type(expected)
    assert list(got) == list(expected)
    for name in expected:
        values, references = got[name], expected[name]
        if isinstance(references, tuple):  # hidden_states, feature_maps
            assert isinstance(values, tuple) and len(values) == len(references)
        else:
            values, references = [values], [references]
        for value, reference in zip(values, references, strict=True):
            assert value.dtype == reference.dtype and value.shape == reference.shape
            scale = max(float(np.abs(reference).max()), 1e-6)
            assert float(np.abs(np.asarray(value) - np.asarray(reference)).max()) <= rtol * scale, name


def _traces(model, output_hidden_states=False):
    return model.inference_function(output_hidden_states).experimental_get_tracing_count()


# ----------------------------------------------------------------------------- compiled eager calls


@pytest.mark.parametrize("layer_type", ["x", "y"])
@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_eager_call_runs_compiled_and_equals_the_plain_and_tf_function_paths(layer_type, output_hidden_states):
    model = _model(tiny_config(layer_type))
    images = _images()
    assert _traces(model, output_hidden_states) == 0
    compiled = model(images, output_hidden_states=output_hidden_states)
    assert _traces(model, output_hidden_states) == 1  # the eager call went through the compiled function
    plain = _plain(model, images, output_hidden_states=output_hidden_states)
    assert _traces(model, output_hidden_states) == 1  # and the plain one did not
    graph = tf.function(lambda x: model(x, output_hidden_states=output_hidden_states, training=False))(images)
    _assert_outputs_equal(compiled, plain)
    _assert_outputs_equal(graph, plain)
    assert ("hidden_states" in compiled) == output_hidden_states


def test_trunk_and_backbone_calls_run_compiled():
    config = tiny_config("y")
    images = _images(2)
    for model in (_model(config, with_head=False), RegNetBackbone(config, out_indices=(1, 3))):
        compiled = model(images)
        assert _traces(model) == 1
        _assert_outputs_equal(compiled, _plain(model, images))


def test_retracing_is_bounded_over_batch_and_image_sizes():
    model = _model(tiny_config("y"))
    for batch in (1, 2, 3, 4, 1):
        assert model(_images(batch)).logits.shape == (batch, 5)
    assert _traces(model) == 2  # the first shape, then one for any batch size
    for size in (24, 40, 24):
        logits = model(_images(2, size)).logits
        np.testing.assert_allclose(logits, _plain(model, _images(2, size)).logits, rtol=1e-5, atol=1e-6)
    assert _traces(model) <= 3


def test_inputs_are_converted_and_checked_as_keras_and_call_do():
    model = _model(tiny_config("y"))
    images = _images(2)
    # float64 numpy and tensors are cast to the compute dtype, as Keras' __call__ casts them
    _assert_outputs_equal(model(images.astype(np.float64)), _plain(model, images))
    _assert_outputs_equal(model(tf.constant(images)), _plain(model, images))
    with pytest.raises(ValueError, match="floating point"):
        model(np.zeros((1, 32, 32, 3), np.int32))
    with pytest.raises(ValueError, match="NCHW"):
        model(np.zeros((1, 3, 32, 32), np.float32))


def test_labels_loss_is_the_same_compiled_and_plain():
    model = _model(tiny_config("y"))
    images, labels = _images(3), np.array([1, 2, -100])
    compiled = model(images, labels=labels)
    _assert_outputs_equal(compiled, _plain(model, images, labels=labels))
    assert list(compiled)[0] == "loss" and _traces(model) == 1
    with pytest.raises(ValueError):
        model(images, labels=np.array([1, 2]))
    regression = _model(tiny_config("y", num_labels=1))
    targets = np.array([[0.5], [1.5], [-1.0]])
    _assert_outputs_equal(regression(images, labels=targets), _plain(regression, images, labels=targets))


def test_gradient_tape_and_forward_accumulator_take_the_plain_path():
    model = _model(tiny_config("y"))
    images, labels = tf.constant(_images(2)), tf.constant([1, 3])

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = model(images, labels=labels, training=False).loss
        return tape.gradient(loss, [images, *model.trainable_variables])

    got = gradients()
    assert _traces(model) == 0 and all(g is not None for g in got)
    with compiled_calls(False):
        expected = gradients()
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    tangent = tf.ones_like(images)
    with tf.autodiff.ForwardAccumulator(images, tangent) as accumulator:
        logits = model(images).logits
    assert accumulator.jvp(logits) is not None and _traces(model) == 0


def test_training_call_updates_statistics_and_compiled_inference_sees_them():
    config = tiny_config("y")
    model, reference = _model(config), _model(config)
    images = _images(4)
    before = model(images).logits.numpy()  # compiled, traced with the initial statistics
    model(images, training=True)
    _plain(reference, images, training=True)
    for got, expected in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    after = model(images).logits.numpy()
    assert _traces(model) == 1 and np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, _plain(model, images).logits, rtol=1e-5, atol=1e-6)


def test_weights_loaded_after_the_first_call_are_used():
    config = tiny_config("x")
    model, images = _model(config, seed=0), _images(2)
    model(images)
    model.load_canonical_state(_state(config, seed=1))
    expected = _plain(_model(config, seed=1), images).logits
    np.testing.assert_allclose(model(images).logits, expected, rtol=1e-5, atol=1e-6)


def test_run_eagerly_and_functional_use_are_keras_own():
    model = _model(tiny_config("y"))
    model.compile(run_eagerly=True)
    model(_images(2))
    assert _traces(model) == 0
    inputs = keras.Input((32, 32, 3))
    wrapper = keras.Model(inputs, _model(tiny_config("y"))(inputs)["logits"])
    np.testing.assert_allclose(wrapper(_images(2)), _plain(model, _images(2)).logits, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- predict


def test_predict_batches_arrays_itself_with_keras_outputs_and_callbacks():
    model = _model(tiny_config("y"))
    images = _images(7)
    expected = _plain(model, images).logits.numpy()

    class Count(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = []

        def on_predict_batch_end(self, batch, logs=None):
            self.batches.append((batch, logs["outputs"].shape[0]))

    count = Count()
    for x in (images, images.astype(np.float64), tf.constant(images)):
        logits = model.predict(x, batch_size=3, verbose=0, callbacks=[count] if x is images else None)
        assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert count.batches == [(0, 3), (1, 3), (2, 1)]
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)  # batch_size 32
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)  # Keras' own path
    np.testing.assert_allclose(model.predict(dataset, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_trunk_predict_returns_keras_structure():
    model = _model(tiny_config("y"), with_head=False)
    images = _images(5)
    outputs = model.predict(images, batch_size=2, verbose=0)
    expected = _plain(model, images)
    assert sorted(outputs) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- mixed bfloat16


@pytest.fixture
def global_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def _assert_mixed(model):
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}  # variables and BN statistics
    layers = [model.regnet.stem.convolution, model.regnet.stages[0].blocks[0].conv_b.normalization]
    if model.classifier is not None:
        layers.append(model.classifier)
    assert {layer.compute_dtype for layer in layers} == {"bfloat16"}


@pytest.mark.parametrize("layer_type", ["x", "y"])
@pytest.mark.parametrize("how", ["argument", "global"])
def test_mixed_bfloat16_logits_are_float32_and_close(layer_type, how, global_policy):
    config = tiny_config(layer_type)
    reference = _model(config)
    if how == "global":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = _model(config)
    else:
        model = _model(config, dtype="mixed_bfloat16")
        assert keras.config.dtype_policy().name == "float32"  # the argument leaves the global policy alone
    _assert_mixed(model)
    images = _images(4)
    expected = _plain(reference, images).logits.numpy()
    for outputs in (model(images, output_hidden_states=True), _plain(model, images, output_hidden_states=True)):
        assert outputs.logits.dtype == tf.float32 and outputs.pooler_output.dtype == tf.float32
        assert outputs.last_hidden_state.dtype == tf.bfloat16
        assert np.abs(outputs.logits.numpy() - expected).max() <= BF16_LOGITS_REL * np.abs(expected).max()
    assert model.predict(images, verbose=0).dtype == np.float32
    model(images, training=True)  # statistics update in float32
    assert {v.dtype for v in model.weights} == {"float32"}


def test_mixed_bfloat16_loads_float32_weights_and_round_trips(tmp_path, global_policy):
    config = tiny_config("y")
    source = _model(config)
    source.save_pretrained(tmp_path)
    for dtype in ("bfloat16", "mixed_bfloat16"):
        model = RegNetForImageClassification.from_pretrained(tmp_path, dtype=dtype)
        _assert_mixed(model)
        for got, expected in zip(model.weights, source.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
    rebuilt = RegNetForImageClassification.from_config(model.get_config())
    assert rebuilt.dtype_policy.name == "mixed_bfloat16"
    backbone = RegNetBackbone.from_pretrained(tmp_path, dtype="bfloat16")
    assert backbone.dtype_policy.name == "mixed_bfloat16"
    assert backbone(_images(1)).feature_maps[-1].dtype == tf.bfloat16
    trunk = RegNetModel(config, dtype="bfloat16")
    assert trunk(_images(1)).pooler_output.dtype == tf.float32


def test_default_policy_is_float32_and_unknown_policies_are_refused():
    model = _model(tiny_config("y"))
    assert model.dtype_policy.name == "float32" and model(_images(1)).last_hidden_state.dtype == tf.float32
    assert resolve_dtype(None) == resolve_dtype("float32") == resolve_dtype(tf.float32) == "float32"
    assert resolve_dtype("bfloat16") == resolve_dtype(keras.DTypePolicy("mixed_bfloat16")) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="float16"):
        RegNetModel(tiny_config("y"), dtype="mixed_float16")
