"""Export a Flax RegNet through ``jax.export`` as serialized StableHLO, and run it back.

Weights are baked into the module as constants: the file alone serves the model (no
parameters to ship or pass beside it), at the price of the serialization format's 2 GiB
limit and of one artefact per set of weights. The input is NHWC float32 with symbolic
(shape-polymorphic) batch, height and width; convolutions and matmuls are lowered at
``HIGHEST`` precision, so a GPU runs them in full float32 rather than TF32. The module is
lowered for CPU, CUDA, ROCm and TPU by default (one artefact, the runtime picks its platform).

A loaded artefact runs from JAX with ``jax.export.deserialize(blob).call(x)`` and returns a
dict (``logits``, or ``pooled_features`` for a trunk; optionally ``hidden_states_0`` ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from regnet_core.export import FEATURES_NAME, HIDDEN_STATES_PREFIX, LOGITS_NAME

from .modeling import has_head
from .pretrained import FlaxModel

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
PRECISION = "highest"


def serving_function(model: FlaxModel, output_hidden_states: bool = False) -> Any:
    """The exported function: NHWC pixel values -> {logits or pooled_features[, hidden_states_i]}; weights closed over."""
    module, variables = model
    with_head = has_head(module)

    def serve(pixel_values: jax.Array) -> dict[str, jax.Array]:
        outputs = module.apply(variables, pixel_values, output_hidden_states=output_hidden_states)
        if with_head:
            result = {LOGITS_NAME: outputs.logits}
        else:
            pooled = outputs.pooler_output
            result = {FEATURES_NAME: pooled.reshape(pooled.shape[0], -1)}
        if output_hidden_states:
            for index, hidden in enumerate(outputs.hidden_states):
                result[f"{HIDDEN_STATES_PREFIX}{index}"] = hidden
        return result

    return serve


def export_function(
    model: FlaxModel, *, output_hidden_states: bool = False, platforms: Sequence[str] = PLATFORMS
) -> jax_export.Exported:
    """The jax.export.Exported of ``model`` with its weights as constants and a symbolic batch, height and width."""
    module, _ = model
    channels = module.config.num_channels
    batch, height, width = jax_export.symbolic_shape("batch, height, width")
    spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.float32)
    with jax.default_matmul_precision(PRECISION):
        return jax_export.export(jax.jit(serving_function(model, output_hidden_states)), platforms=tuple(platforms))(
            spec
        )


def export_stablehlo(
    model: FlaxModel,
    path: str | os.PathLike,
    *,
    output_hidden_states: bool = False,
    platforms: Sequence[str] = PLATFORMS,
) -> Path:
    """Write the serialized jax.export artefact (StableHLO with the weights inside) to ``path``; returns the path."""
    path = Path(path)
    exported = export_function(model, output_hidden_states=output_hidden_states, platforms=platforms)
    path.write_bytes(exported.serialize())
    return path


def load_stablehlo(path: str | os.PathLike) -> jax_export.Exported:
    """Deserialize an artefact written by export_stablehlo (jax.export.deserialize)."""
    return jax_export.deserialize(bytearray(Path(path).read_bytes()))


def run_stablehlo(exported: jax_export.Exported, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Call a deserialized artefact on an NHWC batch; {output name: numpy array}."""
    outputs = exported.call(jnp.asarray(np.asarray(pixel_values, np.float32)))
    return {name: np.asarray(value) for name, value in outputs.items()}
