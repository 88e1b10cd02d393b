"""RegNet in PyTorch, built by iterating the core's specs.

Module names reproduce transformers' RegNet so that state dicts are interchangeable
(``regnet.encoder.stages.0.layers.0.shortcut.normalization.running_var`` and so on).

Fast by default: every model stores its convolution weights channels_last (NHWC in memory,
oneDNN's and cuDNN's fast layout) from construction and loading on, and ``forward`` turns an
ordinary NCHW input into channels_last memory before the stem, so ``model(x)`` runs at
channels_last speed. Shapes and semantics stay NCHW, and every returned feature map is an
ordinary contiguous NCHW tensor (``.view`` works on it). ``model.to(memory_format=
torch.contiguous_format)`` opts out; state dicts and saved checkpoints are the same either way.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from regnet_core.checkpoint import save_checkpoint
from regnet_core.config import RegNetConfig, reject_keywords, require_config
from regnet_core.convert import load_pretrained
from regnet_core.errors import PixelValuesError
from regnet_core.inputs import needs_cast
from regnet_core.outputs import (
    CROSS_ENTROPY,
    MSE,
    ModelOutput,
    check_class_targets,
    check_pixel_values,
    choose_loss,
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
from regnet_core.specs import BlockSpec, ModelSpec, build_model_spec

from .weights import state_from_canonical, state_to_canonical

# PyTorch's module for each activation the core's rules name.
_MODULES = {
    RELU: lambda: nn.ReLU(inplace=True),
    SILU: lambda: nn.SiLU(inplace=True),
    GELU: nn.GELU,  # approximate="none": the exact erf form
    TANH: nn.Tanh,
    SIGMOID: nn.Sigmoid,
}


def make_activation(name: str | None) -> nn.Module:
    """The activation module for a config's hidden_act (identity for None); unknown names raise ValueError."""
    kind = activation_kind(name)
    return nn.Identity() if kind is None else _MODULES[kind]()


@torch.no_grad()
def _init_classifier(linear: nn.Linear) -> None:
    """The core's classifier initialisation (pycls): weights N(0, CLASSIFIER_WEIGHT_STD^2), bias CLASSIFIER_BIAS."""
    linear.weight.normal_(0.0, CLASSIFIER_WEIGHT_STD)
    linear.bias.fill_(CLASSIFIER_BIAS)


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A strided 1x1 convolution computed as every stride-th pixel convolved at stride 1 (same weights, same values).

    Used below ``rules.SUBSAMPLED_POINTWISE_BELOW_CHANNELS`` input channels, where oneDNN's
    own strided path corrupts memory in the backward pass (see regnet_core.rules).
    """

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.convolve(hidden_state, self.weight, self.bias)

    def convolve(self, hidden_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Convolve with ``weight`` and ``bias`` (this layer's or folded ones)."""
        rows, columns = self.stride
        return F.conv2d(hidden_state[:, :, ::rows, ::columns], weight, bias, 1, 0, self.dilation, self.groups)


class ConvNormAct(nn.Module):
    """Conv (symmetric k // 2 padding, no bias), BatchNorm, optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        super().__init__()
        eps, momentum = (spec.bn_eps, spec.bn_momentum) if spec is not None else (1e-5, 0.1)
        conv_class = (
            SubsampledPointwiseConv2d if subsample_before_convolving(kernel_size, stride, in_channels) else nn.Conv2d
        )
        self.convolution = conv_class(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.activation = make_activation(activation)

        self.fold_batchnorm = False  # set by RegNetPreTrainedModel.fold_batchnorm
        self._folded: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        if (
            not self.fold_batchnorm
            or self.training
            or torch.is_grad_enabled()
            or _has_hooks(self.convolution)
            or _has_hooks(self.normalization)
        ):
            return self.activation(self.normalization(self.convolution(hidden_state)))
        # Inference without autograd: one convolution with BatchNorm folded into its weight and bias
        # (never when a hook watches the convolution or the BatchNorm: hooks see the modules run).
        weight, bias = self.folded_weight_and_bias()
        conv = self.convolution
        if isinstance(conv, SubsampledPointwiseConv2d):
            return self.activation(conv.convolve(hidden_state, weight, bias))
        return self.activation(
            F.conv2d(hidden_state, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        )

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and a bias with the BatchNorm's running statistics and affine folded in."""
        conv, norm = self.convolution, self.normalization
        tensors = (conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        if _tracing() or conv.weight.numel() > FOLD_CACHE_MAX_ELEMENTS:
            # traced (torch.compile, torch.export, ONNX): plain ops; a huge layer: fold per call, hold no copy
            return _fold(*tensors, norm.eps)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device, t.stride()) for t in tensors) + (norm.eps,)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                self._folded = (key, *_fold(*tensors, norm.eps))
        return self._folded[1], self._folded[2]


