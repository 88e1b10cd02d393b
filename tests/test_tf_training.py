"""Losses follow problem_type exactly as PyTorch computes them; model.fit trains with or without a Keras loss."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import regnet_tf  # noqa: E402
from regnet_core import build_model_spec, random_state  # noqa: E402
from regnet_tf import backend as tf_backend  # noqa: E402
from regnet_tf.weights import model_variables  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(3, 32, 32, 3)).astype(np.float32)

# (num_labels, problem_type, labels, the loss torch.nn.functional computes on the same logits)
LOSS_CASES = [
    (5, None, np.array([0, 3, 4]), "cross_entropy", "single-label cross-entropy"),
    (5, None, np.array([0, -100, 4]), "cross_entropy", "cross-entropy skips -100 like PyTorch"),
    (5, None, np.array([2, 0, 1], np.int32), "cross_entropy", "int32 labels are class indices"),
    (
        5,
        None,
        np.array([[0.0, 1, 1, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]], np.float32),
        "binary_cross_entropy_with_logits",
        "multi-label BCE",
    ),
    (1, None, np.array([0.5, -1.0, 2.0], np.float32), "mse_squeezed", "regression squeezed"),
    (1, None, np.array([[0.5], [-1.0], [2.0]], np.float32), "mse_squeezed", "regression squeezed 2-D labels"),
    (2, "regression", RNG.normal(size=(3, 2)).astype(np.float32), "mse", "explicit regression"),
    (
        2,
        "multi_label_classification",
        np.array([[0, 1], [1, 1], [0, 0]]),
        "binary_cross_entropy_with_logits",
        "explicit multi-label, integer labels",
    ),
]


def _model(num_labels=5, problem_type=None, seed=0):
    config = tiny_config(num_labels=num_labels, problem_type=problem_type)
    return config, tf_backend.from_canonical(config, random_state(build_model_spec(config), seed))


def _torch_loss(function, logits, labels):
    """The loss PyTorch's functional API computes on our TensorFlow logits (an outside reference)."""
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    logits, labels = torch.from_numpy(np.asarray(logits)), torch.from_numpy(labels)
    if function == "cross_entropy":
        return F.cross_entropy(logits, labels.long(), ignore_index=-100).item()
    if function == "mse_squeezed":
        return F.mse_loss(logits.squeeze(), labels.squeeze().float()).item()
    if function == "mse":
        return F.mse_loss(logits, labels.float()).item()
    return F.binary_cross_entropy_with_logits(logits, labels.float()).item()


@pytest.mark.parametrize(
    "num_labels, problem_type, labels, function, _", LOSS_CASES, ids=[case[-1] for case in LOSS_CASES]
)
def test_labels_loss_matches_pytorch_functional(num_labels, problem_type, labels, function, _):
    _, tf_model = _model(num_labels, problem_type)
    out = tf_model(IMAGES, labels=labels)
    expected = _torch_loss(function, out.logits.numpy(), labels)
    assert np.isfinite(expected)
    assert abs(float(out.loss) - expected) <= 1e-6 * abs(expected)


@pytest.mark.parametrize(
    "labels, problem_type, message",
    [
        (np.array([0, 1]), None, "one label per image, shape \\(3,\\)"),
        (np.zeros((3, 4), np.float32), "multi_label_classification", "labels of shape \\(3, 5\\)"),
    ],
    ids=["too-few-labels", "wrong-class-count"],
)
def test_labels_of_the_wrong_shape_are_named(labels, problem_type, message):
    _, model = _model(problem_type=problem_type)
    with pytest.raises(ValueError, match=message):
        model(IMAGES, labels=labels)


def test_labels_without_a_classifier_are_refused():
    _, model = _model(num_labels=0)
    with pytest.raises(ValueError, match="no classifier"):
        model(IMAGES, labels=np.array([0, 1, 2]))


