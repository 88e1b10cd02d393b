"""RegNet in TensorFlow (Keras 3), built by iterating the core's specs.

NHWC in, NHWC out. Layer names come from ``regnet_tf.weights`` so that variable paths
(``regnet/stage_1/block_0/b/conv/kernel``) match the native table the weight mapping uses.
Numerics follow PyTorch: symmetric ``k // 2`` padding (never "SAME", which pads
asymmetrically at stride 2), BatchNorm with eps 1e-5 whose running variance is updated
with the unbiased batch variance, exact (erf) GELU.

Speed: in inference, BatchNorm is folded into the convolution before it (kernel times
scale, plus a bias) where that costs fewer operations than normalising the output (never
for a batch of one, where it measured slower), so that TensorFlow's graph rewriter fuses
convolution, bias, residual sum and activation into one oneDNN kernel. An eager inference call (``model(x)`` outside any ``tf.function``, tape or
Keras tracing, training off) runs through a ``tf.function`` compiled once per input
signature and kept on the model (relaxed to any batch size after the second signature), as
``predict`` does; ``compiled_calls(False)`` turns that off. ``predict`` on an in-memory
array or tensor feeds the batches straight to Keras' predict function, without tf.data.

Mixed precision: Keras' ``mixed_bfloat16`` policy (global, or ``dtype=`` given to a model)
computes convolutions and the classifier in bfloat16 while every variable stays float32;
BatchNorm (statistics, folding) and the global means run in float32, and ``logits`` and
``pooler_output`` come back float32 (hidden states and feature maps stay bfloat16).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common import global_state
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from tensorflow.python.eager import record

from regnet_core.checkpoint import save_checkpoint
from regnet_core.config import RegNetConfig, reject_keywords, require_config
from regnet_core.convert import load_pretrained
from regnet_core.outputs import (
    CROSS_ENTROPY,
    IGNORE_INDEX,
    MSE,
    ModelOutput,
    check_class_targets,
    check_pixel_values,
    choose_loss,
    class_targets_rule,
    labels_are_integers,
    resolve_problem_type,
)
from regnet_core.resources import check_memory
from regnet_core.rules import (
    CLASSIFIER_BIAS,
    CLASSIFIER_WEIGHT_STD,
    GELU,
    RELU,
    SE_ACTIVATION,
    SE_GATE,
    SIGMOID,
    SILU,
    TANH,
    subsample_before_convolving,
)
from regnet_core.rules import activation_function as activation_kind
from regnet_core.specs import BlockSpec, ModelSpec, StageSpec, build_model_spec

from . import KerasBackendError
from . import weights as native
from .weights import assign_canonical, read_canonical

if keras.config.backend() != "tensorflow":  # regnet_tf/__init__ sets it; someone changed it since
    raise KerasBackendError(
        f"regnet_tf needs Keras on the 'tensorflow' backend, but keras loaded on {keras.config.backend()!r}"
    )

# TensorFlow's function for each activation the core's rules name.
_FUNCTIONS = {
    RELU: tf.nn.relu,
    SILU: tf.nn.silu,
    GELU: lambda x: tf.nn.gelu(x, approximate=False),  # the exact erf form
    TANH: tf.math.tanh,
    SIGMOID: tf.math.sigmoid,
}


def register_outputs_with_keras_tree(output_class: type[ModelOutput] = ModelOutput) -> None:
    """Let Keras' symbolic (functional API) tracing see into ModelOutput (or a subclass), as it sees into dicts."""
    try:
        import optree
    except ImportError:  # Keras on dm-tree: outputs stay opaque to the functional API
        return
    try:
        optree.register_pytree_node(
            output_class,
            lambda output: (list(output.values()), list(output.keys()), list(output.keys())),
            lambda keys, children: output_class(zip(keys, children, strict=True)),
            namespace="keras",
        )
    except ValueError:  # already registered (module reloaded)
        pass


register_outputs_with_keras_tree(ModelOutput)


def activation_function(name: str | None) -> Any:
    """The TensorFlow function for a config's hidden_act (identity for None); unknown names raise ValueError."""
    kind = activation_kind(name)
    return tf.identity if kind is None else _FUNCTIONS[kind]


_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16"}


def resolve_dtype(dtype: Any = None) -> str:
    """The Keras dtype policy name for ``dtype``: "float32" or "mixed_bfloat16" (None: Keras' global policy).

    "bfloat16" means mixed bfloat16 (variables stay float32). Other policies raise ValueError.
    """
    if dtype is None:
        dtype = keras.config.dtype_policy()
    if isinstance(dtype, dict):
        dtype = keras.dtype_policies.deserialize(dtype)
    name = getattr(dtype, "name", dtype)
    if isinstance(name, tf.dtypes.DType):
        name = name.name
    if name not in _POLICIES:
        raise ValueError(
            f"RegNet in TensorFlow computes in float32 or mixed bfloat16; got dtype {name!r} "
            f"(use one of {sorted(_POLICIES)} or None for Keras' global policy)"
        )
    return _POLICIES[name]