def _fold(
    weight: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = gamma * torch.rsqrt(var + eps)
    folded = weight * scale.reshape(-1, 1, 1, 1)
    if weight.is_contiguous(memory_format=torch.channels_last):
        folded = folded.contiguous(memory_format=torch.channels_last)
    return folded, beta - mean * scale


# Folded weights are cached per layer (invalidated when any input tensor changes) up to this size;
# larger layers (the biggest SEER models) fold on every call rather than hold a second copy.
FOLD_CACHE_MAX_ELEMENTS = 2**24


def _has_hooks(module: nn.Module) -> bool:
    """Whether forward hooks (the module's own or global ones) would observe the module being called."""
    from torch.nn.modules import module as module_globals

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_globals._global_forward_hooks
        or module_globals._global_forward_pre_hooks
    )


def _tracing() -> bool:
    return torch.compiler.is_compiling()


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate."""

    def __init__(self, channels: int, se_width: int) -> None:
        super().__init__()
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.attention = nn.Sequential(
            nn.Conv2d(channels, se_width, kernel_size=1),
            _MODULES[SE_ACTIVATION](),  # whatever hidden_act (core rules)
            nn.Conv2d(se_width, channels, kernel_size=1),
            _MODULES[SE_GATE](),
        )

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return hidden_state * self.attention(self.pooler(hidden_state))


class Bottleneck(nn.Module):
    """Residual bottleneck: 1x1, grouped 3x3 (stride here), optional SE, 1x1; projection when shapes change."""

    def __init__(self, block: BlockSpec, spec: ModelSpec) -> None:
        super().__init__()
        self.shortcut = (
            ConvNormAct(block.input_width, block.width, 1, block.stride, spec=spec)
            if block.has_projection
            else nn.Identity()
        )
        layers: list[nn.Module] = [
            ConvNormAct(block.input_width, block.bottleneck_width, 1, activation=spec.activation, spec=spec),
            ConvNormAct(
                block.bottleneck_width,
                block.bottleneck_width,
                3,
                block.stride,
                block.groups,
                activation=spec.activation,
                spec=spec,
            ),
        ]
        if block.has_se:
            layers.append(SqueezeExcitation(block.bottleneck_width, block.se_width))
        layers.append(ConvNormAct(block.bottleneck_width, block.width, 1, spec=spec))
        self.layer = nn.Sequential(*layers)
        self.activation = make_activation(spec.activation)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(hidden_state)
        return self.activation(self.layer(hidden_state) + residual)


class Stage(nn.Module):
    """The blocks of one stage, in a Sequential named ``layers``."""

    def __init__(self, blocks: tuple[BlockSpec, ...], spec: ModelSpec) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(Bottleneck(block, spec) for block in blocks))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_state)


class Encoder(nn.Module):
    """All stages."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.stages = nn.ModuleList(Stage(stage.blocks, spec) for stage in spec.stages)


class Embeddings(nn.Module):
    """The stem: 3x3 stride-2 conv, BN, activation."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        stem = spec.stem
        self.embedder = ConvNormAct(
            stem.input_width, stem.width, stem.kernel_size, stem.stride, activation=spec.activation, spec=spec
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embedder(pixel_values)


def run_trunk(
    embedder: Embeddings, encoder: Encoder, pixel_values: torch.Tensor, input_width: int
) -> list[torch.Tensor]:
    """Check an NCHW batch, run the stem and every stage; the stem's output and each stage's, in order."""
    pixel_values = check_input(pixel_values, input_width, embedder.embedder.convolution.weight.dtype)
    hidden_state = embedder(channels_last_input(pixel_values, embedder.embedder.convolution))
    hidden_states = [hidden_state]
    for stage in encoder.stages:
        hidden_state = stage(hidden_state)
        hidden_states.append(hidden_state)
    return hidden_states


def channels_last_input(pixel_values: torch.Tensor, first_conv: nn.Conv2d) -> torch.Tensor:
    """The input in the memory format of the stem's weights (channels_last unless the user opted out)."""
    if first_conv.weight.is_contiguous(memory_format=torch.channels_last) and pixel_values.dim() == 4:
        return pixel_values.contiguous(memory_format=torch.channels_last)
    return pixel_values


def check_input(
    pixel_values: torch.Tensor, num_channels: int, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Check an NCHW batch by the core's rule (regnet_core.inputs) and return it in ``compute_dtype`` (cast if needed).

    Raises PixelValuesError (a ValueError) for anything but a non-empty floating NCHW batch
    with ``num_channels`` channels; float16, bfloat16 and float64 are cast to the weights' dtype.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise PixelValuesError(
            f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__} "
            "(torch.from_numpy or torch.as_tensor makes one)"
        )
    check_pixel_values(
        tuple(pixel_values.shape),
        pixel_values.is_floating_point(),
        str(pixel_values.dtype),
        num_channels,
        "NCHW",
    )
    if compute_dtype is not None and needs_cast(str(pixel_values.dtype), str(compute_dtype)):
        return pixel_values.to(compute_dtype)
    return pixel_values


