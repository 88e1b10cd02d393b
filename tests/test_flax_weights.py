"""Canonical <-> Flax variables: names and layouts derived from the table, exact, strict."""

import numpy as np
import pytest

pytest.importorskip("flax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from regnet_core import (  # noqa: E402
    CheckpointMismatchError,
    build_model_spec,
    get_config,
    get_entry,
    list_models,
    parameter_table,
    random_state,
)
from regnet_flax.modeling import model_class  # noqa: E402
from regnet_flax.weights import flatten_variables, from_native, native_table, params_to_canonical, to_native  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# Non-SEER zoo models up to regnet-y-320; the three largest take seconds each and ~2 GB to draw and copy.
FAST_ROUND_TRIP_PARAMS = 60e6
ROUND_TRIP_MODELS = [
    pytest.param(name, marks=pytest.mark.slow)
    if sum(int(np.prod(t.shape)) for t in parameter_table(build_model_spec(get_config(name)))) > FAST_ROUND_TRIP_PARAMS
    else name
    for name in list_models()
    if "seer" not in name
]


def test_native_names_follow_the_canonical_ones():
    table = native_table(build_model_spec(tiny_config("y")))
    for path, shape in {
        "params/regnet/embedder/embedder/convolution/kernel": (3, 3, 3, 8),
        "params/regnet/embedder/embedder/normalization/scale": (8,),
        "batch_stats/regnet/embedder/embedder/normalization/var": (8,),
        "params/regnet/encoder/stages_1/layers_0/shortcut/convolution/kernel": (1, 1, 8, 16),
        "params/regnet/encoder/stages_1/layers_1/layer_1/convolution/kernel": (3, 3, 8, 16),  # 2 groups of 8
        "params/regnet/encoder/stages_1/layers_1/layer_2/attention_0/bias": (4,),
        "params/regnet/encoder/stages_1/layers_1/layer_3/normalization/bias": (16,),
        "params/classifier_1/kernel": (24, 5),
    }.items():
        assert table[path] == shape, path
    assert not any("num_batches_tracked" in path for path in table)
    trunk = native_table(build_model_spec(tiny_config("x")), with_head=False)
    assert "params/encoder/stages_0/layers_0/layer_2/convolution/kernel" in trunk
    assert not any(path.startswith("params/classifier") for path in trunk)


@pytest.mark.parametrize("name", list_models())
def test_abstract_init_of_every_zoo_model_matches_the_native_table(name):
    config = get_config(name)
    with_head = not get_entry(name).is_trunk
    module = model_class(with_head)(config)
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), image)  # traces only: nothing is allocated
    got = {path: tuple(value.shape) for path, value in flatten_variables(shapes).items()}
    assert got == native_table(build_model_spec(config), with_head)


@pytest.mark.parametrize("name", ROUND_TRIP_MODELS)
def test_canonical_to_native_and_back_is_bit_exact(name):
    spec = build_model_spec(get_config(name))
    state = random_state(spec, seed=3)
    variables = to_native(state, spec)
    assert {path: value.shape for path, value in flatten_variables(variables).items()} == native_table(spec)
    back = from_native(variables, spec)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key


def test_layouts_are_hwio_and_in_out():
    spec = build_model_spec(tiny_config("y"))
    state = random_state(spec)
    variables = to_native(state, spec)
    canonical = state["regnet.encoder.stages.2.layers.1.layer.1.convolution.weight"]  # (out, in/groups, kh, kw)
    native = variables["params"]["regnet"]["encoder"]["stages_2"]["layers_1"]["layer_1"]["convolution"]["kernel"]
    assert native.shape == (3, 3, canonical.shape[1], canonical.shape[0])
    assert native[2, 0, 5, 17] == canonical[17, 5, 2, 0]
    dense = state["classifier.1.weight"]
    assert np.array_equal(variables["params"]["classifier_1"]["kernel"], dense.T)
    bn = "regnet.encoder.stages.0.layers.0.layer.0.normalization"
    native_bn = variables["batch_stats"]["regnet"]["encoder"]["stages_0"]["layers_0"]["layer_0"]["normalization"]
    assert np.array_equal(native_bn["mean"], state[f"{bn}.running_mean"])
    assert np.array_equal(native_bn["var"], state[f"{bn}.running_var"])


