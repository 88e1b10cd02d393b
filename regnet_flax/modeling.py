"""RegNet in Flax (Linen), built by iterating the core's specs.

Inputs and hidden states are NHWC. Variables come in two collections: ``params`` (kernels,
biases, BatchNorm scales and shifts) and ``batch_stats`` (BatchNorm running mean and
variance). ``train=True`` normalises with batch statistics and, when ``batch_stats`` is
mutable, updates the running statistics exactly as PyTorch does::

    outputs, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}

Module names follow one rule from the canonical (transformers) names, see ``weights.py``:
``regnet.encoder.stages.0.layers.1.layer.0`` lives at ``regnet/encoder/stages_0/layers_1/layer_0``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from regnet_core.config import RegNetConfig
from regnet_core.outputs import ModelOutput, check_labels, check_pixel_values, resolve_problem_type
from regnet_core.specs import BlockSpec, ModelSpec, StageSpec, build_model_spec
from regnet_core.weights import block_module_names

from .weights import native_module_path

# pycls initialisation (DESIGN decision 8): He-normal with fan-out = k * k * out_channels
# (Flax computes fan-out of an HWIO kernel the same way, groups or not), classifier N(0, 0.01).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
classifier_kernel_init = nn.initializers.normal(stddev=0.01)

# PyTorch's CrossEntropyLoss ignores this target value (transformers relies on it for padding).
IGNORE_INDEX = -100

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    # PyTorch's nn.GELU is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def activation_function(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The activation for a config's hidden_act (identity for None)."""
    if name is None:
        return lambda x: x
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


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


def _conv(
    features: int, kernel_size: int, stride: int = 1, groups: int = 1, use_bias: bool = False, *, name: str
) -> nn.Conv:
    # Explicit symmetric k // 2 padding: "SAME" pads asymmetrically at stride 2 (DESIGN note 5).
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=conv_kernel_init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


class BatchNorm(nn.Module):
    """BatchNorm over NHWC channels with PyTorch's semantics.

    Training normalises with the biased batch variance and moves the running variance
    towards the unbiased one (n / (n - 1)), as torch.nn.BatchNorm2d does; flax's
    nn.BatchNorm stores the biased variance. ``momentum`` is Flax's (0.9 == PyTorch's 0.1).
    With ``axis_name`` the statistics are averaged over that mapped axis (cross-device BN).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    zero_init_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = x.shape[-1]
        scale_init = nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones
        scale = self.param("scale", scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if train:
            mean, var, count = self._batch_statistics(x)
            if not self.is_initializing():
                # Bookkeeping only: no gradient flows into the running statistics (PyTorch detaches too).
                batch_mean, unbiased_var = jax.lax.stop_gradient((mean, var * (count / (count - 1))))
                momentum = self.momentum
                running_mean.value = momentum * running_mean.value + (1 - momentum) * batch_mean
                running_var.value = momentum * running_var.value + (1 - momentum) * unbiased_var
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x - mean) * multiplier + bias

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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _conv(self.features, self.kernel_size, self.stride, self.groups, name="convolution")(x)
        x = BatchNorm(
            momentum=1.0 - self.spec.bn_momentum,  # the spec keeps PyTorch's convention
            epsilon=self.spec.bn_eps,
            axis_name=self.axis_name,
            zero_init_scale=self.zero_init_scale,
            name="normalization",
        )(x, train)
        return activation_function(self.activation)(x)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate."""

    se_width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        attention = _conv(self.se_width, 1, use_bias=True, name=_child_name("attention.0"))(pooled)
        attention = jax.nn.relu(attention)  # always ReLU, whatever hidden_act (paper, pycls, transformers)
        attention = _conv(x.shape[-1], 1, use_bias=True, name=_child_name("attention.2"))(attention)
        return x * jax.nn.sigmoid(attention)


class Bottleneck(nn.Module):
    """Residual bottleneck: 1x1, grouped 3x3 (stride here), optional SE, 1x1; projection when shapes change."""

    block: BlockSpec
    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        block, spec = self.block, self.spec
        # Layer positions (SE shifts the last conv from layer.2 to layer.3) come from the core.
        names = {role: _child_name(path) for role, path in block_module_names(block).items()}
        conv_norm = functools.partial(ConvNormAct, spec=spec, axis_name=self.axis_name)
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
            hidden = SqueezeExcitation(block.se_width, name=names["se"])(hidden)
        hidden = conv_norm(block.width, 1, zero_init_scale=self.zero_init_last_bn, name=names["c"])(hidden, train)
        return activation_function(spec.activation)(hidden + residual)


class Stage(nn.Module):
    """The blocks of one stage, named ``layers_0``, ``layers_1``, ..."""

    stage: StageSpec
    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for index, block in enumerate(self.stage.blocks):
            x = Bottleneck(
                block, self.spec, self.axis_name, self.zero_init_last_bn, name=_child_name(f"layers.{index}")
            )(x, train)
        return x


class Encoder(nn.Module):
    """All stages; returns the output of each."""

    spec: ModelSpec
    axis_name: str | None = None
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        outputs = []
        for index, stage in enumerate(self.spec.stages):
            x = Stage(stage, self.spec, self.axis_name, self.zero_init_last_bn, name=_child_name(f"stages.{index}"))(
                x, train
            )
            outputs.append(x)
        return outputs


