"""RegNet in Flax (Linen), built by iterating the core's specs.

Inputs and hidden states are NHWC. Variables come in two collections: ``params`` (kernels,
biases, BatchNorm scales and shifts) and ``batch_stats`` (BatchNorm running mean and
variance). ``train=True`` normalises with batch statistics and, when ``batch_stats`` is
mutable, updates the running statistics exactly as PyTorch does::

    outputs, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}

Module names follow one rule from the canonical (transformers) names, see ``weights.py``:
``regnet.encoder.stages.0.layers.1.layer.0`` lives at ``regnet/encoder/stages_0/layers_1/layer_0``.

Convolutions are ``Conv`` modules with nn.Conv's parameters (``kernel`` HWIO, grouped
``(k, k, in / groups, out)``; ``bias``); grouped ones run through
``regnet_flax.grouped_conv``, which on CPU replaces XLA's slow ``feature_group_count``
conv by a faster equivalent lowering (chosen per shape at trace time; forced with
``REGNET_FLAX_GROUPED_CONV=xla|scan|loop|dense|im2col``). In inference BatchNorm is one
per-channel multiply-add with the running statistics folded in (as PyTorch's CPU kernel).

``dtype`` (every module; default float32) is the computation dtype and ``param_dtype``
the parameters' (default float32). With ``dtype=jnp.bfloat16`` convolutions, activations
and the residual stream are bfloat16 (parameters are cast when used), BatchNorm
normalises in float32 and keeps float32 statistics, and the pooled features, the
classifier and so the logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from regnet_core.config import RegNetConfig, reject_keywords, require_config
from regnet_core.errors import PixelValuesError
from regnet_core.outputs import (
    CROSS_ENTROPY,
    MSE,
    ModelOutput,
    check_class_targets,
    check_pixel_values,
    choose_loss,
)
from regnet_core.rules import (
    CLASSIFIER_WEIGHT_STD,
    GELU,
    RELU,
    SE_ACTIVATION,
    SE_GATE,
    SIGMOID,
    SILU,
    TANH,
)
from regnet_core.rules import activation_function as activation_kind
from regnet_core.specs import BlockSpec, ModelSpec, StageSpec, build_model_spec
from regnet_core.weights import block_module_names

from .grouped_conv import grouped_conv
from .weights import native_module_path

# pycls initialisation (DESIGN decision 8): He-normal with fan-out = k * k * out_channels
# (Flax computes fan-out of an HWIO kernel the same way, groups or not); the classifier's
# standard deviation comes from the core's rules.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
classifier_kernel_init = nn.initializers.normal(stddev=CLASSIFIER_WEIGHT_STD)

# JAX's function for each activation the core's rules name.
_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    RELU: jax.nn.relu,
    SILU: jax.nn.silu,
    # The exact erf form; jax.nn.gelu defaults to the tanh approximation.
    GELU: functools.partial(jax.nn.gelu, approximate=False),
    TANH: jnp.tanh,
    SIGMOID: jax.nn.sigmoid,
}


def activation_function(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The activation for a config's hidden_act (identity for None); unknown names raise ValueError."""
    kind = activation_kind(name)
    return (lambda x: x) if kind is None else _FUNCTIONS[kind]


def register_output_pytree(output_class: type[ModelOutput] = ModelOutput) -> None:
    """Make ModelOutput (or a subclass, e.g. BackboneOutput) a pytree that jax.jit, jax.grad and vmap can return."""

    def flatten_with_keys(output: ModelOutput) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
        return [(jax.tree_util.DictKey(key), value) for key, value in output.items()], tuple(output)

    def flatten(output: ModelOutput) -> tuple[tuple[Any, ...], tuple[str, ...]]:
        return tuple(output.values()), tuple(output)

    def unflatten(keys: tuple[str, ...], values: Sequence[Any]) -> ModelOutput:
        # Bypass ModelOutput.__init__, which drops None: JAX may rebuild a tree with None or
        # sentinel leaves and expects the same structure back.
        output = output_class()
        for key, value in zip(keys, values, strict=True):
            OrderedDict.__setitem__(output, key, value)
        return output

    try:
        jax.tree_util.register_pytree_with_keys(output_class, flatten_with_keys, unflatten, flatten)
    except ValueError:  # already registered (this module was reloaded)
        pass