def test_num_batches_tracked_comes_back_as_int64_zero():
    spec = build_model_spec(tiny_config("x"))
    state = random_state(spec)
    state["regnet.embedder.embedder.normalization.num_batches_tracked"] = np.array(7, np.int64)
    back = from_native(to_native(state, spec), spec)
    counter = back["regnet.embedder.embedder.normalization.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64 and counter == 0


def test_classifier_weights_load_into_a_trunk():
    config = tiny_config("y")
    spec = build_model_spec(config)
    state = random_state(spec)
    trunk = to_native(state, spec, with_head=False)
    assert "classifier_1" not in trunk["params"] and "regnet" not in trunk["params"]
    back = from_native(trunk, spec, with_head=False)
    assert all(np.array_equal(back[name], state["regnet." + name]) for name in back)


def test_jax_and_bfloat16_variables_convert_to_float32_numpy():
    spec = build_model_spec(tiny_config("x"))
    state = random_state(spec)
    variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.bfloat16), to_native(state, spec))
    back = from_native(variables, spec)
    name = "regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"
    assert back[name].dtype == np.float32 and back[name].flags.writeable
    np.testing.assert_allclose(back[name], state[name], rtol=1e-2, atol=1e-2)


def test_a_mismatched_tree_reports_every_problem_at_once():
    spec = build_model_spec(tiny_config("y"))
    variables = to_native(random_state(spec), spec)
    stage = variables["params"]["regnet"]["encoder"]["stages_1"]["layers_1"]
    del stage["layer_3"]["normalization"]["scale"]
    stage["layer_1"]["convolution"]["kernel"] = np.zeros((3, 3, 16, 16), np.float32)
    variables["params"]["extra"] = {"kernel": np.zeros(3)}
    del variables["batch_stats"]["regnet"]["embedder"]
    with pytest.raises(CheckpointMismatchError) as error:
        from_native(variables, spec, context="in test")
    message = str(error.value)
    assert "in test" in message
    assert "3 missing: " in message
    for path in (
        "params/regnet/encoder/stages_1/layers_1/layer_3/normalization/scale",
        "batch_stats/regnet/embedder/embedder/normalization/mean",
        "batch_stats/regnet/embedder/embedder/normalization/var",
    ):
        assert path in message
    assert "1 unexpected: params/extra/kernel" in message
    assert "layer_1/convolution/kernel (expected (3, 3, 8, 16), got (3, 3, 16, 16))" in message


def test_a_wrong_canonical_state_is_rejected_with_every_name():
    spec = build_model_spec(tiny_config("x"))
    state = random_state(spec)
    del state["classifier.1.bias"]
    state["regnet.stray.weight"] = np.zeros(2)
    with pytest.raises(CheckpointMismatchError, match="missing: classifier.1.bias.*unexpected: regnet.stray.weight"):
        to_native(state, spec)


def test_parameter_gradients_map_to_trainable_canonical_names():
    spec = build_model_spec(tiny_config("y"))
    state = random_state(spec)
    params = to_native(state, spec)["params"]
    canonical = params_to_canonical(params, spec)
    trainable = [
        t.name
        for t in parameter_table(spec)
        if not t.name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert list(canonical) == trainable
    assert all(np.array_equal(canonical[name], state[name]) for name in trainable)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        params_to_canonical({"regnet": params["regnet"]}, spec)


def test_native_arrays_never_share_memory_with_the_canonical_state():
    # JAX on CPU may wrap a numpy buffer without copying: a shared buffer would let a caller
    # who reuses its canonical arrays change a loaded model's weights.
    spec = build_model_spec(tiny_config("y"))
    state = random_state(spec)
    for path, value in flatten_variables(to_native(state, spec)).items():
        assert not any(np.shares_memory(value, original) for original in state.values()), path
