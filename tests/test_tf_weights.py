"""Canonical <-> Keras weights: names and layouts derived from the specs, bit-exact both ways, strict.

The mapping is numpy-only, so these tests run without TensorFlow (except the live-model one).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core import CheckpointMismatchError, build_model_spec, get_config, list_models, random_state
from regnet_core.weights import BN_COUNT, CONV, DENSE, count_parameters, parameter_table
from regnet_tf import weights as native
from tests.helpers import tiny_config

UP_TO_Y320 = list_models()[: list_models().index("regnet-y-320") + 1]
LARGE = 35e6  # parameters; above this the numpy round trip takes over a second per model


def _zoo_params(names):
    params = []
    for name in names:
        large = count_parameters(parameter_table(build_model_spec(get_config(name)))) > LARGE
        params.append(pytest.param(name, marks=pytest.mark.slow) if large else name)
    return params


def test_names_and_layouts_of_one_block():
    spec = build_model_spec(tiny_config("y"))
    table = native.native_table(spec)
    assert table["regnet/stem/conv/kernel"] == (3, 3, 3, 8)
    assert table["regnet/stage_1/block_0/b/conv/kernel"] == (3, 3, 8, 16)  # HWIO, I = 16 / 2 groups
    assert table["regnet/stage_1/block_0/projection/bn/moving_variance"] == (16,)
    assert table["regnet/stage_1/block_1/se/reduce/kernel"] == (1, 1, 16, 4)
    assert table["regnet/stage_1/block_1/se/expand/bias"] == (16,)
    assert table["classifier/kernel"] == (24, 5)
    names = native.canonical_names(spec)
    assert (
        names["regnet/stage_1/block_0/b/conv/kernel"] == "regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"
    )
    assert (
        names["regnet/stage_1/block_1/se/reduce/kernel"]
        == "regnet.encoder.stages.1.layers.1.layer.2.attention.0.weight"
    )
    assert names["regnet/stage_1/block_1/c/bn/gamma"] == "regnet.encoder.stages.1.layers.1.layer.3.normalization.weight"
    assert names["classifier/bias"] == "classifier.1.bias"
    trunk = native.native_table(spec, with_head=False)
    assert "stem/conv/kernel" in trunk and not any(p.startswith(("regnet/", "classifier")) for p in trunk)


def test_conv_and_dense_values_are_transposed_not_reshaped():
    spec = build_model_spec(tiny_config("x"))
    state = random_state(spec, 0)
    arrays = native.to_native(state, spec)
    conv = state["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]  # (out, in/groups, kh, kw)
    kernel = arrays["regnet/stage_1/block_0/b/conv/kernel"]  # (kh, kw, in/groups, out)
    assert kernel[2, 0, 5, 11] == conv[11, 5, 2, 0]
    assert arrays["classifier/kernel"][7, 3] == state["classifier.1.weight"][3, 7]
    np.testing.assert_array_equal(
        arrays["regnet/stem/bn/moving_variance"], state["regnet.embedder.embedder.normalization.running_var"]
    )


@pytest.mark.parametrize("name", list_models())
def test_native_table_is_the_canonical_table_in_keras_layout(name):
    for with_head in (True, False):
        spec = build_model_spec(get_config(name))
        canonical = [t for t in parameter_table(spec, with_head) if t.kind != BN_COUNT]
        table = native.native_table(spec, with_head)
        names = native.canonical_names(spec, with_head)
        assert len(table) == len(canonical) == len(set(names.values()))
        for (path, shape), tensor in zip(table.items(), canonical, strict=True):
            assert names[path] == tensor.name
            if tensor.kind == CONV:
                out_channels, in_channels, height, width = tensor.shape
                assert shape == (height, width, in_channels, out_channels)
            elif tensor.kind == DENSE:
                assert shape == tensor.shape[::-1]
            else:
                assert shape == tensor.shape


@pytest.mark.parametrize("name", _zoo_params(UP_TO_Y320))
def test_canonical_to_native_to_canonical_is_bit_exact(name):
    spec = build_model_spec(get_config(name))
    state = random_state(spec, seed=1)
    back = native.from_native(native.to_native(state, spec), spec)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_round_trip_through_a_live_keras_model_is_bit_exact(layer_type):
    pytest.importorskip("tensorflow")
    from regnet_tf import RegNetForImageClassification

    config = tiny_config(layer_type)
    state = random_state(build_model_spec(config), 2)
    model = RegNetForImageClassification(config)
    native.assign_canonical(model, state)
    back = native.read_canonical(model)
    assert all(np.array_equal(back[k], v) for k, v in state.items())
    counter = back["regnet.embedder.embedder.normalization.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == () and counter == 0


def test_from_native_reports_every_problem_at_once():
    spec = build_model_spec(tiny_config("y"))
    arrays = native.to_native(random_state(spec, 0), spec)
    del arrays["regnet/stem/bn/gamma"]
    arrays["regnet/stage_9/block_0/a/conv/kernel"] = np.zeros(3, np.float32)
    arrays["classifier/kernel"] = np.zeros((5, 24), np.float32)  # PyTorch's layout by mistake
    with pytest.raises(CheckpointMismatchError) as error:
        native.from_native(arrays, spec)
    assert error.value.missing == ["regnet/stem/bn/gamma"]
    assert error.value.unexpected == ["regnet/stage_9/block_0/a/conv/kernel"]
    assert error.value.mismatched == ["classifier/kernel (expected (24, 5), got (5, 24))"]


def test_to_native_is_strict_about_the_canonical_state():
    spec = build_model_spec(tiny_config("x"))
    state = random_state(spec, 0)
    state["regnet.encoder.stages.0.layers.0.layer.0.convolution.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    del state["classifier.1.bias"]
    with pytest.raises(CheckpointMismatchError, match="1 missing: classifier.1.bias; 1 with the wrong shape"):
        native.to_native(state, spec)


def test_the_mapping_imports_without_tensorflow():
    code = (
        "import sys, regnet_tf.weights; print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
