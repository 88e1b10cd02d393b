"""Training in every framework: the digits data, PyTorch's SGD rule in Keras and optax, identical steps, one epoch.

The identical-steps rule: from the same weights (random, with randomised BatchNorm statistics
and head) and one batch, each framework's float32 steps are compared with PyTorch's float64
steps, tensor by tensor (parameters and running statistics), as the error relative to the
float64 update (``update_errors``). PyTorch's own float32 steps are the yardstick: every
framework's largest and median error must be within ``STEP_ERROR_FACTOR`` (4) times PyTorch
float32's (``step_accuracy_problems``).
"""

import importlib.util

import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.datasets import (
    _raw_digits,
    bilinear_matrix,
    digits_image_processor,
    load_digits_rgb,
    split_indices,
)
from regnet_core.preprocess import ImageProcessor
from regnet_core.training import (
    STEP_ERROR_FACTOR,
    SGDConfig,
    epoch_batches,
    fit_plan,
    learning_rates,
    score,
    step_accuracy_problems,
    trained_tensor_names,
    update_errors,
)
from tests.helpers import requires, tensorflow_onednn_on_avx512, tiny_config


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch on one thread here: these models are tiny, and with the cores busy (pytest -n 2, other jobs) its
    second oneDNN thread spins; a training step measured up to 20x slower with two threads on a loaded 2-core machine."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- core rules


def test_sgd_config_names_every_bad_value():
    with pytest.raises(ValueError, match="learning_rate must be > 0.*momentum must be in.*weight_decay must be >= 0"):
        SGDConfig(learning_rate=0, momentum=1.0, weight_decay=-1)


def test_learning_rates_cosine_warmup_and_constant():
    rates = learning_rates(0.1, 10, "cosine")
    assert rates[0] == 0.1 and np.all(np.diff(rates) < 0) and rates[-1] > 0
    np.testing.assert_allclose(rates[5], 0.1 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    warm = learning_rates(0.1, 10, "cosine", warmup_steps=2)
    np.testing.assert_allclose(warm[:3], [0.05, 0.1, 0.1])
    assert np.all(learning_rates(0.3, 4, "constant") == 0.3)
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rates(0.1, 10, "step")
    with pytest.raises(ValueError, match="warmup_steps"):
        learning_rates(0.1, 10, warmup_steps=10)


def test_epoch_batches_are_seeded_permutations_without_the_incomplete_batch():
    batches = epoch_batches(10, 4, epoch=0, seed=1)
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(np.concatenate(batches).tolist())) == 8
    assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(10, 4, 0, 1), strict=True))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(epoch_batches(10, 4, 1, 1)))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        epoch_batches(10, 1, 0)
    with pytest.raises(ValueError, match="at least one full batch"):
        epoch_batches(3, 4, 0)


def test_fit_plan_names_every_bad_argument():
    per_epoch, rates = fit_plan(100, 32, 2, SGDConfig(0.1))
    assert per_epoch == 3 and len(rates) == 6 and rates[0] == 0.1
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0.*sgd must be an SGDConfig"):
        fit_plan(100, 32, 0, {"lr": 0.1})
    with pytest.raises(ValueError, match="at least one full batch: 10 training examples < batch_size 32"):
        fit_plan(10, 32, 1, SGDConfig())


def test_image_split_refuses_mismatched_labels():
    from regnet_core.datasets import ImageSplit

    with pytest.raises(
        ValueError, match="one integer label per image, got images \\(4, 3, 8, 8\\) and labels \\(3,\\)"
    ):
        ImageSplit(np.zeros((4, 3, 8, 8), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="float64"):
        ImageSplit(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4))


@requires("torch")
def test_bilinear_upsampling_is_pytorchs_half_pixel_bilinear():
    import torch

    image = np.random.default_rng(0).normal(size=(1, 1, 8, 8))
    matrix = bilinear_matrix(8, 32)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    ours = matrix @ image[0, 0] @ matrix.T
    theirs = torch.nn.functional.interpolate(torch.from_numpy(image), size=(32, 32), mode="bilinear")
    np.testing.assert_allclose(ours, theirs[0, 0].numpy(), atol=1e-12)


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 20)
    train, test = split_indices(labels, 0.25, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(200))
    assert np.all(np.bincount(labels[test]) == 5)
    assert np.array_equal(test, split_indices(labels, 0.25, seed=0)[1])
    assert not np.array_equal(np.sort(test), np.sort(split_indices(labels, 0.25, seed=1)[1]))