def _conv_initializer(skip_init: bool) -> keras.initializers.Initializer:
    # pycls: N(0, sqrt(2 / fan_out)), fan_out = kh * kw * out_channels (Keras' fan_out for HWIO kernels).
    if skip_init:
        return keras.initializers.Zeros()
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def onednn_enabled() -> bool:
    """True when TensorFlow runs its oneDNN CPU kernels (which can differentiate grouped convolutions)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover (a TensorFlow without the flag: assume its default kernels)
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def _per_group_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, groups: int, stride: int) -> tf.Tensor:
    """A grouped VALID convolution as one convolution per group: differentiable on every CPU kernel set."""
    input_groups = tf.split(inputs, groups, axis=-1)
    kernel_groups = tf.split(kernel, groups, axis=-1)
    outputs = [
        tf.nn.conv2d(x, k, strides=stride, padding="VALID") for x, k in zip(input_groups, kernel_groups, strict=True)
    ]
    return tf.concat(outputs, axis=-1)


class Convolution(keras.layers.Layer):
    """2-D convolution with symmetric ``k // 2`` zero padding, optional groups and bias (computed in the input's dtype)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        skip_init: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups, self.use_bias = kernel_size, stride, groups, use_bias
        self._skip_init = skip_init
        # A small strided 1x1 convolution takes every stride-th pixel first (oneDNN's strided path
        # corrupts memory in its backward pass there: see regnet_core.rules).
        self._subsample = subsample_before_convolving(kernel_size, stride, in_channels)
        pad = kernel_size // 2
        # Symmetric padding as PyTorch: "SAME" would pad (0, 1) at stride 2 on even inputs.
        self._padding = None if pad == 0 else [[0, 0], [pad, pad], [pad, pad], [0, 0]]

    def build(self, input_shape: Any = None) -> None:
        shape = (self.kernel_size, self.kernel_size, self.in_channels // self.groups, self.out_channels)
        # Not autocast: convolve() casts to the input's dtype itself, after any BatchNorm folding in float32.
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=_conv_initializer(self._skip_init), autocast=False
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros", autocast=False)
            if self.use_bias
            else None
        )

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.convolve(inputs, self.kernel, self.bias)

    def convolve(self, inputs: tf.Tensor, kernel: Any, bias: Any = None) -> tf.Tensor:
        """Convolve ``inputs`` with ``kernel`` (HWIO) and add ``bias`` (if any), both cast to the input's dtype."""
        # tf.pad + "VALID" rather than conv2d's explicit padding: on CPU (TF 2.21) the gradient of
        # an explicitly padded grouped convolution is unimplemented outside XLA, the VALID one works;
        # oneDNN fuses the pad into the convolution. tf.nn.conv2d infers the groups from the kernel.
        kernel = tf.cast(kernel, inputs.dtype)
        if self._padding is not None:
            inputs = tf.pad(inputs, self._padding)
        stride = self.stride
        if self._subsample:
            inputs, stride = inputs[:, ::stride, ::stride, :], 1
        if self.groups > 1 and not onednn_enabled():
            outputs = _per_group_conv2d(inputs, kernel, self.groups, stride)
        else:
            outputs = tf.nn.conv2d(inputs, kernel, strides=stride, padding="VALID")
        if bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype))
        return outputs

    def output_positions(self, input_shape: tf.TensorShape) -> int | None:
        """Output values per channel (batch x height x width) for ``input_shape``; None when height or width is unknown.

        An unknown batch counts as 1.
        """
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        if height is None or width is None:
            return None
        pad = 2 * (self.kernel_size // 2)
        rows = (height + pad - self.kernel_size) // self.stride + 1
        columns = (width + pad - self.kernel_size) // self.stride + 1
        return (batch or 1) * rows * columns


class BatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis with PyTorch's numerics, computed in float32 whatever the input's dtype.

    Training mode normalises with the biased batch variance and updates the moving
    variance with the unbiased one (n / (n - 1), n = batch * height * width), as
    PyTorch does; Keras' own BatchNormalization uses the biased variance for both.

    Under a ``tf.distribute`` strategy with more than one replica in sync (MirroredStrategy,
    MultiWorkerMirroredStrategy, TPUStrategy), training statistics are those of the global
    batch: per-channel sums and counts, then sums of squared deviations from the global
    mean, are all-reduced across replicas (two passes, as on one device), so ``fit`` under the
    strategy takes the step ``fit`` takes on one device with the same global batch. This is
    Keras' ``synchronized=True``, on by default here; ``synchronized = False`` (or the model's
    ``sync_batchnorm(False)``) keeps each replica's own statistics and saves the all-reduces.
    """

    synchronized: bool = True

    def __init__(
        self, channels: int, epsilon: float, momentum: float, gamma_initializer: str = "ones", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.channels, self.epsilon, self.momentum = channels, epsilon, momentum
        self._gamma_initializer = gamma_initializer

    def build(self, input_shape: Any = None) -> None:
        shape = (self.channels,)
        # Never autocast: statistics and affine parameters stay float32 under mixed precision.
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer=self._gamma_initializer, autocast=False)
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer="zeros", trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer="ones", trainable=False, autocast=False
        )

    def inference_scale_and_shift(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(scale, shift), float32, with ``x * scale + shift`` the inference-mode normalisation."""
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        return scale, self.beta - self.moving_mean * scale

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        compute_dtype = inputs.dtype
        inputs = tf.cast(inputs, tf.float32)
        if training:
            values_per_channel = inputs.shape[:-1]
            if values_per_channel.is_fully_defined() and values_per_channel.num_elements() == 1:
                # PyTorch refuses too: one value gives no variance (and n - 1 = 0).
                raise ValueError(
                    f"BatchNorm in training mode needs more than one value per channel, got input shape {tuple(inputs.shape)}"
                )
            mean, variance, count = self._batch_moments(inputs)
            unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
            # Fewer than 2 values per channel (an empty batch whose size was unknown when traced, e.g. a
            # dataset's under fit) has no variance and NaN moments: the running statistics stay as they were,
            # and an empty batch is normalised with (0, 1) so that no NaN reaches gamma's or beta's gradient.
            # Eager calls and static shapes never get here: check_input and the test above refuse them.
            has_values = count > 0.0
            mean = tf.where(has_values, mean, tf.zeros_like(mean))
            variance = tf.where(has_values, variance, tf.ones_like(variance))
            update = count > 1.0
            new_mean = self.momentum * self.moving_mean + (1.0 - self.momentum) * mean
            new_variance = self.momentum * self.moving_variance + (1.0 - self.momentum) * unbiased
            self.moving_mean.assign(tf.where(update, new_mean, self.moving_mean))
            self.moving_variance.assign(tf.where(update, new_variance, self.moving_variance))
            scale = self.gamma * tf.math.rsqrt(variance + self.epsilon)
            shift = self.beta - mean * scale
        else:
            scale, shift = self.inference_scale_and_shift()
        return tf.cast(inputs * scale + shift, compute_dtype)

    def _batch_moments(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(mean, biased variance, values per channel) of the batch: the global batch across synchronised replicas."""
        axes = [0, 1, 2]
        local_count = tf.cast(tf.size(inputs) // self.channels, inputs.dtype)
        replica = synchronizing_replica_context() if self.synchronized else None
        if replica is None:
            mean, variance = tf.nn.moments(inputs, axes=axes)
            return mean, variance, local_count
        # One all-reduce for the sums and the count, one for the squared deviations from the
        # global mean: the two-pass moments of the global batch (E[x^2] - E[x]^2 loses digits).
        # all_reduce is differentiable: its gradient is the all-reduce of the incoming gradients.
        totals = replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.concat([tf.reduce_sum(inputs, axis=axes), local_count[None]], axis=0)
        )
        sums, count = totals[:-1], totals[-1]
        mean = sums / count
        squares = tf.reduce_sum(tf.math.squared_difference(inputs, tf.stop_gradient(mean)), axis=axes)
        variance = replica.all_reduce(tf.distribute.ReduceOp.SUM, squares) / count
        return mean, variance, count


def synchronizing_replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context to all-reduce BatchNorm statistics in: one with more than one replica in sync, else None."""
    replica = tf.distribute.get_replica_context()  # None in a cross-replica context
    if replica is None or replica.num_replicas_in_sync <= 1:
        return None
    return replica


class ConvNormAct(keras.layers.Layer):
    """Convolution (no bias), BatchNorm, optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        spec: ModelSpec,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = None,
        zero_init_gamma: bool = False,
        skip_init: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.convolution = Convolution(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            groups,
            skip_init=skip_init,
            name=native.CONV_LAYER,
            dtype=self.dtype_policy,
        )
        self.normalization = BatchNorm(
            out_channels,
            spec.bn_eps,
            1.0 - spec.bn_momentum,  # PyTorch momentum 0.1 is Keras momentum 0.9
            gamma_initializer="zeros" if zero_init_gamma else "ones",
            name=native.BN_LAYER,
            dtype=self.dtype_policy,
        )
        self.activation = activation_function(activation)

    def build(self, input_shape: Any = None) -> None:
        self.convolution.build(input_shape)
        self.normalization.build(input_shape)

    def folds_in_inference(self, input_shape: tf.TensorShape) -> bool:
        """Whether inference folds BatchNorm into the kernel for inputs of ``input_shape``.

        Folding multiplies the kernel (k * k * in / groups values per output channel) once per
        call; not folding normalises the output (batch * height * width values per channel,
        in about three elementwise passes that the convolution cannot absorb). Fold when that
        is cheaper, always when the image size is unknown (an unknown batch counts as 1), but
        never for a batch of one: there oneDNN's fused kernels measured 5 to 25% slower than a
        plain convolution followed by the elementwise ops (TF 2.21, AVX2).
        """
        if input_shape[0] == 1:
            return False
        positions = self.convolution.output_positions(input_shape)
        per_channel = self.convolution.kernel_size**2 * (self.convolution.in_channels // self.convolution.groups)
        return positions is None or per_channel <= 3 * positions

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        if training or not self.folds_in_inference(inputs.shape):
            return self.activation(self.normalization(self.convolution(inputs), training=training))
        # Inference, folded: conv(x, kernel * scale) + shift, which TensorFlow fuses (with the
        # activation, or with a following residual sum and activation) into one kernel.
        scale, shift = self.normalization.inference_scale_and_shift()
        return self.activation(self.convolution.convolve(inputs, self.convolution.kernel * scale, shift))


class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation: global mean, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate."""

    def __init__(self, channels: int, se_width: int, skip_init: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduce = Convolution(
            channels, se_width, 1, use_bias=True, skip_init=skip_init, name=native.SE_REDUCE, dtype=self.dtype_policy
        )
        self.expand = Convolution(
            se_width, channels, 1, use_bias=True, skip_init=skip_init, name=native.SE_EXPAND, dtype=self.dtype_policy
        )

    def build(self, input_shape: Any = None) -> None:
        self.reduce.build(input_shape)
        self.expand.build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        squeezed = tf.cast(tf.reduce_mean(tf.cast(inputs, tf.float32), axis=[1, 2], keepdims=True), inputs.dtype)
        # The SE activation and gate are fixed by the core's rules, whatever hidden_act is.
        gate = _FUNCTIONS[SE_GATE](self.expand(_FUNCTIONS[SE_ACTIVATION](self.reduce(squeezed))))
        return inputs * gate


class Bottleneck(keras.layers.Layer):
    """Residual bottleneck: 1x1, grouped 3x3 (stride here), optional SE, 1x1; projection when shapes change."""

    def __init__(
        self, block: BlockSpec, spec: ModelSpec, zero_init_last_bn: bool = False, skip_init: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.projection = (
            ConvNormAct(
                block.input_width,
                block.width,
                1,
                spec,
                block.stride,
                skip_init=skip_init,
                name=native.PROJECTION,
                dtype=self.dtype_policy,
            )
            if block.has_projection
            else None
        )
        self.conv_a = ConvNormAct(
            block.input_width,
            block.bottleneck_width,
            1,
            spec,
            activation=spec.activation,
            skip_init=skip_init,
            name=native.CONV_A,
            dtype=self.dtype_policy,
        )
        self.conv_b = ConvNormAct(
            block.bottleneck_width,
            block.bottleneck_width,
            3,
            spec,
            block.stride,
            block.groups,
            activation=spec.activation,
            skip_init=skip_init,
            name=native.CONV_B,
            dtype=self.dtype_policy,
        )
        self.squeeze_excitation = (
            SqueezeExcitation(
                block.bottleneck_width,
                block.se_width,
                skip_init=skip_init,
                name=native.SE_LAYER,
                dtype=self.dtype_policy,
            )
            if block.has_se
            else None
        )
        self.conv_c = ConvNormAct(
            block.bottleneck_width,
            block.width,
            1,
            spec,
            zero_init_gamma=zero_init_last_bn,
            skip_init=skip_init,
            name=native.CONV_C,
            dtype=self.dtype_policy,
        )
        self.activation = activation_function(spec.activation)

    def _sublayers(self) -> list[keras.layers.Layer]:
        layers = [self.projection, self.conv_a, self.conv_b, self.squeeze_excitation, self.conv_c]
        return [layer for layer in layers if layer is not None]

    def build(self, input_shape: Any = None) -> None:
        for layer in self._sublayers():
            layer.build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        residual = inputs if self.projection is None else self.projection(inputs, training=training)
        hidden = self.conv_b(self.conv_a(inputs, training=training), training=training)
        if self.squeeze_excitation is not None:
            hidden = self.squeeze_excitation(hidden)
        hidden = self.conv_c(hidden, training=training)
        return self.activation(hidden + residual)


class Stage(keras.layers.Layer):
    """The blocks of one stage."""

    def __init__(
        self, stage: StageSpec, spec: ModelSpec, zero_init_last_bn: bool = False, skip_init: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.blocks = [
            Bottleneck(
                block, spec, zero_init_last_bn, skip_init, name=native.block_name(index), dtype=self.dtype_policy
            )
            for index, block in enumerate(stage.blocks)
        ]

    def build(self, input_shape: Any = None) -> None:
        for block in self.blocks:
            block.build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        hidden = inputs
        for block in self.blocks:
            hidden = block(hidden, training=training)
        return hidden


def trunk_layers(
    spec: ModelSpec, zero_init_last_bn: bool = False, skip_init: bool = False, dtype: Any = None
) -> tuple[ConvNormAct, list[Stage]]:
    """The stem and the stages of ``spec``, under the native layer names (``stem``, ``stage_0``, ...), in policy ``dtype``."""
    stem = ConvNormAct(
        spec.stem.input_width,
        spec.stem.width,
        spec.stem.kernel_size,
        spec,
        spec.stem.stride,
        activation=spec.activation,
        skip_init=skip_init,
        name=native.STEM,
        dtype=dtype,
    )
    stages = [
        Stage(stage, spec, zero_init_last_bn, skip_init, name=native.stage_name(index), dtype=dtype)
        for index, stage in enumerate(spec.stages)
    ]
    return stem, stages


def check_input(pixel_values: tf.Tensor, num_channels: int) -> None:
    """Raise ValueError unless ``pixel_values`` is a float NHWC batch with ``num_channels`` channels (static shape)."""
    shape = pixel_values.shape
    if shape.rank is None:
        raise ValueError("pixel_values must be a 4-D NHWC batch with a known rank, got a tensor of unknown rank")
    dtype = tf.as_dtype(pixel_values.dtype)
    check_pixel_values(tuple(shape.as_list()), dtype.is_floating, dtype.name, num_channels, "NHWC")


def labels_loss(logits: tf.Tensor, labels: tf.Tensor, num_labels: int, problem_type: str | None = None) -> tf.Tensor:
    """The loss transformers' PyTorch RegNet computes for ``labels``, as the core's rule chooses it.

    Regression: MSE (both sides flattened when num_labels is 1); single-label: mean
    cross-entropy over targets other than the ignored index (-100); multi-label: mean BCE with logits.
    """
    labels = tf.convert_to_tensor(labels)
    choice = choose_loss(
        problem_type, num_labels, tf.as_dtype(labels.dtype).name, tuple(labels.shape.as_list()), logits.shape[0]
    )
    if choice.function == MSE:
        labels = tf.cast(labels, logits.dtype)
        if choice.squeeze:
            return tf.reduce_mean(tf.square(tf.reshape(logits, [-1]) - tf.reshape(labels, [-1])))
        return tf.reduce_mean(tf.square(logits - labels))
    if choice.function == CROSS_ENTROPY:
        if tf.executing_eagerly():  # in a graph TensorFlow's own check raises when the step runs
            check_class_targets(labels.numpy(), num_labels)
        targets = tf.reshape(tf.cast(labels, tf.int64), [-1])
        keep = tf.not_equal(targets, choice.ignore_index)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(keep, targets, tf.zeros_like(targets)), logits=tf.reshape(logits, [-1, num_labels])
        )
        weights = tf.cast(keep, logits.dtype)
        return tf.reduce_sum(per_example * weights) / tf.reduce_sum(weights)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits))


# ----------------------------------------------------------------------------- compiled eager calls

_COMPILED_CALLS = True


@contextlib.contextmanager
def compiled_calls(enabled: bool = True) -> Iterator[None]:
    """Within the block, eager inference calls run through each model's compiled function (True) or op by op (False)."""
    global _COMPILED_CALLS
    previous, _COMPILED_CALLS = _COMPILED_CALLS, bool(enabled)
    try:
        yield
    finally:
        _COMPILED_CALLS = previous


@functools.cache
def _call_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.call`` without ``self``."""
    signature = inspect.signature(cls.call)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _is_eager_array(value: Any) -> bool:
    """A numpy array or an eager (not symbolic, not Keras) tensor."""
    return isinstance(value, np.ndarray) or (isinstance(value, tf.Tensor) and not tf.is_symbolic_tensor(value))


def _may_compile_here(model: keras.Model) -> bool:
    """True at the top of an eager call that nothing records or traces (no tape, Keras call, stateless scope)."""
    return not (
        record.could_possibly_record()  # a GradientTape or ForwardAccumulator is active
        or global_state.get_global_attribute("current_call_ctx") is not None  # inside another layer's call
        or in_stateless_scope()
        or in_symbolic_scope()
        or model.run_eagerly
        or tf.config.functions_run_eagerly()
    )


class _Inference:
    """The Python function of a model's inference tf.function: the model called with training off.

    A callable object rather than a closure: TensorFlow counts traces per Python code object,
    and would warn about "retracing" when many models each trace their own function once. It
    holds the model weakly (the function is kept on the model).
    """

    def __init__(self, model: keras.Model, output_hidden_states: bool) -> None:
        self._model = weakref.ref(model)
        self._output_hidden_states = output_hidden_states
        self.__name__ = f"{model.name}_inference"

    def __call__(self, pixel_values: tf.Tensor) -> ModelOutput:
        return self._model()(pixel_values, output_hidden_states=self._output_hidden_states, training=False)


def _floatx_batch(batch: Any) -> Any:
    """A floating batch in Keras' floatx (as Keras' array adapter makes it); other dtypes unchanged."""
    floatx = keras.config.floatx()
    dtype = tf.as_dtype(batch.dtype)
    if dtype.is_floating and dtype.name != floatx:
        return tf.cast(batch, floatx) if isinstance(batch, tf.Tensor) else batch.astype(floatx)
    return batch


def _concatenate_batches(*parts: Any) -> np.ndarray:
    """One numpy array from the batches' outputs."""
    if len(parts) == 1:
        return keras.ops.convert_to_numpy(parts[0])
    return np.concatenate([keras.ops.convert_to_numpy(part) for part in parts], axis=0)


