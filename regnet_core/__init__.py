"""Framework-neutral RegNet core: config, design space, specs, complexity, zoo, weights, checkpoints.

Importing this package loads numpy only; no deep-learning framework is touched.
"""

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

__all__ = [
    "BlockSpec",
    "CheckpointError",
    "CheckpointMismatchError",
    "ComplexityReport",
    "HeadSpec",
    "ModelOutput",
    "ModelSpec",
    "RegNetConfig",
    "StageSpec",
    "StemSpec",
    "TensorSpec",
    "UnknownModelError",
    "build_model_spec",
    "design_stages",
    "get_config",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "model_complexity",
    "parameter_table",
    "quantized_block_widths",
    "random_state",
    "save_checkpoint",
]