def _task(num_labels=4, batch=16, seed=1):
    """A learnable toy task: the label is the brightest of num_labels image quadrants."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, size=(batch, 32, 32, 3)).astype(np.float32)
    labels = np.arange(batch) % num_labels
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] += 1.0
    return images, labels


def test_fit_without_a_compiled_loss_uses_the_labels_loss_and_trains():
    _, model = _model(num_labels=4)
    images, labels = _task()
    start = float(model(images, labels=labels).loss)
    moving = model_variables(model)["regnet/stem/bn/moving_mean"].numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(images, labels, batch_size=8, epochs=4, verbose=0, shuffle=False).history["loss"]
    assert abs(history[0] - start) < 0.5 * start  # the first epoch's loss is the cross-entropy we know
    assert history[-1] < 0.7 * history[0]
    assert not np.array_equal(moving, model_variables(model)["regnet/stem/bn/moving_mean"].numpy())
    assert model.evaluate(images, labels, verbose=0) < history[0]


def test_fit_with_a_keras_loss_on_the_logits_trains_and_predicts_logits():
    _, model = _model(num_labels=4)
    images, labels = _task()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(images, labels, batch_size=8, epochs=4, verbose=0, shuffle=False).history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert set(history) == {"loss", "accuracy"}
    predictions = model.predict(images, batch_size=8, verbose=0)
    np.testing.assert_allclose(predictions, model(images).logits, rtol=1e-5, atol=1e-5)


def test_fit_without_labels_or_loss_is_refused():
    _, model = _model()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="need labels"):
        model.fit(IMAGES, epochs=1, verbose=0)


@pytest.mark.slow
def test_fit_with_jit_compile_trains():
    _, model = _model(num_labels=4)
    images, labels = _task()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    history = model.fit(images, labels, batch_size=8, epochs=4, verbose=0, shuffle=False).history["loss"]
    assert history[-1] < 0.7 * history[0]


def test_xla_training_step_matches_eager_gradients():
    # The fast counterpart of the slow jit fit: one compiled gradient step, grouped convolutions included.
    _, model = _model(num_labels=4)
    images, labels = _task(batch=4)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model(x, labels=y, training=False).loss
        return loss, tape.gradient(loss, model.trainable_variables)

    eager_loss, eager_grads = step(images, labels)
    xla_loss, xla_grads = tf.function(step, jit_compile=True)(tf.constant(images), tf.constant(labels))
    assert abs(float(xla_loss) - float(eager_loss)) < 1e-5
    for eager, xla in zip(eager_grads, xla_grads, strict=True):
        assert np.abs(xla - eager).max() <= 1e-4 * max(np.abs(eager).max(), 1e-6)


def test_grouped_convolutions_train_without_onednn(monkeypatch):
    """TensorFlow's non-oneDNN CPU kernels cannot differentiate grouped convs; the per-group fallback can."""
    import regnet_tf.modeling as modeling

    model = regnet_tf.RegNetForImageClassification(tiny_config())
    images = tf.random.stateless_normal((2, 32, 32, 3), seed=(1, 2))
    labels = tf.constant([1, 3])

    def loss_and_gradients():
        with tf.GradientTape() as tape:
            loss = model(images, labels=labels, training=False).loss
        return loss, tape.gradient(loss, model.trainable_variables)

    expected_loss, expected = loss_and_gradients()
    monkeypatch.setattr(modeling, "onednn_enabled", lambda: False)
    loss, gradients = loss_and_gradients()
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-6)
    for got, want in zip(gradients, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_targets_out_of_range_are_refused_by_fit_and_evaluate_even_under_xla(jit_compile):
    """Under XLA TensorFlow gives a NaN loss for such a target, and no error: fit checks first."""
    from regnet_core.errors import LabelsError

    _, model = _model(num_labels=4)
    images, labels = _task()
    labels = labels.copy()
    labels[3] = 7
    model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=jit_compile)
    with pytest.raises(LabelsError, match=r"must be in \[0, 4\) or -100, got \[7\]"):
        model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(LabelsError, match=r"got \[7\]"):
        model.fit(images, labels % 4, batch_size=8, epochs=1, verbose=0, validation_data=(images, labels))
    with pytest.raises(LabelsError, match=r"got \[7\]"):
        model.evaluate(images, labels, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be in \[0, 4\) or -100, got\] \[7\]"):
        model.fit(dataset, epochs=1, verbose=0)
    ignored = np.where(labels == 7, -100, labels)  # the ignored index passes
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, ignored)).batch(8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
