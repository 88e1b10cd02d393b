"""Bad pixel values get PixelValuesError in all three backends; the policy of regnet_core.inputs, pinned.

Rank, channels, the other layout, integer / bool dtypes, empty batches and zero-sized images
are refused; float16, bfloat16 and float64 are cast to the model's dtype (same logits as
float32 holding the same values); NaN propagates; images smaller than the total stride give
1 x 1 maps; TensorFlow keeps finite BatchNorm statistics and weights when ``fit`` meets an empty
batch (a dataset's, whose size is unknown when traced).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from regnet_core.errors import PixelValuesError
from regnet_core.inputs import check_pixel_values
from tests.helpers import requires, tensorflow_onednn_on_avx512, tiny_config

CONFIG = tiny_config("y", num_labels=3)  # 3 stages: stem + 3 stride-2 steps, total stride 16
STRIDE_STEPS = 1 + len(CONFIG.hidden_sizes)


def _batch(batch=2, size=32, layout="NCHW", seed=0):
    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _side(size: int, steps: int) -> int:
    """Side after ``steps`` stride-2 3x3 convolutions with padding 1 (the independent oracle of the docstring)."""
    for _ in range(steps):
        size = (size + 2 - 3) // 2 + 1
    return size


# ----------------------------------------------------------------------------- the core rule
@pytest.mark.parametrize(
    "shape, floating, dtype, message",
    [
        ((3, 32, 32), True, "float32", "4-D NCHW batch"),
        ((1, 2, 3, 32, 32), True, "float32", "got a 5-D tensor"),
        ((2, 4, 32, 32), True, "float32", "3 channels on axis 1"),
        ((2, 32, 32, 3), True, "float32", "looks like an NHWC batch"),
        ((2, 3, 32, 32), False, "uint8", "floating point, got dtype uint8"),
        ((2, 3, 32, 32), False, "torch.bool", "floating point, got dtype torch.bool"),
        ((2, 3, 32, 32), True, "float8_e4m3fn", "one of float16, bfloat16, float32, float64"),
        ((2, 3, 32, 32), False, "complex64", "floating point"),
        ((0, 3, 32, 32), True, "float32", "empty batch"),
        ((2, 3, 0, 32), True, "float32", "height or width 0"),
    ],
)
def test_core_rule_refuses_with_our_error(shape, floating, dtype, message):
    with pytest.raises(PixelValuesError, match=message) as error:
        check_pixel_values(shape, floating, dtype, 3, "NCHW")
    assert isinstance(error.value, ValueError)


def test_core_rule_points_integer_images_to_the_image_processor():
    with pytest.raises(PixelValuesError, match="ImageProcessor"):
        check_pixel_values((1, 3, 8, 8), False, "uint8", 3, "NCHW")


def test_core_rule_names_the_transpose_for_nhwc_backends():
    with pytest.raises(
        PixelValuesError, match=r"looks like an NCHW batch, expected NHWC \(transpose with \(0, 2, 3, 1\)\)"
    ):
        check_pixel_values((2, 3, 32, 32), True, "float32", 3, "NHWC")


def test_unknown_sizes_pass_the_static_check():
    check_pixel_values((None, None, None, 3), True, "float32", 3, "NHWC")


# ----------------------------------------------------------------------------- backends
class PT:
    layout = "NCHW"

    def __init__(self):
        import torch

        from regnet_pt import RegNetForImageClassification

        torch.manual_seed(0)
        self.torch = torch
        self.model = RegNetForImageClassification(CONFIG).eval()

    def tensor(self, array, dtype=None):
        tensor = self.torch.from_numpy(np.ascontiguousarray(array))
        return tensor if dtype is None else tensor.to(getattr(self.torch, dtype))

    def logits(self, array, dtype=None, train=False):
        self.model.train(train)
        try:
            with self.torch.no_grad():
                out = self.model(self.tensor(array, dtype), output_hidden_states=True)
        finally:
            self.model.eval()
        self.hidden = [tuple(h.shape[2:]) for h in out.hidden_states]
        return out.logits.float().numpy()


class TF:
    layout = "NHWC"

    def __init__(self):
        import tensorflow as tf

        from regnet_tf import RegNetForImageClassification

        self.tf = tf
        self.model = RegNetForImageClassification(CONFIG)

    def logits(self, array, dtype=None, train=False):
        x = self.tf.constant(array) if dtype is None else self.tf.cast(self.tf.constant(array), dtype)
        out = self.model(x, output_hidden_states=True, training=train)
        self.hidden = [tuple(h.shape[1:3]) for h in out["hidden_states"]]
        return np.asarray(out["logits"], np.float32)


class Flax:
    layout = "NHWC"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        import regnet_flax
        from regnet_core.specs import build_model_spec
        from regnet_core.weights import random_state

        self.jnp = jnp
        # Random canonical weights rather than regnet_flax.init: its compile takes a minute on a loaded CPU.
        state = random_state(build_model_spec(CONFIG), seed=0)
        self.module, self.variables = regnet_flax.from_canonical(CONFIG, state)
        self.apply = jax.jit(self.module.apply, static_argnames=("train", "output_hidden_states", "mutable"))

    def logits(self, array, dtype=None, train=False):
        x = self.jnp.asarray(array) if dtype is None else self.jnp.asarray(array).astype(dtype)
        if train:
            out, _ = self.apply(self.variables, x, train=True, output_hidden_states=True, mutable=("batch_stats",))
        else:
            out = self.apply(self.variables, x, output_hidden_states=True)
        self.hidden = [tuple(h.shape[1:3]) for h in out.hidden_states]
        return np.asarray(out.logits, np.float32)


BACKENDS = {
    "pt": pytest.param(PT, marks=requires("torch"), id="pt"),
    "tf": pytest.param(TF, marks=requires("tensorflow"), id="tf"),
    "flax": pytest.param(Flax, marks=requires("flax"), id="flax"),
}
_BUILT: dict[type, object] = {}


@pytest.fixture(params=list(BACKENDS.values()))
def backend(request):
    if request.param not in _BUILT:
        _BUILT[request.param] = request.param()
    return _BUILT[request.param]


def _other_layout(array, layout):
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2) if layout == "NHWC" else array.transpose(0, 2, 3, 1))


def test_wrong_rank_channels_and_layout(backend):
    x = _batch(layout=backend.layout)
    with pytest.raises(PixelValuesError, match="4-D"):
        backend.logits(x[0])
    four = np.concatenate(
        [x, x[..., :1] if backend.layout == "NHWC" else x[:, :1]], axis=-1 if backend.layout == "NHWC" else 1
    )
    with pytest.raises(PixelValuesError, match="must have 3 channels"):
        backend.logits(four)
    other = "NHWC" if backend.layout == "NCHW" else "NCHW"
    with pytest.raises(PixelValuesError, match=f"looks like an {other} batch, expected {backend.layout}"):
        backend.logits(_other_layout(x, backend.layout))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_and_boolean_batches_are_refused(backend, dtype):
    x = (_batch(layout=backend.layout) > 0).astype(dtype)
    with pytest.raises(PixelValuesError, match=f"floating point, got dtype (torch\\.)?{re.sub(r'[0-9]+$', '', dtype)}"):
        backend.logits(x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_float_dtypes_are_cast_to_the_model_dtype(backend, dtype):
    import ml_dtypes

    x = _batch(layout=backend.layout)
    same_values = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).astype(np.float32)
    expected = backend.logits(same_values)
    got = backend.logits(x, dtype=dtype)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    # The cast happens before the first layer: the float32 model sees exactly the same values.
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_empty_batches_and_empty_images_are_refused(backend, train):
    x = _batch(layout=backend.layout)
    with pytest.raises(PixelValuesError, match="empty batch"):
        backend.logits(x[:0], train=train)
    empty_rows = x[:, :, :0] if backend.layout == "NCHW" else x[:, :0]
    with pytest.raises(PixelValuesError, match="height or width 0"):
        backend.logits(empty_rows, train=train)


def test_non_finite_values_propagate(backend):
    x = _batch(layout=backend.layout)
    x[0].flat[0] = np.nan
    logits = backend.logits(x)
    if backend.layout == "NHWC" and not np.isnan(logits[0]).all() and tensorflow_onednn_on_avx512():
        pytest.xfail("TensorFlow's oneDNN fused convolution + bias + ReLU turns NaN into 0 on AVX-512")
    assert np.isnan(logits[0]).all()  # the NaN image's logits are NaN (global pooling spreads it)
    assert np.isfinite(logits[1]).all()  # the other image is untouched: nothing mixes across the batch in eval


@pytest.mark.parametrize("size", [1, 5, 17])
def test_images_smaller_than_the_total_stride_give_small_maps(backend, size):
    logits = backend.logits(_batch(size=size, layout=backend.layout))
    assert logits.shape == (2, 3) and np.isfinite(logits).all()
    expected = [(_side(size, step), _side(size, step)) for step in range(1, STRIDE_STEPS + 1)]
    assert backend.hidden == expected
    if size < 2 ** (STRIDE_STEPS - 1):
        assert expected[-1] == (1, 1)


@requires("torch")
def test_pytorch_refuses_numpy_input_by_name():
    model = _BUILT.setdefault(PT, PT())
    with pytest.raises(PixelValuesError, match="must be a torch.Tensor, got ndarray"):
        model.model(_batch())


@requires("flax")
def test_flax_refuses_under_jit_too():
    import jax

    flax = _BUILT.setdefault(Flax, Flax())
    apply = jax.jit(flax.module.apply)
    with pytest.raises(PixelValuesError, match="empty batch"):
        apply(flax.variables, np.zeros((0, 32, 32, 3), np.float32))
    with pytest.raises(PixelValuesError, match="floating point, got dtype int32"):
        apply(flax.variables, np.zeros((1, 32, 32, 3), np.int32))


@requires("tensorflow")
def test_tensorflow_fit_with_an_empty_batch_keeps_finite_statistics():
    """A dataset batch of size 0 (unknown when traced) used to write NaN into BatchNorm's moving statistics."""
    import tensorflow as tf

    from regnet_tf import RegNetForImageClassification

    model = RegNetForImageClassification(CONFIG)
    model.compile(optimizer="sgd")
    moving = [v for v in model.weights if "moving" in v.path]
    before = [v.numpy().copy() for v in moving]
    x, y = _batch(batch=4, layout="NHWC"), np.arange(4, dtype=np.int64) % 3
    empty = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).map(lambda a, b: (a[:0], b[:0]))
    try:
        model.fit(empty, epochs=1, verbose=0)
    except tf.errors.InvalidArgumentError as error:
        if "must be broadcastable" in str(error) and tensorflow_onednn_on_avx512():
            pytest.xfail(
                "under TensorFlow's oneDNN on AVX-512 an empty batch reaches BatchNorm with the wrong channels"
            )
        raise
    for old, variable in zip(before, moving, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old)
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    # A real batch afterwards still trains and moves the statistics.
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(2), epochs=1, verbose=0)
    assert any(not np.array_equal(v.numpy(), old) for v, old in zip(moving, before, strict=True))
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


@requires("tensorflow")
def test_tensorflow_eager_training_on_an_empty_batch_is_refused():
    tf_backend = _BUILT.setdefault(TF, TF())
    moving = [v for v in tf_backend.model.weights if "moving" in v.path]
    before = [v.numpy().copy() for v in moving]
    with pytest.raises(PixelValuesError, match="empty batch"):
        tf_backend.logits(_batch(layout="NHWC")[:0], train=True)
    for old, variable in zip(before, moving, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old)


@requires("tensorflow")
def test_tensorflow_keeps_our_error_type_inside_tf_function():
    """AutoGraph re-raises only exception types it can rebuild from a message; ours are among them."""
    import tensorflow as tf

    tf_backend = _BUILT.setdefault(TF, TF())
    function = tf.function(
        lambda x: tf_backend.model(x)["logits"], input_signature=[tf.TensorSpec((None, 32, 32), tf.float32)]
    )
    with pytest.raises(PixelValuesError, match="4-D NHWC batch"):
        function.get_concrete_function()