class Embeddings(nn.Module):
    """The stem: 3x3 stride-2 conv, BN, activation."""

    spec: ModelSpec
    axis_name: str | None = None

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False) -> jax.Array:
        stem = self.spec.stem
        return ConvNormAct(
            stem.width,
            stem.kernel_size,
            self.spec,
            stride=stem.stride,
            activation=self.spec.activation,
            axis_name=self.axis_name,
            name="embedder",
        )(pixel_values, train)


def check_input(pixel_values: jax.Array, num_channels: int) -> None:
    """Raise ValueError unless ``pixel_values`` is a float NHWC batch with ``num_channels`` channels."""
    check_pixel_values(
        tuple(pixel_values.shape),
        bool(jnp.issubdtype(pixel_values.dtype, jnp.floating)),
        str(pixel_values.dtype),
        num_channels,
        "NHWC",
    )


def _spec_of(config: RegNetConfig) -> ModelSpec:
    if not isinstance(config, RegNetConfig):
        raise TypeError(f"expected a RegNetConfig, got {type(config).__name__}")
    return build_model_spec(config)


class RegNetModel(nn.Module):
    """The RegNet trunk: stem and stages, with global average pooling (NHWC)."""

    config: RegNetConfig
    zero_init_last_bn: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False, output_hidden_states: bool = False) -> ModelOutput:
        """NHWC float batch -> last_hidden_state, pooler_output (B, 1, 1, C), hidden_states (stem, every stage)."""
        spec = _spec_of(self.config)
        check_input(pixel_values, spec.stem.input_width)
        hidden_state = Embeddings(spec, self.axis_name, name="embedder")(pixel_values, train)
        stage_outputs = Encoder(spec, self.axis_name, self.zero_init_last_bn, name="encoder")(hidden_state, train)
        last_hidden_state = stage_outputs[-1]
        return ModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=jnp.mean(last_hidden_state, axis=(1, 2), keepdims=True),
            hidden_states=(hidden_state, *stage_outputs) if output_hidden_states else None,
        )

    @classmethod
    def from_pretrained(cls, directory: Any, **kwargs: Any) -> tuple[RegNetModel, dict[str, Any]]:
        """(module, variables) of a checkpoint directory's trunk; see regnet_flax.from_pretrained."""
        from .pretrained import from_pretrained

        return from_pretrained(directory, with_head=False, **kwargs)


class RegNetForImageClassification(nn.Module):
    """RegNet trunk plus a linear classifier on the pooled features (identity when num_labels is 0)."""

    config: RegNetConfig
    zero_init_last_bn: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(
        self,
        pixel_values: jax.Array,
        train: bool = False,
        output_hidden_states: bool = False,
        labels: jax.Array | None = None,
    ) -> ModelOutput:
        """Logits for an NHWC batch; with ``labels``, also the loss chosen by config.problem_type."""
        outputs = RegNetModel(self.config, self.zero_init_last_bn, self.axis_name, name="regnet")(
            pixel_values, train, output_hidden_states
        )
        pooled = outputs.pooler_output.reshape(outputs.pooler_output.shape[0], -1)
        num_labels = self.config.num_labels
        if num_labels > 0:
            logits = nn.Dense(
                num_labels,
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


def _is_integer_labels(labels: Any) -> bool:
    # transformers (and so regnet_pt) treat only int32 / int64 labels as class indices.
    return np.dtype(labels.dtype) in (np.dtype(np.int32), np.dtype(np.int64))


def compute_loss(logits: jax.Array, labels: Any, config: RegNetConfig) -> jax.Array:
    """Regression (MSE), single-label (cross-entropy) or multi-label (BCE with logits) mean loss, as transformers."""
    if not hasattr(labels, "dtype"):
        labels = jnp.asarray(labels)
    num_labels = config.num_labels
    problem_type = resolve_problem_type(config.problem_type, num_labels, _is_integer_labels(labels))
    check_labels(problem_type, tuple(labels.shape), logits.shape[0], num_labels)
    labels = jnp.asarray(labels)
    if problem_type == "regression":
        if num_labels == 1:
            return jnp.mean(jnp.square(jnp.squeeze(logits) - jnp.squeeze(labels).astype(logits.dtype)))
        return jnp.mean(jnp.square(logits - labels.astype(logits.dtype)))
    if problem_type == "single_label_classification":
        return _cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return _binary_cross_entropy_with_logits(logits, labels.astype(logits.dtype))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the targets that are not IGNORE_INDEX (PyTorch's default)."""
    if not isinstance(labels, jax.core.Tracer):
        # Values are only known outside jit; PyTorch raises here too, jnp would silently clamp.
        values = np.asarray(labels)
        bad = values[(values != IGNORE_INDEX) & ((values < 0) | (values >= logits.shape[-1]))]
        if bad.size:
            raise ValueError(
                f"single-label targets must be in [0, {logits.shape[-1]}) or {IGNORE_INDEX}, got {bad[:5].tolist()}"
            )
    labels = labels.astype(jnp.int32)
    valid = labels != IGNORE_INDEX
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
