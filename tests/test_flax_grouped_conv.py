"""Grouped conv lowerings (regnet_flax.grouped_conv) equal feature_group_count; the auto choice; bfloat16 compute."""

import numpy as np
import pytest

pytest.importorskip("flax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import regnet_flax  # noqa: E402
from regnet_core import build_model_spec, get_config, random_state  # noqa: E402
from regnet_core.backends import get_backend  # noqa: E402
from regnet_flax import grouped_conv as gc  # noqa: E402
from regnet_flax.weights import flatten_variables  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# (batch, height, width, channels, groups, features, kernel, stride)
SHAPES = [
    (2, 9, 9, 24, 3, 24, 3, 1),  # few groups, odd size
    (2, 9, 11, 24, 3, 24, 3, 2),  # stride 2, odd and unequal sizes
    (1, 8, 8, 32, 16, 32, 3, 2),  # many groups of width 2, even size at stride 2
    (3, 7, 5, 12, 12, 24, 3, 1),  # depthwise with two outputs per group
    (2, 6, 6, 16, 1, 8, 3, 2),  # one group: always XLA's dense conv
    (2, 5, 5, 64, 4, 32, 1, 2),  # 1 x 1 grouped, fewer outputs than inputs
    (1, 14, 14, 128, 2, 128, 3, 1),  # regnet-y-040 stage 1 group width, smaller map
]
ALL = (*gc.METHODS, "auto")


def _arrays(shape, seed=0, dtype=np.float32):
    batch, height, width, channels, groups, features, kernel, _ = shape
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, height, width, channels)).astype(dtype)
    k = rng.normal(size=(kernel, kernel, channels // groups, features)) / np.sqrt(kernel * kernel * channels / groups)
    return jnp.asarray(x), jnp.asarray(k.astype(dtype))


def _reference(x, k, shape):
    *_, groups, _, kernel, stride = shape
    pad = kernel // 2
    return lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _lowered(method, shape):
    *_, groups, _, kernel, stride = shape
    pad = kernel // 2
    return jax.jit(lambda x, k: gc.grouped_conv(x, k, (stride, stride), ((pad, pad), (pad, pad)), groups, method))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", ALL)
def test_every_lowering_equals_feature_group_count(method, shape):
    x, k = _arrays(shape)
    want = np.asarray(_reference(x, k, shape))
    got = np.asarray(_lowered(method, shape)(x, k))
    assert got.shape == want.shape and got.dtype == np.float32
    # float32 rounding only (summation order differs): far below the parity tests' 1e-5 relative.
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=["stride2", "depthwise"])
@pytest.mark.parametrize("method", ALL)
def test_every_lowering_has_the_same_gradients(method, shape):
    x, k = _arrays(shape, seed=1)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=_reference(x, k, shape).shape).astype(np.float32))
    lowered = _lowered(method, shape)

    def loss(fn):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) * cotangent), argnums=(0, 1)))

    want = loss(lambda x, k: _reference(x, k, shape))(x, k)
    got = loss(lowered)(x, k)
    for g, w in zip(got, want, strict=True):
        assert np.abs(np.asarray(g) - np.asarray(w)).max() <= 2e-6 * np.abs(np.asarray(w)).max()