# Keywords a RegNet Keras model hands to keras.Model (every other keyword is refused by name).
_KERAS_KEYWORDS = ("name", "dtype", "trainable", "autocast")


def _default_name(base: str) -> str:
    # Keras would derive "reg_net_model" from the class name; keep its uniquifying scheme.
    uid = keras.backend.get_uid(base)
    return base if uid == 1 else f"{base}_{uid - 1}"


class RegNetPreTrainedModel(keras.Model):
    """Shared construction, compiled eager inference, direct predict, checkpoint I/O and Keras serialisation.

    ``dtype`` (a keyword of every model): "float32", "mixed_bfloat16" (or "bfloat16", the same)
    or None for Keras' global policy; variables are float32 either way.
    """

    with_head = False
    default_name = "regnet"
    # The call arguments an eager call may have to run through the compiled function.
    _compiled_arguments = frozenset({"pixel_values", "output_hidden_states", "training"})

    def __init__(self, config: RegNetConfig, **kwargs: Any) -> None:
        # Refused before anything is allocated: a config that is no RegNet, an unknown keyword, or
        # weights that cannot fit in memory (allow_large=True skips that guard).
        require_config(config, type(self).__name__)
        allow_large = bool(kwargs.pop("allow_large", False))
        reject_keywords(
            {key: value for key, value in kwargs.items() if key not in _KERAS_KEYWORDS},
            type(self).__name__ + "()",
            ("zero_init_last_bn", "allow_large", *_KERAS_KEYWORDS),
        )
        check_memory(config, self.with_head, allow_large, what=type(self).__name__)
        if kwargs.get("name") is None:
            kwargs["name"] = _default_name(self.default_name)
        kwargs["dtype"] = resolve_dtype(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.config = config
        self.spec = build_model_spec(config)

    # -------------------------------------------------------------- compiled eager inference
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' call; an eager inference call runs the model's compiled function instead (same outputs).

        It does when called eagerly at the top level with a numpy array or eager tensor,
        training off, no gradient tape or forward accumulator active, not ``run_eagerly``
        and ``compiled_calls`` not turned off; every other call (training, under a tape,
        inside ``tf.function`` or another layer, Keras symbolic inputs) is Keras' own.
        """
        if _COMPILED_CALLS and tf.executing_eagerly():
            arguments = self._compiled_call_arguments(args, kwargs)
            if arguments is not None:
                return self._call_compiled(arguments)
        return super().__call__(*args, **kwargs)

    def _compiled_call_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The call's arguments by name when it may run compiled, else None."""
        try:
            arguments = _call_signature(type(self)).bind(*args, **kwargs).arguments
        except TypeError:  # let Keras report it
            return None
        training = arguments.get("training")
        hidden_states = arguments.get("output_hidden_states")
        if (
            not set(arguments) <= self._compiled_arguments
            or not (training is None or training is False)
            or not (hidden_states is None or isinstance(hidden_states, bool))
            or not _is_eager_array(arguments.get("pixel_values"))
            or not _may_compile_here(self)
        ):
            return None
        return arguments

    def _call_compiled(self, arguments: dict[str, Any]) -> ModelOutput:
        """Convert and check the input as Keras and ``call`` do, then run the compiled function."""
        pixel_values = self.dtype_policy.convert_input(arguments["pixel_values"], self.autocast, self.input_dtype)
        check_input(pixel_values, self.spec.stem.input_width)
        function = self.inference_function(bool(arguments.get("output_hidden_states")))
        return self._compiled_outputs(function(pixel_values), arguments)

    def _compiled_outputs(self, outputs: ModelOutput, arguments: dict[str, Any]) -> ModelOutput:
        """The compiled function's outputs completed from the call's other arguments (nothing to add here)."""
        return outputs

    def inference_function(self, output_hidden_states: bool = False) -> Any:
        """The model's inference ``tf.function`` (NHWC batch -> outputs, training off), made once and kept.

        ``reduce_retracing``: a second input shape traces a function for any batch size (and,
        for a third, any image size), so calls with varying shapes trace a few times at most.
        Eager inference calls run through it; ``experimental_get_tracing_count()`` counts traces.
        """
        functions = self.__dict__.setdefault("_regnet_inference_functions", {})  # untracked by Keras and SavedModel
        if output_hidden_states not in functions:
            inference = _Inference(self, output_hidden_states)
            functions[output_hidden_states] = tf.function(inference, reduce_retracing=True, autograph=False)
        return functions[output_hidden_states]

    # -------------------------------------------------------------- predict without tf.data
    def predict(
        self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: Any = None, callbacks: Any = None
    ) -> Any:
        """Keras' predict; an in-memory array or eager tensor goes to the predict function batch by batch.

        Same predict function (``predict_step``, ``jit_compile``), callbacks, progress bar and
        outputs as Keras, without Keras' tf.data pipeline, whose set-up and tear-down cost more
        than a batch's inference. Datasets, generators, ``steps``, a distribution strategy or
        ``steps_per_execution`` > 1 take Keras' own path.
        """
        if not self._predicts_directly(x, steps):
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)
        from keras.src.callbacks.callback_list import CallbackList

        num_samples = int(x.shape[0])
        batch_size = 32 if batch_size is None else int(batch_size)
        num_batches = -(-num_samples // batch_size)
        self.make_predict_function()
        if not isinstance(callbacks, CallbackList):
            callbacks = CallbackList(
                callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1, steps=num_batches, model=self
            )
        self.stop_predicting = False
        callbacks.on_predict_begin()
        batches: list[Any] = []
        for step in range(num_batches):
            callbacks.on_predict_batch_begin(step)
            batch_outputs = self.predict_function([(_floatx_batch(x[step * batch_size : (step + 1) * batch_size]),)])
            batches.append(batch_outputs)
            callbacks.on_predict_batch_end(step, {"outputs": batch_outputs})
            if self.stop_predicting:
                break
        callbacks.on_predict_end()
        return keras.tree.map_structure(_concatenate_batches, *batches)

    def _predicts_directly(self, x: Any, steps: Any) -> bool:
        """Whether predict may batch ``x`` itself: an array or eager tensor of samples, default strategy, one step."""
        return (
            _is_eager_array(x)
            and len(x.shape) > 0
            and int(x.shape[0]) > 0
            and steps is None
            and getattr(self, "_distribute_strategy", None) is None
            and not tf.distribute.has_strategy()
            and int(getattr(self, "steps_per_execution", 1) or 1) == 1
        )

    @property
    def input_shape_nhwc(self) -> tuple[None, None, None, int]:
        """The (batch, height, width, channels) shape the model accepts: any size, config.num_channels channels."""
        return (None, None, None, self.spec.stem.input_width)

    # -------------------------------------------------------------- distributed training
    def sync_batchnorm(self, enabled: bool = True) -> RegNetPreTrainedModel:
        """Whether training BatchNorm uses the global batch's statistics under a multi-replica strategy; returns self.

        On by default (see ``BatchNorm``): ``fit`` under MirroredStrategy then equals ``fit`` on
        one device with the same global batch. ``False`` normalises each replica with its own
        share of the batch (no all-reduce; the step then differs from the one-device step).
        """
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, BatchNorm):
                layer.synchronized = bool(enabled)
        return self

    # -------------------------------------------------------------- checkpoints
    def canonical_state(self) -> dict[str, Any]:
        """The weights as canonical numpy arrays (transformers names and layouts)."""
        return read_canonical(self)

    def load_canonical_state(
        self, state: dict[str, Any], *, reinit_head: bool = False, context: str = ""
    ) -> RegNetPreTrainedModel:
        """Assign canonical numpy weights, strictly; with ``reinit_head`` the classifier keeps its fresh weights."""
        assign_canonical(self, state, reinit_head=reinit_head, context=context)
        return self

    def save_pretrained(
        self, directory: str | os.PathLike, max_shard_size: int | str = "5GB", *, overwrite: bool = False
    ) -> Path:
        """Write config.json and model.safetensors (transformers layout, sharded above ``max_shard_size``), whole.

        A directory that already holds files is replaced only with ``overwrite=True``, once the new one is complete.
        """
        state = self.canonical_state()
        return save_checkpoint(directory, self.config, state, max_shard_size, type(self).__name__, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        reinit_head: bool = False,
        format: str | None = None,
        config: RegNetConfig | str | None = None,
        dtype: Any = None,
        allow_large: bool = False,
        **config_changes: Any,
    ) -> RegNetPreTrainedModel:
        """Load any supported checkpoint strictly (a directory written by any backend or transformers,
        a timm / torchvision / pycls / SEER / transformers-TF / Flax / Keras file, or a hub id).

        ``format`` names the format when detection should not decide; ``config`` supplies the
        architecture of a file that carries none. ``reinit_head=True`` keeps the trunk and
        starts a fresh classifier (e.g. with ``num_labels=10``); ``dtype`` is the Keras policy
        ("float32", "mixed_bfloat16" or "bfloat16", None: the global one; variables stay
        float32); other keywords change config fields before building (a keyword that is no
        field is a ConfigError naming the nearest); ``allow_large=True`` skips the memory guard
        (regnet_core.resources). Tensors stream from disk into the variables one at a time.
        """
        config, state = load_pretrained(source, format, config, **config_changes)
        model = cls(config, _skip_init=not reinit_head, dtype=dtype, allow_large=allow_large)
        return model.load_canonical_state(state, reinit_head=reinit_head, context=f"in {source}")

    # -------------------------------------------------------------- Keras serialisation
    def get_config(self) -> dict[str, Any]:
        """Keras config: the layer name, the RegNet config as a dict and the dtype policy's name."""
        return {"name": self.name, "regnet_config": self.config.to_dict(), "dtype": self.dtype_policy.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RegNetPreTrainedModel:
        """Rebuild from ``get_config()`` (weights not included)."""
        return cls(RegNetConfig.from_dict(config["regnet_config"]), name=config.get("name"), dtype=config.get("dtype"))

    def export(self, filepath: str | os.PathLike, format: str = "tf_saved_model", **kwargs: Any) -> Any:
        """Export for inference; the SavedModel's ``serve(pixel_values)`` returns a dict of output tensors.

        The input signature defaults to (None, None, None, num_channels) float32; Keras' listing
        of every captured variable is off unless ``verbose=True``.
        """
        kwargs.setdefault("verbose", False)
        if format == "tf_saved_model" and "input_signature" not in kwargs:
            kwargs["input_signature"] = [tf.TensorSpec(self.input_shape_nhwc, tf.float32, name="pixel_values")]
        return super().export(filepath, format=format, **kwargs)


@keras.saving.register_keras_serializable(package="regnet_tf")
class RegNetModel(RegNetPreTrainedModel):
    """The RegNet trunk: stem and stages, with global average pooling. NHWC float input."""

    default_name = "regnet_model"

    def __init__(
        self,
        config: RegNetConfig,
        *,
        zero_init_last_bn: bool = False,
        _skip_init: bool = False,
        _build: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.stem, self.stages = trunk_layers(self.spec, zero_init_last_bn, _skip_init, self.dtype_policy)
        if _build:  # a trunk inside RegNetForImageClassification is built in its parent's name scope
            self.build(self.input_shape_nhwc)

    def build(self, input_shape: Any = None) -> None:
        self.stem.build(input_shape)
        for stage in self.stages:
            stage.build(input_shape)

    def call(self, pixel_values: tf.Tensor, output_hidden_states: bool = False, training: bool = False) -> ModelOutput:
        """NHWC float batch -> last_hidden_state, pooler_output (B, 1, 1, C, float32), hidden_states (stem, every stage)."""
        check_input(pixel_values, self.spec.stem.input_width)
        hidden = self.stem(pixel_values, training=training)
        hidden_states = [hidden]
        for stage in self.stages:
            hidden = stage(hidden, training=training)
            hidden_states.append(hidden)
        return ModelOutput(
            last_hidden_state=hidden,
            pooler_output=tf.reduce_mean(tf.cast(hidden, tf.float32), axis=[1, 2], keepdims=True),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )


@keras.saving.register_keras_serializable(package="regnet_tf")
class RegNetForImageClassification(RegNetPreTrainedModel):
    """RegNet trunk plus a linear classifier on the pooled features (identity when num_labels is 0).

    ``fit`` works compiled with a Keras loss on the logits, or compiled without a loss:
    then the labels' loss of ``config.problem_type`` is used (as PyTorch's ``labels=``).
    """

    with_head = True
    default_name = "regnet_for_image_classification"
    _compiled_arguments = RegNetPreTrainedModel._compiled_arguments | {"labels"}

    def __init__(
        self, config: RegNetConfig, *, zero_init_last_bn: bool = False, _skip_init: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(config, **kwargs)
        self.regnet = RegNetModel(
            config,
            zero_init_last_bn=zero_init_last_bn,
            _skip_init=_skip_init,
            _build=False,
            allow_large=True,  # the whole model was checked in super().__init__
            name=native.TRUNK,
            dtype=self.dtype_policy,
        )
        head = self.spec.head
        self.classifier = (
            keras.layers.Dense(
                head.num_labels,
                kernel_initializer="zeros"
                if _skip_init
                else keras.initializers.RandomNormal(0.0, CLASSIFIER_WEIGHT_STD),
                bias_initializer=keras.initializers.Constant(CLASSIFIER_BIAS),
                name=native.CLASSIFIER,
                dtype=self.dtype_policy,
            )
            if head.num_labels > 0
            else None
        )
        self.build(self.input_shape_nhwc)

    def build(self, input_shape: Any = None) -> None:
        self.regnet.build(input_shape)
        if self.classifier is not None:
            self.classifier.build((None, self.spec.head.input_width))

    def call(
        self,
        pixel_values: tf.Tensor,
        labels: tf.Tensor | None = None,
        output_hidden_states: bool = False,
        training: bool = False,
    ) -> ModelOutput:
        """Logits (float32) for an NHWC batch; with ``labels``, the loss chosen by config.problem_type."""
        outputs = self.regnet(pixel_values, output_hidden_states=output_hidden_states, training=training)
        features = tf.reshape(outputs["pooler_output"], [-1, self.spec.head.input_width])
        # float32 logits under mixed precision, as Keras recommends for a model's outputs.
        logits = features if self.classifier is None else tf.cast(self.classifier(features), tf.float32)
        loss = None if labels is None else self.labels_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, **outputs)

    def _compiled_outputs(self, outputs: ModelOutput, arguments: dict[str, Any]) -> ModelOutput:
        """Add the labels' loss, computed eagerly from the compiled logits (labels converted as Keras would)."""
        labels = arguments.get("labels")
        if labels is None:
            return outputs
        labels = self.dtype_policy.convert_input(labels, self.autocast, self.input_dtype)
        return ModelOutput(loss=self.labels_loss(outputs["logits"], labels), **outputs)

    def labels_loss(self, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Regression (MSE), single-label (cross-entropy) or multi-label (BCE with logits), per config.problem_type."""
        return labels_loss(logits, labels, self.config.num_labels, self.config.problem_type)

    # -------------------------------------------------------------- Keras training hooks
    def fit(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Keras ``fit``; single-label targets are checked before they reach a step.

        Compiled with XLA (``jit_compile``), a target out of range would give a NaN loss and no
        error. Arrays are checked at once (LabelsError); a ``tf.data`` dataset of ``(x, y, ...)``
        checks each batch as it is read (InvalidArgumentError naming the range and the values).
        Only for the config's labels loss: a compiled Keras loss keeps its own rules.
        """
        x, y = self._checked_targets(x, y)
        if "validation_data" in kwargs:
            kwargs["validation_data"] = self._checked_validation(kwargs["validation_data"])
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Keras ``evaluate``, with single-label targets checked as ``fit`` checks them."""
        x, y = self._checked_targets(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def _single_label(self, dtype_name: str) -> bool:
        if getattr(self, "loss", None) is not None or self.config.num_labels < 1:
            return False
        try:
            kind = resolve_problem_type(
                self.config.problem_type, self.config.num_labels, labels_are_integers(dtype_name)
            )
        except ValueError:  # the loss names the misfit when it runs
            return False
        return kind == "single_label_classification"

    def _checked_targets(self, x: Any, y: Any) -> tuple[Any, Any]:
        if y is not None:
            if isinstance(y, (np.ndarray, list)) or (tf.is_tensor(y) and tf.executing_eagerly()):
                values = np.asarray(y)
                if self._single_label(values.dtype.name):
                    check_class_targets(values, self.config.num_labels)
            return x, y
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            if (
                isinstance(spec, tuple)
                and len(spec) >= 2
                and isinstance(spec[1], tf.TensorSpec)
                and self._single_label(spec[1].dtype.name)
            ):
                x = x.map(self._assert_targets)
        return x, y

    def _checked_validation(self, data: Any) -> Any:
        if isinstance(data, tuple) and len(data) >= 2:
            self._checked_targets(data[0], data[1])
            return data
        return self._checked_targets(data, None)[0]

    def _assert_targets(self, *element: Any) -> tuple[Any, ...]:
        labels, count = element[1], self.config.num_labels
        bad = tf.logical_and(tf.not_equal(labels, IGNORE_INDEX), tf.logical_or(labels < 0, labels >= count))
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"{class_targets_rule(count)}, got", tf.boolean_mask(labels, bad)],
            summarize=5,
        )
        with tf.control_dependencies([check]):
            labels = tf.identity(labels)
        return (element[0], labels, *element[2:])

    @staticmethod
    def _logits(y_pred: Any) -> Any:
        return y_pred["logits"] if isinstance(y_pred, dict) else y_pred

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> tf.Tensor:
        """The compiled Keras loss on the logits, or without one the config's labels loss."""
        logits = self._logits(y_pred)
        if self.loss is not None:
            return super().compute_loss(x, y, logits, sample_weight, training)
        if y is None:
            raise ValueError("compiled without a loss, fit/evaluate need labels (y) for config.problem_type's loss")
        if sample_weight is not None:
            raise ValueError("sample_weight needs a compiled Keras loss; the labels loss is an unweighted mean")
        # Keras' own losses do the same: the per-replica mean over 1 / replicas, so that the
        # gradients summed across replicas are those of the global batch's mean loss.
        loss = self.labels_loss(logits, y) / tf.distribute.get_strategy().num_replicas_in_sync
        if self.losses:
            loss = loss + tf.add_n(self.losses)
        return loss

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        """Compiled metrics on the logits."""
        return super().compute_metrics(x, y, self._logits(y_pred), sample_weight)

    def predict_step(self, data: Any) -> tf.Tensor:
        """``predict`` returns the logits."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)["logits"]


def variable_shapes(config: RegNetConfig, with_head: bool = True) -> dict[str, tuple[int, ...]]:
    """{variable path relative to the model: shape} of the Keras model for ``config``, without allocating weights.

    The model is built inside a Keras StatelessScope, where variables with an initializer
    are created deferred (path and shape, no value); they are then dropped from Keras'
    list of variables awaiting initialisation, so nothing is ever allocated, even for
    regnet-y-10b-seer.
    """
    # Keras keeps the deferred variables in its global state.
    pending_before = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            # allow_large: nothing is allocated here, whatever the size
            model = (RegNetForImageClassification if with_head else RegNetModel)(
                config, _skip_init=True, allow_large=True
            )
        return {native.relative_path(model, v): tuple(int(d) for d in v.shape) for v in model.weights}
    finally:
        global_state.set_global_attribute("uninitialized_variables", pending_before)
