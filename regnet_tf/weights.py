"""Keras <-> canonical weights: names and layouts only, numpy-level, derived from the specs.

Native names are Keras variable paths relative to the model (``model.path``), built from
the layer names of regnet_core.formats.keras_native (the one place of the naming rules,
shared with the .weights.h5 reader and writer); modeling.py builds its layers with the
same names, so the native table and a built model's variables cannot disagree (a test
checks every zoo model).

    regnet.encoder.stages.1.layers.0.layer.1.convolution.weight  (out, in/groups, kh, kw)
    regnet/stage_1/block_0/b/conv/kernel                         (kh, kw, in/groups, out)

This module imports numpy and regnet_core only; the functions that touch a live Keras
model import TensorFlow lazily, so conversions work without a framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from regnet_core.formats.keras_native import (
    BN_LAYER,
    CLASSIFIER,
    CONV_A,
    CONV_B,
    CONV_C,
    CONV_LAYER,
    PROJECTION,
    SE_EXPAND,
    SE_LAYER,
    SE_REDUCE,
    STEM,
    TRUNK,
    VARIABLE_NAMES,
    block_name,
    canonical_names,
    module_paths,
    native_pairs,
    native_shape,
    native_table,
    stage_name,
)
from regnet_core.specs import ModelSpec
from regnet_core.weights import (
    BN_COUNT,
    TensorSpec,
    check_state,
    from_channels_last,
    parameter_table,
    prepare_state,
    to_channels_last,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

# The native naming rules (layer names, module paths, the native table) live in the core,
# regnet_core.formats.keras_native, where the Keras file reader and writer use them too;
# modeling.py builds its layers with these names. Re-exported here for the backend's users.
__all__ = [
    "BN_LAYER",
    "CLASSIFIER",
    "CONV_A",
    "CONV_B",
    "CONV_C",
    "CONV_LAYER",
    "PROJECTION",
    "SE_EXPAND",
    "SE_LAYER",
    "SE_REDUCE",
    "STEM",
    "TRUNK",
    "VARIABLE_NAMES",
    "assign_canonical",
    "block_name",
    "canonical_gradients",
    "canonical_names",
    "check_native",
    "from_native",
    "model_variables",
    "module_paths",
    "native_shape",
    "native_table",
    "read_canonical",
    "relative_path",
    "stage_name",
    "to_native",
]


def to_native(
    state: Mapping[str, np.ndarray], spec: ModelSpec, with_head: bool = True, *, context: str = ""
) -> dict[str, np.ndarray]:
    """Canonical numpy weights -> {native path: Keras-layout array}, strictly (see core prepare_state)."""
    _, prepared = prepare_state(state, spec, with_head=with_head, context=context)
    return {
        path: to_channels_last(prepared[tensor.name], tensor.kind) for tensor, path in native_pairs(spec, with_head)
    }


def from_native(native: Mapping[str, np.ndarray], spec: ModelSpec, with_head: bool = True) -> dict[str, np.ndarray]:
    """{native path: Keras-layout array} -> canonical numpy weights in table order (num_batches_tracked as 0)."""
    check_native(native, spec, with_head)
    paths = {tensor.name: path for tensor, path in native_pairs(spec, with_head)}
    state: dict[str, np.ndarray] = {}
    for tensor in parameter_table(spec, with_head):
        if tensor.kind == BN_COUNT:  # Keras keeps no batch counter; transformers expects the buffer
            state[tensor.name] = np.zeros((), np.int64)
        else:
            value = from_channels_last(np.asarray(native[paths[tensor.name]]), tensor.kind)
            state[tensor.name] = value.astype(tensor.dtype, copy=False)
    return state


def check_native(native: Mapping[str, Any], spec: ModelSpec, with_head: bool, context: str = "") -> None:
    """Raise CheckpointMismatchError unless ``native`` has exactly the native table's names and shapes."""
    table = [
        TensorSpec(path, shape, "native", path.rsplit("/", 1)[0])
        for path, shape in native_table(spec, with_head).items()
    ]
    check_state({name: _Shaped(value) for name, value in native.items()}, table, context)


class _Shaped:
    """Something with a ``shape`` that np.shape reads without copying a Keras variable to host memory."""

    def __init__(self, value: Any) -> None:
        self.shape = tuple(int(d) for d in value.shape)


# ----------------------------------------------------------------------------- live Keras models


def relative_path(model: keras.Model, variable: Any) -> str:
    """A variable's path relative to the model that holds it (``regnet/stem/conv/kernel``)."""
    prefix = f"{model.path}/" if model.path else ""
    path = variable.path
    if not path.startswith(prefix):
        raise ValueError(f"variable {path!r} is not under the model's path {model.path!r}")
    return path[len(prefix) :]


def model_variables(model: keras.Model) -> dict[str, Any]:
    """{native path: Keras variable} of a built RegNet Keras model (its weights, not optimizer state)."""
    variables: dict[str, Any] = {}
    for variable in model.weights:
        path = relative_path(model, variable)
        if path in variables:
            raise ValueError(f"two variables share the path {path!r}")
        variables[path] = variable
    return variables


def assign_canonical(
    model: keras.Model,
    state: Mapping[str, np.ndarray],
    *,
    reinit_head: bool = False,
    context: str = "",
) -> None:
    """Load canonical numpy weights into a built Keras RegNet, strictly.

    Every missing, unexpected or mis-shaped canonical key is reported at once (core
    prepare_state). With ``reinit_head`` the classifier keeps its current (fresh) weights.
    """
    spec, with_head = model.spec, model.with_head
    table, prepared = prepare_state(state, spec, with_head=with_head, reinit_head=reinit_head, context=context)
    loaded = {tensor.name for tensor in table}
    variables = model_variables(model)
    check_native(variables, spec, with_head, context="of the Keras model")
    for tensor, path in native_pairs(spec, with_head):
        if tensor.name in loaded:
            variables[path].assign(to_channels_last(prepared[tensor.name], tensor.kind))


def read_canonical(model: keras.Model) -> dict[str, np.ndarray]:
    """The canonical numpy weights of a built Keras RegNet (num_batches_tracked as 0)."""
    variables = model_variables(model)
    return from_native(
        {path: np.asarray(variable.numpy()) for path, variable in variables.items()}, model.spec, model.with_head
    )


def canonical_gradients(model: keras.Model, gradients: Iterable[tuple[Any, Any]]) -> dict[str, np.ndarray]:
    """(Keras variable, gradient) pairs -> {canonical name: numpy gradient in canonical layout}."""
    pairs = {path: tensor for tensor, path in native_pairs(model.spec, model.with_head)}
    out = {}
    for variable, gradient in gradients:
        tensor = pairs[relative_path(model, variable)]
        out[tensor.name] = from_channels_last(np.asarray(gradient), tensor.kind)
    return out
