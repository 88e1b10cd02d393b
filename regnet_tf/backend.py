"""The TensorFlow backend behind regnet_core.backends' interface (used by the CLI and parity).

Inputs arrive NCHW (the harness' layout) and are transposed to NHWC; 4-D outputs are
transposed back, so every backend's results compare directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from regnet_core.config import RegNetConfig

from .modeling import RegNetForImageClassification, RegNetModel, RegNetPreTrainedModel
from .native import load_native as _load_native
from .native import save_native as _save_native
from .weights import canonical_gradients, read_canonical

FRAMEWORK = "tf"
LAYOUT = "NHWC"
NATIVE_FORMAT = "keras"

_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)


def _class(with_head: bool) -> type[RegNetPreTrainedModel]:
    return RegNetForImageClassification if with_head else RegNetModel


def _nhwc(pixel_values: np.ndarray) -> tf.Tensor:
    return tf.convert_to_tensor(np.ascontiguousarray(np.transpose(np.asarray(pixel_values, np.float32), _TO_NHWC)))


def _nchw(value: tf.Tensor) -> np.ndarray:
    array = np.asarray(value)
    return np.ascontiguousarray(np.transpose(array, _TO_NCHW)) if array.ndim == 4 else array


def build(config: RegNetConfig, with_head: bool = True, seed: int = 0) -> RegNetPreTrainedModel:
    """A new pycls-initialised model; Python, NumPy, TensorFlow and Keras RNGs seeded."""
    keras.utils.set_random_seed(seed)
    return _class(with_head)(config)


def from_canonical(
    config: RegNetConfig, state: Mapping[str, np.ndarray], with_head: bool = True, dtype: Any = None
) -> RegNetPreTrainedModel:
    """A model holding canonical weights (float32 variables); ``dtype``: "float32", "mixed_bfloat16", "bfloat16" or None (global)."""
    model = _class(with_head)(config, _skip_init=True, dtype=dtype)
    return model.load_canonical_state(dict(state))


def to_canonical(model: RegNetPreTrainedModel) -> dict[str, np.ndarray]:
    """Canonical numpy weights of a model."""
    return read_canonical(model)


def run(model: RegNetPreTrainedModel, pixel_values: np.ndarray, output_hidden_states: bool = True) -> dict[str, object]:
    """Forward an NCHW numpy batch (inference mode); outputs as NCHW numpy, hidden states as a list."""
    outputs = model(_nhwc(pixel_values), output_hidden_states=output_hidden_states, training=False)
    result: dict[str, object] = {}
    for name, value in outputs.items():
        result[name] = [_nchw(h) for h in value] if name == "hidden_states" else _nchw(value)
    return result


def gradients(model: RegNetForImageClassification, pixel_values: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Cross-entropy loss (inference-mode BN) and its gradients: input (NCHW) and every trainable canonical tensor."""
    inputs = _nhwc(pixel_values)
    targets = tf.convert_to_tensor(np.asarray(labels, np.int64))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = model(inputs, labels=targets, training=False)["loss"]
    input_gradient, *variable_gradients = tape.gradient(loss, [inputs, *variables])
    params = canonical_gradients(model, zip(variables, variable_gradients, strict=True))
    return {"loss": float(loss), "input": _nchw(input_gradient), "params": params}


def train_forward(model: RegNetPreTrainedModel, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical state after one training-mode forward (BN running statistics updated, unbiased variance).

    Keras keeps no batch counter, so num_batches_tracked reads 0 (PyTorch's reads 1).
    """
    model(_nhwc(pixel_values), training=True)
    return read_canonical(model)


def save_native(model: RegNetPreTrainedModel, path: str) -> None:
    """Write a Keras ``.weights.h5`` file carrying the config."""
    _save_native(model, path)


def load_native(config: RegNetConfig | None, path: str, with_head: bool | None = None) -> RegNetPreTrainedModel:
    """Read a Keras ``.weights.h5`` file strictly (config may be None when the file carries one; with_head None follows it)."""
    return _load_native(config, path, with_head)
