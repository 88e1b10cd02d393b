"""RegNet in PyTorch: transformers-compatible modules built from regnet_core's specs."""

from .backbone import RegNetBackbone
from .modeling import RegNetForImageClassification, RegNetModel, RegNetPreTrainedModel
from .weights import state_from_canonical, state_to_canonical

__all__ = [
    "RegNetBackbone",
    "RegNetForImageClassification",
    "RegNetModel",
    "RegNetPreTrainedModel",
    "state_from_canonical",
    "state_to_canonical",
]