class RegNetPreTrainedModel(nn.Module):
    """Shared construction, initialisation and checkpoint I/O."""

    _with_head = False

    def __init__(self, config: RegNetConfig, allow_large: bool = False, *, _allocates: bool = True) -> None:
        super().__init__()
        require_config(config, type(self).__name__)
        if _allocates and torch.get_default_device().type != "meta":
            # Refused before anything is allocated: weights that cannot fit in memory (allow_large skips this).
            check_memory(config, self._with_head, allow_large, what=type(self).__name__)
        self.config = config
        self.spec = build_model_spec(config)

    # -------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self, zero_init_last_bn: bool = False) -> None:
        """pycls initialisation: He-normal (fan-out) convs, BN (1, 0), classifier N(0, 0.01), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                _init_classifier(module)
        if zero_init_last_bn:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    module.layer[-1].normalization.weight.zero_()

    # -------------------------------------------------------------- checkpoints
    def canonical_state(self) -> dict[str, Any]:
        """The weights as canonical numpy arrays (transformers names and layouts)."""
        return state_to_canonical(self.state_dict())

    def save_pretrained(
        self, directory: str | os.PathLike, max_shard_size: int | str = "5GB", *, overwrite: bool = False
    ) -> Path:
        """Write config.json and model.safetensors (sharded above ``max_shard_size``); the directory appears whole.

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
        allow_large: bool = False,
        **config_changes: Any,
    ) -> RegNetPreTrainedModel:
        """Load any supported checkpoint strictly; every missing, unexpected or mis-shaped key is reported at once.

        ``source`` is a checkpoint directory, a weights file of any supported format (timm,
        torchvision, pycls, SEER, transformers TF / Flax, Keras) or a hub id; ``format``
        names the format when detection should not decide, ``config`` supplies the
        architecture of a file that carries none (else it is inferred from the weights).
        ``reinit_head=True`` keeps the trunk and starts a fresh classifier (for fine-tuning,
        e.g. with ``num_labels=10``). Other keywords change config fields before building (a
        keyword that is no field is a ConfigError naming the nearest). ``allow_large=True``
        skips the memory guard (regnet_core.resources). Tensors stream from disk into the model
        one at a time. The model is returned in eval mode.
        """
        config, state = load_pretrained(source, format, config, **config_changes)
        check_memory(config, cls._with_head, allow_large, what=cls.__name__)  # before the weights stream in
        model = cls(config, _skip_init=True)
        model.load_canonical_state(state, reinit_head=reinit_head, context=f"in {source}", _copy=False)
        return model.eval()

    def load_canonical_state(
        self, state: dict[str, Any], *, reinit_head: bool = False, context: str = "", _copy: bool = True
    ) -> RegNetPreTrainedModel:
        """Load canonical numpy weights in place, strictly (see ``from_pretrained``); ``state`` is not shared."""
        tensors = state_from_canonical(
            state, self.spec, with_head=self._with_head, reinit_head=reinit_head, context=context, copy=_copy
        )
        self._assign_tensors(tensors, strict=not reinit_head)
        if reinit_head and self._with_head:
            self.reset_classifier()
        return self

    def fold_batchnorm(self, enabled: bool = True) -> RegNetPreTrainedModel:
        """Opt in to folding each BatchNorm into its convolution for inference (eval mode, no autograd); returns self.

        Folded weights are computed on first use and recomputed whenever a weight or running
        statistic changes, so training in between is safe; every output is kept. Results then
        differ from the unfolded model in the last bits (about 1e-6 relative), so outputs are no
        longer bit-identical to transformers'. Training, autograd and forward hooks on the
        convolutions always take the unfolded path.
        """
        for module in self.modules():
            if isinstance(module, ConvNormAct):
                module.fold_batchnorm = bool(enabled)
                module._folded = None
        return self

    def use_channels_last(self) -> RegNetPreTrainedModel:
        """Store every 4-D weight channels_last (the default after construction and loading); returns self."""
        return self.to(memory_format=torch.channels_last)

    def sync_batchnorm(self, enabled: bool = True, process_group: Any = None) -> RegNetPreTrainedModel:
        """Make training BatchNorm use the statistics of the batch across a torch.distributed process group; returns self.

        For DistributedDataParallel: every BatchNorm2d becomes ``regnet_pt.distributed.SyncBatchNorm2d``
        (same tensors, any device and backend, gloo on CPU included), so the DDP step equals the
        one-device step on the same global batch. Call before wrapping in DDP; ``False`` reverts.
        """
        from .distributed import convert_sync_batchnorm, revert_sync_batchnorm

        if enabled:
            return convert_sync_batchnorm(self, process_group)
        return revert_sync_batchnorm(self)

    def _assign_tensors(self, tensors: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load checked tensors: moved to the model's device, or assigned as they are onto a meta-device model."""
        device = next(self.parameters()).device
        on_meta = device.type == "meta"
        if not on_meta:
            tensors = {name: value.to(device) for name, value in tensors.items()}
        else:  # assigned tensors arrive NCHW-contiguous: each is made channels_last, its NCHW copy dropped at once
            for name in list(tensors):
                if tensors[name].dim() == 4:
                    tensors[name] = tensors[name].contiguous(memory_format=torch.channels_last)
        self.load_state_dict(tensors, strict=strict, assign=on_meta)
        if on_meta:  # copies into existing weights keep their layout; assigned ones were converted above
            self.use_channels_last()

    def reset_classifier(self) -> None:
        """Overridden by models with a head."""


class RegNetModel(RegNetPreTrainedModel):
    """The RegNet trunk: stem and stages, with global average pooling."""

    def __init__(
        self,
        config: RegNetConfig,
        *,
        zero_init_last_bn: bool = False,
        allow_large: bool = False,
        _skip_init: bool = False,
        **unknown: Any,
    ) -> None:
        reject_keywords(unknown, type(self).__name__ + "()", ("zero_init_last_bn", "allow_large"))
        super().__init__(config, allow_large, _allocates=not _skip_init)
        with torch.device("meta") if _skip_init else nullcontext():
            self.embedder = Embeddings(self.spec)
            self.encoder = Encoder(self.spec)
            self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        if not _skip_init:
            self.init_weights(zero_init_last_bn)
            self.use_channels_last()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> ModelOutput | tuple:
        """NCHW float batch -> last_hidden_state, pooler_output (B, C, 1, 1), hidden_states (stem, every stage)."""
        hidden_states = run_trunk(self.embedder, self.encoder, pixel_values, self.spec.stem.input_width)
        hidden_state = hidden_states[-1]
        output = ModelOutput(
            last_hidden_state=hidden_state.contiguous(),
            pooler_output=self.pooler(hidden_state).contiguous(),
            hidden_states=tuple(state.contiguous() for state in hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class RegNetForImageClassification(RegNetPreTrainedModel):
    """RegNet trunk plus a linear classifier on the pooled features (identity when num_labels is 0)."""

    _with_head = True

    def __init__(
        self,
        config: RegNetConfig,
        *,
        zero_init_last_bn: bool = False,
        allow_large: bool = False,
        _skip_init: bool = False,
        **unknown: Any,
    ) -> None:
        reject_keywords(unknown, type(self).__name__ + "()", ("zero_init_last_bn", "allow_large"))
        super().__init__(config, allow_large, _allocates=not _skip_init)
        self.regnet = RegNetModel(config, _skip_init=True)  # on the meta device; the whole model was checked above
        with torch.device("meta") if _skip_init else nullcontext():
            self.classifier = nn.Sequential(nn.Flatten(), self._new_linear())
        if not _skip_init:
            self.regnet.to_empty(device="cpu")
            self.init_weights(zero_init_last_bn)
            self.use_channels_last()

    def _new_linear(self) -> nn.Module:
        head = self.spec.head
        return nn.Linear(head.input_width, head.num_labels) if head.num_labels > 0 else nn.Identity()

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """A fresh pycls-initialised classifier on the trunk's device."""
        device = next(self.regnet.parameters()).device
        linear = self._new_linear().to(device)
        if isinstance(linear, nn.Linear):
            _init_classifier(linear)
        self.classifier[1] = linear

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> ModelOutput | tuple:
        """Logits for an NCHW batch; with ``labels``, the loss chosen by config.problem_type."""
        outputs = self.regnet(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else self.loss(logits, labels)
        output = ModelOutput(loss=loss, logits=logits, **outputs)
        return output if return_dict else output.to_tuple()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss the core's rule chooses: regression (MSE), single-label (cross-entropy) or multi-label (BCE)."""
        num_labels = self.config.num_labels
        choice = choose_loss(
            self.config.problem_type, num_labels, str(labels.dtype), tuple(labels.shape), logits.shape[0]
        )
        if choice.function == MSE:
            if choice.squeeze:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if choice.function == CROSS_ENTROPY:
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                check_class_targets(labels.detach().cpu().numpy(), num_labels)  # ours, not an IndexError
            return F.cross_entropy(
                logits.view(-1, num_labels), labels.view(-1).long(), ignore_index=choice.ignore_index
            )
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