@requires("sklearn")
def test_digits_are_normalised_rgb_images_in_either_layout():
    train = load_digits_rgb("train", 16)
    test = load_digits_rgb("test", 16)
    assert train.images.shape == (1438, 3, 16, 16) and train.images.dtype == np.float32
    assert test.images.shape == (359, 3, 16, 16) and test.labels.dtype == np.int64
    assert np.bincount(test.labels).min() >= 35  # 20% of every class
    assert abs(train.images.mean()) < 1e-5 and abs(train.images.std() - 1) < 1e-5
    assert np.array_equal(train.images[:, 0], train.images[:, 2])  # gray in three channels
    nhwc = load_digits_rgb("test", 16, data_format="channels_last")
    np.testing.assert_array_equal(nhwc.images, test.images.transpose(0, 2, 3, 1))
    assert len(load_digits_rgb("all", 8)) == 1797
    assert not np.array_equal(load_digits_rgb("test", 8, seed=1).labels, load_digits_rgb("test", 8).labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "val"}, "split must be one of train, test, all, got 'val'"),
        ({"size": 4}, "size must be an integer >= 8"),
        ({"data_format": "NCHW"}, "data_format must be one of channels_first, channels_last"),
        ({"test_fraction": 1.5}, "test_fraction must be in \\(0, 1\\)"),
    ],
)
@requires("sklearn")
def test_bad_dataset_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits_rgb(**kwargs)


def test_the_digits_image_processor_prepares_8bit_digits_as_training_did():
    """An 8-bit rendering of each digit, through the saved processor, gives load_digits_rgb's values."""
    processor = digits_image_processor(32)
    training = load_digits_rgb("train")
    restored = training.images * processor.image_std[0] + processor.image_mean[0]  # back to [0, 1], ends touched
    assert abs(restored.min()) < 1e-5 and abs(restored.max() - 1) < 1e-5
    raw, labels = _raw_digits()
    train_index, test_index = split_indices(labels, 0.2, 0)
    order = np.concatenate([train_index, test_index])[::9]
    expected = load_digits_rgb("all").images[::9]
    images = [np.repeat((raw[i] * 255 / 16).round().astype(np.uint8)[:, :, None], 3, axis=2) for i in order]
    difference = np.abs(processor(images) - expected)
    assert difference.max() < 0.03  # uint8 rounding and Pillow's bilinear against ours: 0.014 seen
    imagenet = ImageProcessor(size=32, crop_pct=1.0, resample=2)  # the same resize, ImageNet's normalisation
    assert np.abs(imagenet(images) - expected).max() > 0.5
    assert ImageProcessor.from_dict(processor.to_dict()) == processor


def test_score_is_cross_entropy_and_accuracy():
    """The held-out score every backend's evaluate reports, against torch's cross_entropy and a hand-worked case."""
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    loss, correct = score(logits, np.array([0, 2]))
    hand = (-(2 - np.log(np.exp(2) + 2)) + np.log(3)) / 2
    assert abs(loss - hand) < 1e-12 and correct == 0.5
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits, labels = (rng.standard_normal((64, 10)) * 30).astype(np.float32), rng.integers(0, 10, 64)
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels)).item()
    assert abs(score(logits, labels)[0] - expected) < 1e-9
    with pytest.raises(ValueError, match="expected logits"):
        score(logits, labels[:3])


def test_step_rule_compares_largest_and_median_errors():
    baseline = {"a": 1e-5, "b": 2e-5, "c": 1e-3}
    assert step_accuracy_problems({"a": 3e-5, "b": 5e-5, "c": 3e-3}, baseline) == []
    problems = step_accuracy_problems({"a": 1e-4, "b": 1e-4, "c": 1e-3}, baseline)
    assert len(problems) == 1 and problems[0].startswith("median error")
    assert step_accuracy_problems({"a": 0, "b": 0, "c": 1e-2}, baseline)[0].startswith("largest error")


# ----------------------------------------------------------------------------- the SGD rule on a toy problem

SGD_CASE = SGDConfig(learning_rate=0.1, momentum=0.9, weight_decay=0.05)
RATES = learning_rates(0.1, 6, "cosine")  # a changing learning rate tells the momentum formulations apart
TOY_RNG = np.random.default_rng(5)
TOY_START = TOY_RNG.normal(size=7)
TOY_GRADIENTS = TOY_RNG.normal(size=(6, 7))


