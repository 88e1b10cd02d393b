"""Keras <-> canonical weights: names and layouts only, numpy-level, derived from the specs.

Native names are Keras variable paths relative to the model (``model.path``), built from
the layer names below; modeling.py builds its layers with the same names, so the table
here and the variables of a built model cannot disagree (a test checks every zoo model).

    regnet.encoder.stages.1.layers.0.layer.1.convolution.weight  (out, in/groups, kh, kw)
    regnet/stage_1/block_0/b/conv/kernel                         (kh, kw, in/groups, out)

This module imports numpy and regnet_core only; the functions that touch a live Keras
model import TensorFlow lazily, so conversions work without a framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from regnet_core.specs import ModelSpec
from regnet_core.weights import (
    BASE_PREFIX,
    BN_BIAS,
    BN_COUNT,
    BN_MEAN,
    BN_VAR,
    BN_WEIGHT,
    CLASSIFIER_MODULE,
    CONV,
    CONV_BIAS,
    CONV_MODULE,
    DENSE,
    DENSE_BIAS,
    NORM_MODULE,
    SE_EXPAND_MODULE,
    SE_REDUCE_MODULE,
    TensorSpec,
    block_module_names,
    block_prefix,
    channels_last_shape,
    check_state,
    from_channels_last,
    parameter_table,
    prepare_state,
    to_channels_last,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Layer names of the Keras model; modeling.py imports these so that both sides agree.
TRUNK = "regnet"  # the RegNetModel inside RegNetForImageClassification
STEM = "stem"
CONV_LAYER = "conv"
BN_LAYER = "bn"
SE_LAYER = "se"
SE_REDUCE = "reduce"
SE_EXPAND = "expand"
CLASSIFIER = "classifier"
# Block roles (regnet_core.weights.block_module_names keys) double as the native layer names.
PROJECTION, CONV_A, CONV_B, CONV_C = "projection", "a", "b", "c"

VARIABLE_NAMES = {
    CONV: "kernel",
    CONV_BIAS: "bias",
    BN_WEIGHT: "gamma",
    BN_BIAS: "beta",
    BN_MEAN: "moving_mean",
    BN_VAR: "moving_variance",
    DENSE: "kernel",
    DENSE_BIAS: "bias",
}

# Canonical submodule names inside a conv + BN pair and inside the SE module (transformers').
_CANONICAL_CONV, _CANONICAL_BN = CONV_MODULE, NORM_MODULE
_CANONICAL_SE = {SE_REDUCE_MODULE: SE_REDUCE, SE_EXPAND_MODULE: SE_EXPAND}
_CANONICAL_CLASSIFIER = CLASSIFIER_MODULE


def stage_name(stage_index: int) -> str:
    """Native layer name of a stage."""
    return f"stage_{stage_index}"


def block_name(block_index: int) -> str:
    """Native layer name of a block inside its stage."""
    return f"block_{block_index}"


def _conv_bn_modules(canonical: str, native: str) -> dict[str, str]:
    return {
        f"{canonical}.{_CANONICAL_CONV}": f"{native}/{CONV_LAYER}",
        f"{canonical}.{_CANONICAL_BN}": f"{native}/{BN_LAYER}",
    }


def module_paths(spec: ModelSpec, with_head: bool = True) -> dict[str, str]:
    """Canonical module name -> native Keras layer path (relative to the model), for every module with weights."""
    canonical_prefix, native_prefix = (BASE_PREFIX, f"{TRUNK}/") if with_head else ("", "")
    paths = _conv_bn_modules(f"{canonical_prefix}embedder.embedder", f"{native_prefix}{STEM}")
    for stage_index, block_index, block in spec.blocks():
        canonical_block = canonical_prefix + block_prefix(stage_index, block_index)
        native_block = f"{native_prefix}{stage_name(stage_index)}/{block_name(block_index)}"
        for role, relative in block_module_names(block).items():
            if role == SE_LAYER:
                for canonical_se, native_se in _CANONICAL_SE.items():
                    paths[f"{canonical_block}.{relative}.{canonical_se}"] = f"{native_block}/{SE_LAYER}/{native_se}"
            else:
                paths.update(_conv_bn_modules(f"{canonical_block}.{relative}", f"{native_block}/{role}"))
    if with_head and spec.head.num_labels > 0:
        paths[_CANONICAL_CLASSIFIER] = CLASSIFIER
    return paths


def _native_pairs(spec: ModelSpec, with_head: bool) -> list[tuple[TensorSpec, str]]:
    """(canonical tensor, native path) for every canonical tensor that has a native variable."""
    modules = module_paths(spec, with_head)
    pairs = []
    for tensor in parameter_table(spec, with_head):
        if tensor.kind == BN_COUNT:
            continue  # PyTorch bookkeeping; Keras keeps no batch counter
        if tensor.module not in modules:  # the canonical table grew a module this mapping does not know
            raise RuntimeError(f"no Keras layer for canonical module {tensor.module!r}")
        pairs.append((tensor, f"{modules[tensor.module]}/{VARIABLE_NAMES[tensor.kind]}"))
    return pairs


def native_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Keras shape of a canonical tensor: conv OIHW -> HWIO, dense (out, in) -> (in, out)."""
    return channels_last_shape(shape, kind)


def native_table(spec: ModelSpec, with_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every native variable path (relative to the model) and its Keras shape, in forward order."""
    return {path: native_shape(tensor.shape, tensor.kind) for tensor, path in _native_pairs(spec, with_head)}


def canonical_names(spec: ModelSpec, with_head: bool = True) -> dict[str, str]:
    """Native variable path -> canonical tensor name."""
    return {path: tensor.name for tensor, path in _native_pairs(spec, with_head)}


def to_native(
    state: Mapping[str, np.ndarray], spec: ModelSpec, with_head: bool = True, *, context: str = ""
) -> dict[str, np.ndarray]:
    """Canonical numpy weights -> {native path: Keras-layout array}, strictly (see core prepare_state)."""
    _, prepared = prepare_state(state, spec, with_head=with_head, context=context)
    return {
        path: to_channels_last(prepared[tensor.name], tensor.kind) for tensor, path in _native_pairs(spec, with_head)
    }


def from_native(native: Mapping[str, np.ndarray], spec: ModelSpec, with_head: bool = True) -> dict[str, np.ndarray]:
    """{native path: Keras-layout array} -> canonical numpy weights in table order (num_batches_tracked as 0)."""
    _check_native(native, spec, with_head)
    paths = {tensor.name: path for tensor, path in _native_pairs(spec, with_head)}
    state: dict[str, np.ndarray] = {}
    for tensor in parameter_table(spec, with_head):
        if tensor.kind == BN_COUNT:  # Keras keeps no batch counter; transformers expects the buffer
            state[tensor.name] = np.zeros((), np.int64)
        else:
            value = from_channels_last(np.asarray(native[paths[tensor.name]]), tensor.kind)
            state[tensor.name] = value.astype(tensor.dtype, copy=False)
    return state


def _check_native(native: Mapping[str, Any], spec: ModelSpec, with_head: bool, context: str = "") -> None:
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
    _check_native(variables, spec, with_head, context="of the Keras model")
    for tensor, path in _native_pairs(spec, with_head):
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
    pairs = {path: tensor for tensor, path in _native_pairs(model.spec, model.with_head)}
    out = {}
    for variable, gradient in gradients:
        tensor = pairs[relative_path(model, variable)]
        out[tensor.name] = from_channels_last(np.asarray(gradient), tensor.kind)
    return out