register_output_pytree(ModelOutput)


def _child_name(relative_path: str) -> str:
    """Native name of a direct child from its canonical relative path ('layer.0' -> 'layer_0')."""
    (name,) = native_module_path(relative_path)
    return name


def canonical_dtype(dtype: Any) -> jnp.dtype:
    """A computation dtype as a numpy dtype: None -> float32; "bfloat16", "float32", jnp.bfloat16, ... accepted."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    try:
        result = jnp.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"unknown dtype {dtype!r}; expected a float dtype such as 'float32' or 'bfloat16'") from error
    if not jnp.issubdtype(result, jnp.floating):
        raise ValueError(f"the computation dtype must be a float dtype, got {result}")
    return result


class Conv(nn.Module):
    """Square conv over NHWC (symmetric k // 2 padding), HWIO kernel ``(k, k, in / groups, out)`` as nn.Conv's.

    Grouped convs go through ``grouped_conv`` (a lowering XLA:CPU runs fast, see
    ``regnet_flax.grouped_conv``); the kernel and bias are cast to ``dtype`` for the computation.
    """

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve an NHWC batch (cast to ``dtype``)."""
        in_features = x.shape[-1]
        if in_features % self.groups:
            raise ValueError(f"{in_features} input channels are not divisible by {self.groups} groups")
        k = self.kernel_size
        kernel = self.param(
            "kernel", conv_kernel_init, (k, k, in_features // self.groups, self.features), self.param_dtype
        )
        # Explicit symmetric k // 2 padding: "SAME" pads asymmetrically at stride 2 (DESIGN note 5).
        pad = k // 2
        y = grouped_conv(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (self.stride, self.stride),
            ((pad, pad), (pad, pad)),
            self.groups,
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """BatchNorm over NHWC channels with PyTorch's semantics.

    Training normalises with the biased batch variance and moves the running variance
    towards the unbiased one (n / (n - 1)), as torch.nn.BatchNorm2d does; flax's
    nn.BatchNorm stores the biased variance. ``momentum`` is Flax's (0.9 == PyTorch's 0.1).
    With ``axis_name`` the statistics are averaged over that mapped axis (cross-device BN).
    Statistics and the normalisation are float32 whatever the input; the output is ``dtype``
    (None: the input's). Inference is one fused per-channel scale and shift.
    ``features`` is the channel count, which the model's layers take from the specs (an input
    with other channels raises ValueError); None (standalone use) takes the input's.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    zero_init_scale: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Normalise ``x`` with batch statistics (``train``) or the running ones."""
        features = _expect_channels(x, self.features, "BatchNorm")
        out_dtype = x.dtype if self.dtype is None else self.dtype
        scale_init = nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones
        scale = self.param("scale", scale_init, (features,), self.param_dtype).astype(jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype).astype(jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if train:
            mean, var, count = self._batch_statistics(x32)
            if not self.is_initializing():
                # Bookkeeping only: no gradient flows into the running statistics (PyTorch detaches too).
                batch_mean, unbiased_var = jax.lax.stop_gradient((mean, var * (count / (count - 1))))
                momentum = self.momentum
                running_mean.value = momentum * running_mean.value + (1 - momentum) * batch_mean
                running_var.value = momentum * running_var.value + (1 - momentum) * unbiased_var
            multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
            # Centre first: batch statistics flow into the gradient, and x - mean keeps its digits.
            return ((x32 - mean) * multiplier + bias).astype(out_dtype)
        mean = running_mean.value.astype(jnp.float32)
        multiplier = scale * jax.lax.rsqrt(running_var.value.astype(jnp.float32) + self.epsilon)
        # Running statistics are constants here: fold them into one multiply-add per value.
        return (x32 * multiplier + (bias - mean * multiplier)).astype(out_dtype)

    def _batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        axes = tuple(range(x.ndim - 1))
        count = int(np.prod([x.shape[axis] for axis in axes]))
        if self.axis_name is None and count < 2:
            raise ValueError(
                f"BatchNorm in training mode needs more than 1 value per channel, got input shape {tuple(x.shape)}"
            )
        # Two passes (mean, then mean squared deviation) for accuracy; flax's fast
        # E[x^2] - E[x]^2 loses digits when the mean is large.
        mean = jnp.mean(x, axis=axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
            count = count * jax.lax.psum(1, self.axis_name)
        return mean, var, count


class ConvNormAct(nn.Module):
    """Conv (symmetric k // 2 padding, no bias), BatchNorm, optional activation."""

    features: int
    kernel_size: int
    spec: ModelSpec
    stride: int = 1
    groups: int = 1
    activation: str | None = None
    axis_name: str | None = None
    zero_init_scale: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Conv, BatchNorm (float32 inside), activation; the result is ``dtype``."""
        x = Conv(
            self.features,
            self.kernel_size,
            self.stride,
            self.groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="convolution",
        )(x)
        x = BatchNorm(
            features=self.features,
            momentum=1.0 - self.spec.bn_momentum,  # the spec keeps PyTorch's convention
            epsilon=self.spec.bn_eps,
            axis_name=self.axis_name,
            zero_init_scale=self.zero_init_scale,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="normalization",
        )(x, train)
        return activation_function(self.activation)(x)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate.

    Both widths come from the block's spec: ``channels`` (the bottleneck width it gates) and ``se_width``.
    """

    channels: int
    se_width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Gate the channels of ``x`` by its pooled attention."""
        _expect_channels(x, self.channels, "SqueezeExcitation")
        conv = functools.partial(Conv, kernel_size=1, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
        attention = conv(self.se_width, name=_child_name("attention.0"))(pooled)
        attention = _FUNCTIONS[SE_ACTIVATION](attention)  # whatever hidden_act (core rules)
        attention = conv(self.channels, name=_child_name("attention.2"))(attention)
        return x * _FUNCTIONS[SE_GATE](attention).astype(x.dtype)


def _expect_channels(x: jax.Array, channels: int | None, layer: str) -> int:
    """The channel count of an NHWC input: ``channels`` from the specs, checked against the input (None: the input's)."""
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{layer} expects {channels} channels (from the specs), got input of shape {tuple(x.shape)}")
    return x.shape[-1] if channels is None else channels


class Bottleneck(nn.Module):
    """Residual bottleneck: 1x1, grouped 3x3 (stride here), optional SE, 1x1; projection when shapes change."""

    block: BlockSpec
    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output (``dtype``)."""
        block, spec = self.block, self.spec
        # Layer positions (SE shifts the last conv from layer.2 to layer.3) come from the core.
        names = {role: _child_name(path) for role, path in block_module_names(block).items()}
        conv_norm = functools.partial(
            ConvNormAct, spec=spec, axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype
        )
        if block.has_projection:
            residual = conv_norm(block.width, 1, stride=block.stride, name=names["projection"])(x, train)
        else:
            residual = x
        hidden = conv_norm(block.bottleneck_width, 1, activation=spec.activation, name=names["a"])(x, train)
        hidden = conv_norm(
            block.bottleneck_width,
            3,
            stride=block.stride,
            groups=block.groups,
            activation=spec.activation,
            name=names["b"],
        )(hidden, train)
        if block.has_se:
            hidden = SqueezeExcitation(
                block.bottleneck_width, block.se_width, self.dtype, self.param_dtype, name=names["se"]
            )(hidden)
        hidden = conv_norm(block.width, 1, zero_init_scale=self.zero_init_last_bn, name=names["c"])(hidden, train)
        return activation_function(spec.activation)(hidden + residual.astype(hidden.dtype))


class Stage(nn.Module):
    """The blocks of one stage, named ``layers_0``, ``layers_1``, ..."""

    stage: StageSpec
    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The last block's output."""
        for index, block in enumerate(self.stage.blocks):
            x = Bottleneck(
                block,
                self.spec,
                self.axis_name,
                self.zero_init_last_bn,
                self.dtype,
                self.param_dtype,
                name=_child_name(f"layers.{index}"),
            )(x, train)
        return x


class Encoder(nn.Module):
    """All stages; returns the output of each."""

    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        """The output of every stage, in order."""
        outputs = []
        for index, stage in enumerate(self.spec.stages):
            x = Stage(
                stage,
                self.spec,
                self.axis_name,
                self.zero_init_last_bn,
                self.dtype,
                self.param_dtype,
                name=_child_name(f"stages.{index}"),
            )(x, train)
            outputs.append(x)
        return outputs


class Embeddings(nn.Module):
    """The stem: 3x3 stride-2 conv, BN, activation."""

    spec: ModelSpec
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False) -> jax.Array:
        """The stem's output (``dtype``)."""
        stem = self.spec.stem
        return ConvNormAct(
            stem.width,
            stem.kernel_size,
            self.spec,
            stride=stem.stride,
            activation=self.spec.activation,
            axis_name=self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embedder",
        )(pixel_values, train)


def check_input(pixel_values: jax.Array, num_channels: int) -> None:
    """Raise PixelValuesError unless ``pixel_values`` is a batch the core's rule accepts (regnet_core.inputs), NHWC.

    Accepted floating dtypes are cast to the module's ``dtype`` by its first convolution.
    """
    if not (hasattr(pixel_values, "shape") and hasattr(pixel_values, "dtype")):
        raise PixelValuesError(f"pixel_values must be an array (jax.Array or numpy), got {type(pixel_values).__name__}")
    check_pixel_values(
        tuple(pixel_values.shape),
        bool(jnp.issubdtype(pixel_values.dtype, jnp.floating)),
        str(pixel_values.dtype),
        num_channels,
        "NHWC",
    )


def checked_keywords(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a public module's constructor refuse unknown keywords with our error and the nearest field name.

    Linen modules are dataclasses, whose own refusal is a bare TypeError naming no alternative.
    """
    dataclass_init = cls.__init__
    accepted = tuple(
        field.name for field in dataclasses.fields(cls) if field.init and field.name not in ("parent", "name")
    )

    @functools.wraps(dataclass_init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        unknown = {key: value for key, value in kwargs.items() if key not in (*accepted, "parent", "name")}
        reject_keywords(unknown, f"{cls.__name__}()", accepted)
        dataclass_init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _spec_of(config: RegNetConfig) -> ModelSpec:
    return build_model_spec(require_config(config, "a Flax RegNet module"))


@checked_keywords
class RegNetModel(nn.Module):
    """The RegNet trunk: stem and stages, with global average pooling (NHWC)."""

    config: RegNetConfig
    zero_init_last_bn: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False, output_hidden_states: bool = False) -> ModelOutput:
        """NHWC float batch -> last_hidden_state, pooler_output (B, 1, 1, C; float32), hidden_states (stem, stages)."""
        spec = _spec_of(self.config)
        check_input(pixel_values, spec.stem.input_width)
        dtype, param_dtype = canonical_dtype(self.dtype), canonical_dtype(self.param_dtype)
        hidden_state = Embeddings(spec, self.axis_name, dtype, param_dtype, name="embedder")(pixel_values, train)
        stage_outputs = Encoder(spec, self.axis_name, self.zero_init_last_bn, dtype, param_dtype, name="encoder")(
            hidden_state, train
        )
        last_hidden_state = stage_outputs[-1]
        return ModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=jnp.mean(last_hidden_state, axis=(1, 2), keepdims=True, dtype=jnp.float32),
            hidden_states=(hidden_state, *stage_outputs) if output_hidden_states else None,
        )

    @classmethod
    def from_pretrained(cls, directory: Any, **kwargs: Any) -> tuple[RegNetModel, dict[str, Any]]:
        """(module, variables) of a checkpoint directory's trunk; see regnet_flax.from_pretrained."""
        from .pretrained import from_pretrained

        return from_pretrained(directory, with_head=False, **kwargs)


@checked_keywords
class RegNetForImageClassification(nn.Module):
    """RegNet trunk plus a linear classifier on the pooled features (identity when num_labels is 0)."""

    config: RegNetConfig
    zero_init_last_bn: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        pixel_values: jax.Array,
        train: bool = False,
        output_hidden_states: bool = False,
        labels: jax.Array | None = None,
    ) -> ModelOutput:
        """Logits for an NHWC batch; with ``labels``, also the loss chosen by config.problem_type."""
        outputs = RegNetModel(
            self.config, self.zero_init_last_bn, self.axis_name, self.dtype, self.param_dtype, name="regnet"
        )(pixel_values, train, output_hidden_states)
        pooled = outputs.pooler_output.reshape(outputs.pooler_output.shape[0], -1)
        num_labels = self.config.num_labels
        if num_labels > 0:
            # The head runs in float32 whatever ``dtype``: it is cheap and the logits stay float32.
            logits = nn.Dense(
                num_labels,
                dtype=jnp.float32,
                param_dtype=canonical_dtype(self.param_dtype),
                kernel_init=classifier_kernel_init,
                bias_init=nn.initializers.zeros,
                name=_child_name("classifier.1"),
            )(pooled)
        else:
            logits = pooled  # transformers' identity classifier: the flattened pooled features
        loss = None if labels is None else compute_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits, **outputs)

    @classmethod
    def from_pretrained(cls, directory: Any, **kwargs: Any) -> tuple[RegNetForImageClassification, dict[str, Any]]:
        """(module, variables) of a checkpoint directory with a classifier; see regnet_flax.from_pretrained."""
        from .pretrained import from_pretrained

        return from_pretrained(directory, with_head=True, **kwargs)


def compute_loss(logits: jax.Array, labels: Any, config: RegNetConfig) -> jax.Array:
    """The mean loss the core's rule chooses for ``labels``: MSE, cross-entropy or BCE with logits, as transformers."""
    if not hasattr(labels, "dtype"):
        labels = jnp.asarray(labels)
    num_labels = config.num_labels
    choice = choose_loss(
        config.problem_type, num_labels, np.dtype(labels.dtype).name, tuple(labels.shape), logits.shape[0]
    )
    labels = jnp.asarray(labels)
    if choice.function == MSE:
        if choice.squeeze:
            return jnp.mean(jnp.square(jnp.ravel(logits) - jnp.ravel(labels).astype(logits.dtype)))
        return jnp.mean(jnp.square(logits - labels.astype(logits.dtype)))
    if choice.function == CROSS_ENTROPY:
        return _cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1), choice.ignore_index)
    return _binary_cross_entropy_with_logits(logits, labels.astype(logits.dtype))


def _cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
    """Mean cross-entropy over the targets that are not ``ignore_index``."""
    if not isinstance(labels, jax.core.Tracer):
        # Values are only known outside jit; PyTorch raises here too, jnp would silently clamp.
        check_class_targets(labels, logits.shape[-1])
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.sum(valid)


def _binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    # The stable form PyTorch uses: max(x, 0) - x * z + log(1 + exp(-|x|)).
    losses = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.mean(losses)


def model_class(with_head: bool) -> type[RegNetModel] | type[RegNetForImageClassification]:
    """RegNetForImageClassification with a head, RegNetModel without."""
    return RegNetForImageClassification if with_head else RegNetModel


def has_head(module: nn.Module) -> bool:
    """True for RegNetForImageClassification (canonical names under ``regnet.``)."""
    if isinstance(module, RegNetForImageClassification):
        return True
    if isinstance(module, RegNetModel):
        return False
    raise TypeError(f"expected a RegNetModel or RegNetForImageClassification, got {type(module).__name__}")