def _torch_sgd_toy() -> np.ndarray:
    import torch

    param = torch.tensor(TOY_START.copy(), requires_grad=True)
    optimizer = torch.optim.SGD(
        [param], lr=SGD_CASE.learning_rate, momentum=SGD_CASE.momentum, weight_decay=SGD_CASE.weight_decay
    )
    for rate, gradient in zip(RATES, TOY_GRADIENTS, strict=True):
        optimizer.param_groups[0]["lr"] = float(rate)
        param.grad = torch.from_numpy(gradient.copy())
        optimizer.step()
    return param.detach().numpy()


def _keras_toy(optimizer) -> np.ndarray:
    import keras

    variable = keras.Variable(TOY_START.astype(np.float32))
    for gradient in TOY_GRADIENTS:
        optimizer.apply_gradients([(gradient.astype(np.float32), variable)])
    return np.asarray(variable.numpy(), np.float64)


@requires("torch")
@requires("tensorflow")
def test_keras_sgd_here_is_pytorchs_sgd_and_keras_own_is_not():
    import keras

    import regnet_tf  # noqa: F401  (Keras on TensorFlow)
    from regnet_tf.training import LearningRateTable, make_optimizer

    expected = _torch_sgd_toy()
    got = _keras_toy(make_optimizer(SGD_CASE, RATES))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    keras_own = _keras_toy(
        keras.optimizers.SGD(LearningRateTable(RATES), momentum=SGD_CASE.momentum, weight_decay=SGD_CASE.weight_decay)
    )
    assert np.abs(keras_own - expected).max() > 1e-2


@requires("torch")
@requires("optax")
def test_optax_sgd_here_is_pytorchs_sgd_and_decay_after_momentum_is_not():
    import jax.numpy as jnp
    import optax

    from regnet_flax.training import make_optimizer

    def run(transformation):
        params = jnp.asarray(TOY_START, jnp.float32)
        state = transformation.init(params)
        for gradient in TOY_GRADIENTS:
            updates, state = transformation.update(jnp.asarray(gradient, jnp.float32), state, params)
            params = optax.apply_updates(params, updates)
        return np.asarray(params, np.float64)

    expected = _torch_sgd_toy()
    np.testing.assert_allclose(run(make_optimizer(SGD_CASE, RATES)), expected, rtol=1e-6, atol=1e-6)
    table = jnp.asarray(RATES, jnp.float32)
    decoupled = optax.chain(
        optax.trace(SGD_CASE.momentum),
        optax.add_decayed_weights(SGD_CASE.weight_decay),
        optax.scale_by_learning_rate(lambda count: table[count]),
    )
    assert np.abs(run(decoupled) - expected).max() > 1e-2


# ----------------------------------------------------------------------------- identical steps in all three

