"""RegNet in TensorFlow (Keras 3 on the TensorFlow backend), built from regnet_core's specs.

Keras 3 picks its backend once, at its first import. This package needs TensorFlow, so it
sets KERAS_BACKEND before importing keras and refuses to run on a Keras that is already
loaded on (or configured for) another backend.

Eager inference calls (``model(x)``) run through a compiled ``tf.function`` kept on each
model (``compiled_calls(False)`` turns that off), and every model takes ``dtype=
"mixed_bfloat16"``; see ``regnet_tf.modeling``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

_EXPECTED_BACKEND = "tensorflow"


class KerasBackendError(ImportError):
    """Keras is configured for, or already loaded on, a backend other than TensorFlow."""


def _require_tensorflow_keras() -> None:
    """Make Keras load on TensorFlow, or raise KerasBackendError naming the backend in the way."""
    requested = os.environ.get("KERAS_BACKEND")
    if requested and requested.lower() != _EXPECTED_BACKEND:
        raise KerasBackendError(
            f"regnet_tf needs Keras on the {_EXPECTED_BACKEND!r} backend, but KERAS_BACKEND is {requested!r}; "
            f"unset it or set KERAS_BACKEND={_EXPECTED_BACKEND}"
        )
    keras_module = sys.modules.get("keras")
    if keras_module is not None:
        try:
            loaded = keras_module.config.backend()
        except AttributeError:  # Keras 2 (tf.keras era) or a partial import
            loaded = None
        if loaded is not None and loaded != _EXPECTED_BACKEND:
            raise KerasBackendError(
                f"regnet_tf needs Keras on the {_EXPECTED_BACKEND!r} backend, but keras is already imported on "
                f"{loaded!r}; set KERAS_BACKEND={_EXPECTED_BACKEND} before anything imports keras"
            )
    # A ~/.keras/keras.json naming another backend is overridden by the environment variable.
    os.environ["KERAS_BACKEND"] = _EXPECTED_BACKEND
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning lines
    # TensorFlow's own CPU kernels cannot differentiate grouped convolutions; its oneDNN kernels
    # can. TensorFlow turns oneDNN on by default only on some CPUs (not, for example, on AMD EPYC),
    # so ask for it unless the user chose. Without it, modeling.py falls back to per-group convs.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


_require_tensorflow_keras()

# Lazy exports: ``regnet_tf.weights`` (numpy-only canonical <-> Keras mapping) imports without
# TensorFlow; the model classes load TensorFlow and Keras on first use.
_EXPORTS = {
    "RegNetBackbone": "backbone",
    "RegNetForImageClassification": "modeling",
    "RegNetModel": "modeling",
    "RegNetPreTrainedModel": "modeling",
    "compiled_calls": "modeling",
    "labels_loss": "modeling",
    "load_native": "native",
    "save_native": "native",
    "assign_canonical": "weights",
    "from_native": "weights",
    "native_table": "weights",
    "read_canonical": "weights",
    "to_native": "weights",
}
__all__ = [
    "KerasBackendError",
    "RegNetBackbone",
    "RegNetForImageClassification",
    "RegNetModel",
    "RegNetPreTrainedModel",
    "assign_canonical",
    "compiled_calls",
    "from_native",
    "labels_loss",
    "load_native",
    "native_table",
    "read_canonical",
    "save_native",
    "to_native",
]

if TYPE_CHECKING:  # pragma: no cover  (for type checkers and IDEs)
    from .backbone import RegNetBackbone
    from .modeling import (
        RegNetForImageClassification,
        RegNetModel,
        RegNetPreTrainedModel,
        compiled_calls,
        labels_loss,
    )
    from .native import load_native, save_native
    from .weights import assign_canonical, from_native, native_table, read_canonical, to_native


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'regnet_tf' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
