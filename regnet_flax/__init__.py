"""RegNet in Flax (Linen): NHWC modules built from regnet_core's specs, transformers-compatible checkpoints.

import regnet_flax
module, variables = regnet_flax.from_pretrained("path/to/checkpoint")
logits = module.apply(variables, images_nhwc).logits

On CPU the grouped convolutions use a faster lowering than XLA's own (see
``regnet_flax.grouped_conv``); ``from_pretrained(..., dtype=jnp.bfloat16)`` computes in
bfloat16 with float32 parameters, BatchNorm statistics and logits.
"""

from .backbone import RegNetBackbone, backbone_from_canonical, backbone_to_canonical, init_backbone
from .grouped_conv import grouped_conv_method
from .modeling import (
    BatchNorm,
    RegNetForImageClassification,
    RegNetModel,
    activation_function,
    compute_loss,
)
from .pretrained import (
    from_canonical,
    from_pretrained,
    init,
    load_native,
    save_native,
    save_pretrained,
    to_canonical,
)
from .weights import from_native, native_table, params_to_canonical, to_native

loss = compute_loss

__all__ = [
    "BatchNorm",
    "RegNetBackbone",
    "RegNetForImageClassification",
    "RegNetModel",
    "activation_function",
    "backbone_from_canonical",
    "backbone_to_canonical",
    "compute_loss",
    "from_canonical",
    "from_native",
    "from_pretrained",
    "grouped_conv_method",
    "init",
    "init_backbone",
    "load_native",
    "loss",
    "native_table",
    "params_to_canonical",
    "save_native",
    "save_pretrained",
    "to_canonical",
    "to_native",
]
