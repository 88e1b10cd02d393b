"""Export a TensorFlow RegNet as a SavedModel or a TFLite file, and run them back.

The SavedModel is written by Keras' ExportArchive: its ``serving_default`` signature (also
callable as ``serve``) takes ``pixel_values``, NHWC float32 with dynamic batch, height and
width, and returns a dict (``logits``, or ``pooled_features`` for a trunk; optionally
``hidden_states_0`` ... in NHWC). Inference mode: BatchNorm uses its running statistics.
Variables are stored beside the graph, so there is no size limit.

The TFLite file is converted from that SavedModel with TensorFlow Lite builtin ops only, in
float32 (no quantisation, no fp16); it keeps the dynamic shapes, so its signature runner
resizes the input to each batch it is given. A flatbuffer holds at most 2 GiB.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from regnet_core.export import FEATURES_NAME, HIDDEN_STATES_PREFIX, INPUT_NAME, LOGITS_NAME

from .modeling import RegNetPreTrainedModel

SIGNATURE = "serving_default"
ENDPOINT = "serve"


def serving_function(model: RegNetPreTrainedModel, output_hidden_states: bool = False) -> Any:
    """The exported function: NHWC pixel values -> {logits or pooled_features[, hidden_states_i]}."""
    with_head = model.with_head
    channels = model.spec.head.input_width

    def serve(pixel_values: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(pixel_values, output_hidden_states=output_hidden_states, training=False)
        if with_head:
            result = {LOGITS_NAME: outputs["logits"]}
        else:
            result = {FEATURES_NAME: tf.reshape(outputs["pooler_output"], [-1, channels])}
        if output_hidden_states:
            for index, hidden in enumerate(outputs["hidden_states"]):
                result[f"{HIDDEN_STATES_PREFIX}{index}"] = hidden
        return result

    return serve


def input_signature(model: RegNetPreTrainedModel) -> list[tf.TensorSpec]:
    """[(None, None, None, channels) float32 named pixel_values]."""
    return [tf.TensorSpec(model.input_shape_nhwc, tf.float32, name=INPUT_NAME)]


def export_saved_model(
    model: RegNetPreTrainedModel, path: str | os.PathLike, *, output_hidden_states: bool = False
) -> Path:
    """Write a SavedModel directory whose ``serving_default`` signature serves ``model``; returns the path."""
    path = Path(path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(ENDPOINT, serving_function(model, output_hidden_states), input_signature(model))
    archive.write_out(str(path), verbose=False)
    return path


def load_saved_model(path: str | os.PathLike) -> Any:
    """A SavedModel loaded with tf.saved_model.load; ValueError if it has no ``serving_default`` signature."""
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {SIGNATURE!r} signature; it has {sorted(loaded.signatures)}")
    return loaded  # the signature needs this object alive (it owns the restored variables)


def run_saved_model(loaded: Any, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Run a loaded SavedModel's ``serving_default`` signature on an NHWC batch; {output name: numpy array}."""
    outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(np.asarray(pixel_values, np.float32))})
    return {name: value.numpy() for name, value in outputs.items()}


def convert_saved_model_to_tflite(saved_model: str | os.PathLike) -> bytes:
    """The TFLite flatbuffer of a SavedModel's serving signature: builtin ops, float32, no optimisations."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = []
    return converter.convert()


def export_tflite(model: RegNetPreTrainedModel, path: str | os.PathLike, *, output_hidden_states: bool = False) -> Path:
    """Write a TFLite file of ``model`` (converted through a temporary SavedModel beside ``path``); returns the path."""
    path = Path(path)
    # Hidden, and named after path so that a temporary of regnet_core.io.atomic_output covers it too.
    prefix = f"{'' if path.name.startswith('.') else '.'}{path.name}.savedmodel-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=path.parent) as directory:
        saved_model = Path(directory) / "saved_model"
        export_saved_model(model, saved_model, output_hidden_states=output_hidden_states)
        content = convert_saved_model_to_tflite(saved_model)
    path.write_bytes(content)
    return path


def load_tflite(path: str | os.PathLike, num_threads: int | None = None) -> Any:
    """The ``serving_default`` signature runner of a TFLite file (tf.lite.Interpreter)."""
    with warnings.catch_warnings():  # TF 2.21 points to ai_edge_litert; the bundled interpreter still works
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
    return interpreter.get_signature_runner(SIGNATURE)


def run_tflite(runner: Any, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Run a TFLite signature runner on an NHWC batch (the input is resized to it); {output name: numpy array}."""
    outputs = runner(**{INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})
    return {name: np.array(value) for name, value in outputs.items()}
