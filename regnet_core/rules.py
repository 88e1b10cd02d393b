"""Model rules every backend applies, each defined once: the activation table and the classifier's initialisation.

Backends keep only the framework call for each function named here; which function a
config's ``hidden_act`` means, and how a fresh classifier is drawn, are decided in this
module. (The loss rule for labels lives with the other input rules in ``outputs``.)
This module imports nothing, so every part of the core can use it.
"""

from __future__ import annotations

# The functions an activation name can mean; each backend maps these five, and nothing else.
RELU, SILU, GELU, TANH, SIGMOID = "relu", "silu", "gelu", "tanh", "sigmoid"

# hidden_act -> function, as transformers' ACT2FN reads each name: "swish" is SiLU, and
# "gelu" is the exact erf form x * Phi(x) (torch.nn.GELU's default), not the tanh
# approximation (transformers calls that "gelu_new" / "gelu_pytorch_tanh").
ACTIVATION_FUNCTIONS: dict[str, str] = {
    "relu": RELU,
    "silu": SILU,
    "swish": SILU,
    "gelu": GELU,
    "tanh": TANH,
    "sigmoid": SIGMOID,
}
ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATION_FUNCTIONS)

# Squeeze-and-excitation always uses these, whatever hidden_act (paper, pycls, transformers).
SE_ACTIVATION = RELU
SE_GATE = SIGMOID

# pycls's classifier initialisation (DESIGN decision 8): weights N(0, 0.01^2), bias zero.
CLASSIFIER_WEIGHT_STD = 0.01
CLASSIFIER_BIAS = 0.0


def activation_function(name: str | None) -> str | None:
    """The function a config's ``hidden_act`` names (one of RELU, SILU, GELU, TANH, SIGMOID); None stays None."""
    if name is None:
        return None
    try:
        return ACTIVATION_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None
