"""Model rules every backend applies, each defined once: the activation table, the classifier's initialisation, and
when a strided 1x1 convolution subsamples first.

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


# oneDNN (the CPU convolutions of PyTorch and of TensorFlow) computes the weight gradient of a
# strided 1x1 convolution on channels-last data through a unit-stride copy of the input, which it
# overruns when the input has fewer channels than its vector block (16 on AVX-512, 8 on AVX2):
# heap corruption, then a crash or wrong values (oneDNN issue 6035; seen with PyTorch 2.13 and
# TensorFlow 2.21 on an AVX-512 AMD EPYC, with 8 input channels). Below this many input channels,
# backends take every stride-th pixel first and convolve at stride 1: the same values.
SUBSAMPLED_POINTWISE_BELOW_CHANNELS = 16


def subsample_before_convolving(kernel_size: int, stride: int, in_channels: int) -> bool:
    """Whether a backend subsamples a convolution's input and convolves at stride 1 (a small strided 1x1 conv)."""
    return kernel_size == 1 and stride > 1 and in_channels < SUBSAMPLED_POINTWISE_BELOW_CHANNELS


def activation_function(name: str | None) -> str | None:
    """The function a config's ``hidden_act`` names (one of RELU, SILU, GELU, TANH, SIGMOID); None stays None."""
    if name is None:
        return None
    try:
        return ACTIVATION_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None
