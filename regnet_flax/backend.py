"""The Flax backend behind regnet_core.backends' interface (used by the CLI and parity).

A "model" here is a (module, variables) pair. Inputs arrive NCHW and are transposed to
NHWC; outputs go back NCHW so that they compare with PyTorch's directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from regnet_core.config import RegNetConfig
from regnet_core.specs import build_model_spec

from . import pretrained
from .modeling import compute_loss, has_head
from .pretrained import FlaxModel
from .weights import BATCH_STATS, params_to_canonical

FRAMEWORK = "flax"
LAYOUT = "NHWC"
NATIVE_FORMAT = "flax"

_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
# Full float32 convolutions and matmuls: on GPUs JAX's default may use TF32, which would
# show up as parity differences that are not in the model.
_PRECISION = "highest"


def _nhwc(pixel_values: np.ndarray) -> jax.Array:
    return jnp.asarray(np.transpose(np.asarray(pixel_values, np.float32), _TO_NHWC))


def _nchw(value: jax.Array) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(np.asarray(value), _TO_NCHW))


def build(config: RegNetConfig, with_head: bool = True, seed: int = 0) -> FlaxModel:
    """A new pycls-initialised (module, variables) pair, seeded."""
    return pretrained.init(config, with_head, seed)


def from_canonical(
    config: RegNetConfig, state: Mapping[str, np.ndarray], with_head: bool = True, dtype: DTypeLike | None = None
) -> FlaxModel:
    """A (module, variables) pair holding canonical weights; ``dtype`` ("bfloat16", ...) is the computation dtype."""
    return pretrained.from_canonical(config, state, with_head, dtype=dtype)


def to_canonical(model: FlaxModel) -> dict[str, np.ndarray]:
    """Canonical numpy weights of a (module, variables) pair."""
    return pretrained.to_canonical(model)


def run(model: FlaxModel, pixel_values: np.ndarray, output_hidden_states: bool = True) -> dict[str, object]:
    """Forward an NCHW numpy batch in inference mode; outputs as NCHW numpy, hidden states as a list."""
    module, variables = model
    apply = jax.jit(module.apply, static_argnames=("output_hidden_states",))
    with jax.default_matmul_precision(_PRECISION):
        outputs = apply(variables, _nhwc(pixel_values), output_hidden_states=output_hidden_states)
    result: dict[str, object] = {}
    for name, value in outputs.items():
        if name == "hidden_states":
            result[name] = [_nchw(h) for h in value]
        elif name == "logits":
            result[name] = np.asarray(value)
        else:
            result[name] = _nchw(value)
    return result


def gradients(model: FlaxModel, pixel_values: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Cross-entropy loss (inference-mode BN) and its gradients: input (NCHW) and every trainable canonical tensor."""
    module, variables = model
    config = module.config

    def loss_fn(params: dict, inputs: jax.Array) -> jax.Array:
        logits = module.apply({**variables, "params": params}, inputs).logits
        return compute_loss(logits, jnp.asarray(labels, jnp.int32), config)

    with jax.default_matmul_precision(_PRECISION):
        loss, (param_grads, input_grad) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
            variables["params"], _nhwc(pixel_values)
        )
    spec = build_model_spec(config)
    return {
        "loss": float(loss),
        "input": _nchw(input_grad),
        "params": params_to_canonical(param_grads, spec, has_head(module)),
    }


def train_forward(model: FlaxModel, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical state after one training-mode forward (BN running statistics updated as PyTorch does).

    The pair itself is unchanged (JAX arrays are immutable); num_batches_tracked stays zero.
    """
    module, variables = model
    apply = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=[BATCH_STATS])[1])
    with jax.default_matmul_precision(_PRECISION):
        updates = apply(variables, _nhwc(pixel_values))
    return pretrained.to_canonical((module, {**variables, **updates}))


def save_native(model: FlaxModel, path: str | os.PathLike) -> Path:
    """Write a Flax msgpack file of the variables."""
    return pretrained.save_native(model, path)


def load_native(config: RegNetConfig, path: str | os.PathLike, with_head: bool | None = None) -> FlaxModel:
    """Read a Flax msgpack file written by save_native (``with_head=None``: as the file holds)."""
    return pretrained.load_native(config, path, with_head)
