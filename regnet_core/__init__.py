"""Framework-neutral RegNet core: config, design space, specs, complexity, zoo, weights, checkpoints.

Importing this package loads numpy only; no deep-learning framework is touched. The image
side (``ImageProcessor``, ``predict``, ``ImageClassifier``, which need Pillow) and
``feature_info`` load on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .complexity import ComplexityReport, model_complexity
from .config import RegNetConfig
from .design import design_stages, quantized_block_widths
from .outputs import ModelOutput
from .specs import BlockSpec, HeadSpec, ModelSpec, StageSpec, StemSpec, build_model_spec
from .weights import CheckpointMismatchError, TensorSpec, parameter_table, random_state
from .zoo import UnknownModelError, get_config, get_entry, list_models

__version__ = "0.1.0"
# The name on the package index (the import packages are regnet_core, regnet_pt, regnet_tf, regnet_flax).
DISTRIBUTION = "regnet-trio"

# Lazy exports: name -> module (Pillow loads only when the image side is used).
_LAZY = {
    "ImageClassifier": "classify",
    "ImageProcessor": "preprocess",
    "class_names": "classify",
    "feature_info": "features",
    "predict": "classify",
}

if TYPE_CHECKING:  # pragma: no cover
    from .classify import ImageClassifier, class_names, predict
    from .features import feature_info
    from .preprocess import ImageProcessor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockSpec",
    "CheckpointError",
    "CheckpointMismatchError",
    "ComplexityReport",
    "HeadSpec",
    "ImageClassifier",
    "ImageProcessor",
    "ModelOutput",
    "ModelSpec",
    "RegNetConfig",
    "StageSpec",
    "StemSpec",
    "TensorSpec",
    "UnknownModelError",
    "build_model_spec",
    "class_names",
    "design_stages",
    "feature_info",
    "get_config",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "model_complexity",
    "parameter_table",
    "predict",
    "quantized_block_widths",
    "random_state",
    "save_checkpoint",
]