@pytest.mark.parametrize("method", gc.METHODS)
def test_bfloat16_inputs_stay_bfloat16(method):
    shape = SHAPES[0]
    x, k = _arrays(shape)
    got = _lowered(method, shape)(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    want = np.asarray(_reference(x, k, shape))
    assert np.abs(np.asarray(got, np.float32) - want).max() <= 3e-2 * np.abs(want).max()


def _zoo_grouped_convs(name):
    spec = build_model_spec(get_config(name))
    return {(b.bottleneck_width, b.groups) for stage in spec.stages for b in stage.blocks}


@pytest.mark.parametrize("name", ["regnet-y-040", "regnet-x-002", "regnet-y-032", "regnet-x-320"])
def test_the_automatic_choice_is_a_valid_method(name):
    for channels, groups in _zoo_grouped_convs(name):
        method = gc.choose_method(channels, channels, groups)
        assert method in gc.METHODS
        assert (method == "xla") == (groups == 1)
    assert gc.choose_method(64, 64, 1) == "xla"
    assert gc.choose_method(24, 24, 3) == "dense"  # regnet-x-002's first stage: few channels
    assert gc.choose_method(512, 512, 8) == "scan"


def _grouped_counts(text):
    """feature_group_count of each convolution in lowered StableHLO text."""
    import re

    return [int(n) for n in re.findall(r"feature_group_count = (\d+)", text)]


def test_auto_keeps_xla_conv_off_cpu_and_replaces_it_on_cpu():
    shape = (1, 8, 8, 64, 4, 64, 3, 1)
    x, k = _arrays(shape)
    fn = _lowered("auto", shape)
    assert set(_grouped_counts(fn.lower(x, k).as_text())) == {1}  # CPU: dense convs only
    from jax import export as jax_export

    exported = jax_export.export(fn, platforms=("cuda",))(x, k)
    assert 4 in _grouped_counts(exported.mlir_module())


def test_method_is_forced_by_context_or_environment(monkeypatch):
    monkeypatch.delenv(gc.ENV_VAR, raising=False)
    assert gc.configured_method() == "auto"
    monkeypatch.setenv(gc.ENV_VAR, "XLA")
    assert gc.configured_method() == "xla"
    with gc.grouped_conv_method("im2col"):
        assert gc.configured_method() == "im2col"  # the context wins over the environment
        with gc.grouped_conv_method("auto"):
            assert gc.configured_method() == "auto"
    assert gc.configured_method() == "xla"
    shape = SHAPES[0]
    x, k = _arrays(shape)
    forced = _lowered(None, shape).lower(x, k).as_text()
    assert 3 in _grouped_counts(forced)
    monkeypatch.setenv(gc.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown grouped conv method 'fastest'"):
        gc.configured_method()
    with pytest.raises(ValueError, match="unknown grouped conv method"):
        gc.grouped_conv_method("nope").__enter__()


def test_shapes_that_do_not_fit_are_refused():
    x = jnp.zeros((1, 4, 4, 10))
    with pytest.raises(ValueError, match="do not fit"):
        gc.grouped_conv(x, jnp.zeros((3, 3, 5, 6)), groups=3)


def _tiny(layer_type="y", dtype=None):
    config = tiny_config(layer_type)
    state = random_state(build_model_spec(config), 0, True)
    return regnet_flax.from_canonical(config, state, True, dtype=dtype)


def _images(batch=2, size=32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32))


def test_every_lowering_gives_the_models_outputs():
    module, variables = _tiny("y")
    x = _images()
    outputs = {}
    for method in ALL:
        with gc.grouped_conv_method(method):
            outputs[method] = jax.jit(module.apply)(variables, x)  # a new jit traces under the forced method
    want = outputs["xla"]
    for method, got in outputs.items():
        assert np.abs(got.logits - want.logits).max() <= 1e-5 * np.abs(want.logits).max(), method
        assert (
            np.abs(got.last_hidden_state - want.last_hidden_state).max() <= 1e-5 * np.abs(want.last_hidden_state).max()
        ), method


def test_bfloat16_computation_is_close_to_float32_and_returns_float32_logits():
    module32, variables32 = _tiny("y")
    module16, variables16 = _tiny("y", dtype="bfloat16")
    assert module32.dtype == jnp.float32 and module16.dtype == jnp.bfloat16
    # Parameters stay float32 whatever the computation dtype: checkpoints are unchanged.
    for path, value in flatten_variables(variables16).items():
        assert value.dtype == jnp.float32, path
    x = _images(4)
    want = module32.apply(variables32, x, output_hidden_states=True)
    got = jax.jit(module16.apply, static_argnames="output_hidden_states")(variables16, x, output_hidden_states=True)
    assert got.logits.dtype == jnp.float32 and got.pooler_output.dtype == jnp.float32
    assert got.last_hidden_state.dtype == jnp.bfloat16
    assert all(h.dtype == jnp.bfloat16 for h in got.hidden_states)
    assert want.logits.dtype == jnp.float32 and want.last_hidden_state.dtype == jnp.float32
    # Observed about 0.3% of max |logit| (random weights, seeds 0 and 1); bfloat16 keeps 8 bits.
    error = float(jnp.abs(got.logits - want.logits).max() / jnp.abs(want.logits).max())
    assert error <= 2e-2
    assert not np.array_equal(np.asarray(got.logits), np.asarray(want.logits))  # it really ran in bfloat16


def test_bfloat16_training_step_runs_with_float32_statistics():
    module, variables = _tiny("x", dtype=jnp.bfloat16)
    x = _images(4)

    def loss(params):
        out, updates = module.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"], labels=jnp.array([0, 1, 2, 3])
        )
        return out.loss, updates

    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(float(value))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(updates))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("dtype", ["bfloat16", jnp.bfloat16, np.dtype("float32"), None])
def test_dtype_is_accepted_by_every_entry_point(dtype):
    config = tiny_config("x")
    expected = jnp.float32 if dtype is None else jnp.dtype(dtype)
    state = random_state(build_model_spec(config), 0, True)
    module, _ = get_backend("flax").from_canonical(config, state, True, dtype=dtype)
    assert module.dtype == expected
    module, _ = regnet_flax.backbone_from_canonical(config, state, dtype=dtype)
    assert module.dtype == expected


def test_init_takes_a_dtype_and_a_bad_one_is_refused():
    module, variables = regnet_flax.init(tiny_config("x"), dtype="bfloat16")
    assert module.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    assert regnet_flax.RegNetForImageClassification(tiny_config("x")).dtype == jnp.float32  # the default
    with pytest.raises(ValueError, match="float dtype"):
        regnet_flax.init(tiny_config("x"), dtype="int32")