# A two-stage RegNetY (grouped convs, SE, a projection and an identity shortcut), 32x32 input,
# batch 8, GELU. Not ReLU: with ReLU, float32 steps -- PyTorch's own -- fork from float64 wherever a
# value sits within rounding of the kink, and the fork grows. On tests.helpers.tiny_config with ReLU
# (lr 0.02), PyTorch float32 after ten steps was 3e-4 of an update from float64 on two threads and
# 1.5e-2 on one; at lr 0.1, up to 1.7 updates depending on the seed and memory format. GELU has no
# kink: every float32 run stays close to float64 (measured 1.3e-5 of the largest update here, with
# either thread count) and the rule is tight. (SE's inner ReLU acts on a few pooled values and did
# not fork.) Measured margins: Keras' own SGD, decay after momentum, Nesterov, momentum 0.85 or
# decay 0.011 instead of 0.01 miss the rule by factors of 1000 or more after ten steps.
STEP_CONFIG = tiny_config(hidden_sizes=[8, 16], depths=[1, 2], num_labels=5, hidden_act="gelu")
STEP_SGD = SGDConfig(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
STEP_RATES = learning_rates(STEP_SGD.learning_rate, 10, "cosine")
SNAPSHOTS = (1, 10)


def _step_case():
    state = random_state(build_model_spec(STEP_CONFIG), seed=3)  # randomised BN statistics and head
    rng = np.random.default_rng(7)
    images = rng.normal(size=(8, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, STEP_CONFIG.num_labels, size=8)
    return state, images, labels


def _pytorch_steps(state, images, labels, dtype):
    import torch

    from regnet_pt import backend
    from regnet_pt.training import make_optimizer, train_step

    model = backend.from_canonical(STEP_CONFIG, state).to(dtype)
    optimizer = make_optimizer(model, STEP_SGD)
    x, y = torch.from_numpy(images).to(dtype), torch.from_numpy(labels)
    snapshots = {}
    for step, rate in enumerate(STEP_RATES, start=1):
        train_step(model, optimizer, x, y, rate)
        if step in SNAPSHOTS:
            snapshots[step] = {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}
    return snapshots


def _keras_steps(state, images, labels, optimizer=None):
    from regnet_tf import backend
    from regnet_tf.training import make_optimizer

    model = backend.from_canonical(STEP_CONFIG, state)
    model.compile(optimizer=optimizer or make_optimizer(STEP_SGD, STEP_RATES))
    x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    snapshots = {}
    for step in range(1, len(STEP_RATES) + 1):
        model.train_on_batch(x, labels)
        if step in SNAPSHOTS:
            snapshots[step] = backend.to_canonical(model)
    return snapshots


def _flax_steps(state, images, labels):
    from regnet_flax import backend
    from regnet_flax.training import create_train_state, make_optimizer, train_step

    module, variables = backend.from_canonical(STEP_CONFIG, state)
    train_state = create_train_state(module, variables, make_optimizer(STEP_SGD, STEP_RATES))
    x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    snapshots = {}
    for step in range(1, len(STEP_RATES) + 1):
        train_state, _ = train_step(train_state, x, labels)
        if step in SNAPSHOTS:
            canonical = backend.to_canonical((module, train_state.variables))
            snapshots[step] = {name: np.array(value, copy=True) for name, value in canonical.items()}
    return snapshots


@pytest.fixture(scope="module")
def step_errors():
    """update_errors of PyTorch float32, Keras and Flax against PyTorch float64, after 1 and 10 steps."""
    pytest.importorskip("torch")
    import torch

    state, images, labels = _step_case()
    names = trained_tensor_names(STEP_CONFIG)
    reference = _pytorch_steps(state, images, labels, torch.float64)
    runs = {"pt32": _pytorch_steps(state, images, labels, torch.float32)}
    if importlib.util.find_spec("tensorflow"):
        runs["tf"] = _keras_steps(state, images, labels)
    if importlib.util.find_spec("flax"):
        runs["flax"] = _flax_steps(state, images, labels)
    errors = {
        name: {step: update_errors(state, reference[step], run[step], names) for step in SNAPSHOTS}
        for name, run in runs.items()
    }
    return {"errors": errors, "case": (state, images, labels), "reference": reference, "names": names}


def test_pytorch_float32_steps_are_close_to_float64(step_errors):
    # The yardstick itself: on this case PyTorch's float32 steps are within 1e-3 of every update (2e-5 measured).
    for step in SNAPSHOTS:
        assert max(step_errors["errors"]["pt32"][step].values()) < 1e-3


@pytest.mark.parametrize("steps", SNAPSHOTS)
@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_steps_are_as_accurate_as_pytorch_float32(step_errors, framework, steps):
    if framework not in step_errors["errors"]:
        pytest.skip(f"{framework} not installed")
    errors = step_errors["errors"][framework][steps]
    problems = step_accuracy_problems(errors, step_errors["errors"]["pt32"][steps])
    assert not problems, problems
    assert STEP_ERROR_FACTOR == 4.0


# ----------------------------------------------------------------------------- one short epoch on digits, checkpoints

EPOCH_SGD = SGDConfig(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
EPOCH_BATCH = 16  # 32 steps, cosine learning rate
FRAMEWORKS = ("pt", "tf", "flax")
NEEDS = {"pt": "torch", "tf": "tensorflow", "flax": "flax"}


@pytest.fixture(scope="module")
def digits():
    """512 training and 256 held-out digits (NCHW, 32x32) and pycls-initialised weights of the digits RegNet."""
    pytest.importorskip("sklearn")
    torch = pytest.importorskip("torch")
    from regnet_core.training import digits_config
    from regnet_pt import RegNetForImageClassification

    torch.manual_seed(0)
    config = digits_config()
    start = RegNetForImageClassification(config).canonical_state()
    return config, start, load_digits_rgb("train").take(512), load_digits_rgb("test").take(256)


def _layout(split, framework):
    from regnet_core.datasets import ImageSplit

    return (
        split
        if framework == "pt"
        else ImageSplit(np.ascontiguousarray(split.images.transpose(0, 2, 3, 1)), split.labels)
    )


def _train_one_epoch(framework, config, start, train, val):
    """(history, held-out loss before, held-out loss after, logits on val, a save function) for one framework."""
    if framework == "pt":
        from regnet_pt import backend
        from regnet_pt.training import evaluate, fit

        model = backend.from_canonical(config, start)
        before = evaluate(model, val)[0]
        history = fit(model, train, val, epochs=1, batch_size=EPOCH_BATCH, sgd=EPOCH_SGD, progress=False)
        return (
            history,
            before,
            evaluate(model, val)[0],
            backend.run(model, val.images, False)["logits"],
            model.save_pretrained,
        )
    if framework == "tf":
        from regnet_tf import backend
        from regnet_tf.training import evaluate, fit

        model = backend.from_canonical(config, start)
        before = evaluate(model, val)[0]
        history = fit(model, train, val, epochs=1, batch_size=EPOCH_BATCH, sgd=EPOCH_SGD, progress=False)
        logits = np.asarray(model.predict(val.images, batch_size=256, verbose=0))
        return history, before, evaluate(model, val)[0], logits, model.save_pretrained
    import regnet_flax
    from regnet_flax import backend
    from regnet_flax.training import evaluate, fit, predict_logits

    module, variables = backend.from_canonical(config, start)
    before = evaluate(module, variables, val)[0]
    variables, history = fit(
        module, variables, train, val, epochs=1, batch_size=EPOCH_BATCH, sgd=EPOCH_SGD, progress=False
    )
    return (
        history,
        before,
        evaluate(module, variables, val)[0],
        predict_logits(module, variables, val.images),
        lambda path: regnet_flax.save_pretrained(module, variables, path),
    )


@pytest.fixture(scope="module")
def one_epoch(digits, tmp_path_factory):
    config, start, train, val = digits
    results = {}
    for framework in FRAMEWORKS:
        if importlib.util.find_spec(NEEDS[framework]) is None:
            continue
        history, before, after, logits, save = _train_one_epoch(
            framework, config, start, _layout(train, framework), _layout(val, framework)
        )
        directory = tmp_path_factory.mktemp(f"digits-{framework}")
        save(directory)
        results[framework] = {"history": history, "before": before, "after": after, "logits": logits, "dir": directory}
    return results


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_epoch_on_digits_lowers_the_loss(one_epoch, framework):
    if framework not in one_epoch:
        pytest.skip(f"{NEEDS[framework]} not installed")
    result = one_epoch[framework]
    history = result["history"]
    assert len(history.loss) == len(history.val_accuracy) == 1 and history.seconds > 0
    steps = np.array(history.step_loss)
    assert len(steps) == 32 and abs(steps.mean() - history.loss[0]) < 1e-4 * history.loss[0]
    assert steps[-8:].mean() < 0.7 * steps[:8].mean(), steps  # training loss, train-mode BatchNorm
    if framework == "tf" and not result["after"] < 0.8 * result["before"] and tensorflow_onednn_on_avx512():
        pytest.xfail(
            f"TensorFlow with oneDNN on AVX-512: held-out loss {result['before']:.3f} -> {result['after']:.3f}"
        )
    assert result["after"] < 0.8 * result["before"], (result["before"], result["after"])  # held-out, inference mode
    assert history.val_accuracy[0] > 0.3  # ten classes: chance is 0.1


def test_the_three_fits_take_the_same_first_steps(one_epoch):
    # Same start, first batch and learning rate: the first step's loss is the same and so is the second's
    # (after one update). Later steps drift apart as float32 runs do: at this learning rate PyTorch's own
    # float32 loss differs from its float64 loss by 2e-4 at step 2 and 2% at step 4 (values straddle ReLU
    # kinks differently), so the identical-steps tests above hold the update rule to account instead.
    losses = {framework: np.array(result["history"].step_loss) for framework, result in one_epoch.items()}
    if len(losses) < 2:
        pytest.skip("needs two frameworks")
    reference = losses.get("pt", next(iter(losses.values())))
    for framework, steps in losses.items():
        np.testing.assert_allclose(steps[0], reference[0], rtol=1e-5, err_msg=framework)
        np.testing.assert_allclose(steps[1], reference[1], rtol=1e-3, err_msg=framework)


@requires("tensorflow")
def test_keras_fit_sees_the_shared_batch_order_in_every_epoch():
    import keras
    import tensorflow as tf

    from regnet_core.datasets import ImageSplit
    from regnet_tf.training import training_dataset

    seen = []

    class Recorder(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(tf.reshape(x, [-1, 3]))

        def train_step(self, data):
            seen.append(data[1].numpy().tolist())
            return {"seen": tf.constant(0.0)}

    split = ImageSplit(np.zeros((10, 1, 1, 3), np.float32), np.arange(10))
    model = Recorder()
    model.compile(optimizer="sgd", run_eagerly=True)
    model.fit(training_dataset(split, 3, epochs=3, seed=4), epochs=3, steps_per_epoch=3, shuffle=False, verbose=0)
    assert seen == [batch.tolist() for epoch in range(3) for batch in epoch_batches(10, 3, epoch, seed=4)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_trained_checkpoint_loads_in_the_other_backends_with_equal_logits(one_epoch, digits, framework):
    from regnet_core.parity import compare_arrays

    if framework not in one_epoch:
        pytest.skip(f"{NEEDS[framework]} not installed")
    _, _, _, val = digits
    result = one_epoch[framework]
    checked = []
    for other in FRAMEWORKS:
        if other == framework or other not in one_epoch:
            continue
        if other == "pt":
            from regnet_pt import RegNetForImageClassification, backend

            logits = backend.run(RegNetForImageClassification.from_pretrained(result["dir"]), val.images, False)[
                "logits"
            ]
        elif other == "tf":
            import regnet_tf

            model = regnet_tf.RegNetForImageClassification.from_pretrained(result["dir"])
            logits = np.asarray(model(_layout(val, "tf").images).logits)
        else:
            import regnet_flax
            from regnet_flax.training import predict_logits

            logits = predict_logits(*regnet_flax.from_pretrained(result["dir"]), _layout(val, "flax").images)
        difference = compare_arrays("logits", result["logits"], logits)
        assert difference.passed, (framework, other, difference)
        checked.append(other)
    if not checked:
        pytest.skip("needs two frameworks")


# ----------------------------------------------------------------------------- the example scripts (slow)

EXAMPLES = {"pt": "finetune_pt.py", "tf": "finetune_keras.py", "flax": "finetune_flax.py"}


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_example_reaches_95_percent_and_its_checkpoint_loads_everywhere(tmp_path, framework):
    """The README's claim, untimed: each script's default run reaches >= 95% held out; the others load its output."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from regnet_core.parity import compare_arrays

    for name in (NEEDS[framework], "sklearn", "torch"):
        pytest.importorskip(name)
    script = Path(__file__).resolve().parents[1] / "examples" / EXAMPLES[framework]
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "ckpt"), "--quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = float(re.search(r"held-out accuracy (\d\.\d+)", result.stdout).group(1))
    assert printed >= 0.95, result.stdout
    from regnet_core.preprocess import ImageProcessor

    assert ImageProcessor.from_pretrained(tmp_path / "ckpt") == digits_image_processor()

    from regnet_pt import RegNetForImageClassification
    from regnet_pt.training import predict_logits

    test = load_digits_rgb("test")
    logits = predict_logits(RegNetForImageClassification.from_pretrained(tmp_path / "ckpt"), test.images)
    assert abs(float(np.mean(logits.argmax(-1) == test.labels)) - printed) < 1e-4
    nhwc = np.ascontiguousarray(test.images.transpose(0, 2, 3, 1))
    if importlib.util.find_spec("tensorflow"):
        import regnet_tf

        model = regnet_tf.RegNetForImageClassification.from_pretrained(tmp_path / "ckpt")
        assert compare_arrays("logits", logits, model.predict(nhwc, batch_size=256, verbose=0)).passed
    if importlib.util.find_spec("flax"):
        import regnet_flax
        from regnet_flax.training import predict_logits as flax_logits

        assert compare_arrays(
            "logits", logits, flax_logits(*regnet_flax.from_pretrained(tmp_path / "ckpt"), nhwc)
        ).passed
