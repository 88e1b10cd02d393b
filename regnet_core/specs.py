"""Specs: every number a backend needs to build a RegNet, derived once from the config.

Backends iterate these and compute nothing themselves; complexity and the weight table are
derived from the same specs, so they cannot drift from the modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .config import RegNetConfig
from .design import se_width, stage_geometry

BN_EPS = 1e-5
BN_MOMENTUM_TORCH = 0.1  # PyTorch convention; Keras and Flax use 1 - 0.1 = 0.9
STEM_KERNEL = 3
STEM_STRIDE = 2


@dataclass(frozen=True)
class StemSpec:
    """3x3 stride-2 conv, BN and activation."""

    input_width: int
    width: int
    kernel_size: int = STEM_KERNEL
    stride: int = STEM_STRIDE


@dataclass(frozen=True)
class BlockSpec:
    """One residual bottleneck block (X block, or Y block when ``se_width`` > 0)."""

    input_width: int
    width: int
    stride: int
    bottleneck_width: int
    groups: int
    se_width: int

    @property
    def group_width(self) -> int:
        """Channels per group of the 3x3 convolution."""
        return self.bottleneck_width // self.groups

    @property
    def has_projection(self) -> bool:
        """True when the shortcut needs a 1x1 conv + BN (width or resolution changes)."""
        return self.input_width != self.width or self.stride != 1

    @property
    def has_se(self) -> bool:
        """True for Y blocks (squeeze-and-excitation after the 3x3 conv)."""
        return self.se_width > 0


@dataclass(frozen=True)
class StageSpec:
    """A run of blocks of one width; the first block changes width and resolution."""

    input_width: int
    width: int
    depth: int
    stride: int
    bottleneck_width: int
    groups: int
    blocks: tuple[BlockSpec, ...]

    @property
    def group_width(self) -> int:
        """Channels per group of the stage's 3x3 convolutions."""
        return self.bottleneck_width // self.groups

    @property
    def se_width(self) -> int:
        """SE width of the stage's first block (later blocks: round(width * se_ratio))."""
        return self.blocks[0].se_width


@dataclass(frozen=True)
class HeadSpec:
    """Global average pool, then a linear classifier (none when num_labels is 0)."""

    input_width: int
    num_labels: int


@dataclass(frozen=True)
class ModelSpec:
    """The whole network: stem, stages, head, activation and BN constants."""

    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec
    activation: str
    layer_type: str
    bn_eps: float = BN_EPS
    bn_momentum: float = BN_MOMENTUM_TORCH

    def blocks(self) -> Iterator[tuple[int, int, BlockSpec]]:
        """Yield (stage index, block index, block spec) in forward order."""
        for stage_index, stage in enumerate(self.stages):
            for block_index, block in enumerate(stage.blocks):
                yield stage_index, block_index, block

    @property
    def width(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.stages[-1].width

    @property
    def num_blocks(self) -> int:
        """Total number of blocks."""
        return sum(stage.depth for stage in self.stages)

    @property
    def stride(self) -> int:
        """Overall downsampling factor from input to last stage."""
        total = self.stem.stride
        for stage in self.stages:
            total *= stage.stride
        return total


def build_model_spec(config: RegNetConfig) -> ModelSpec:
    """Derive the full ModelSpec of a config (validating it first: every config that validates has a spec)."""
    config.validate()
    stem = StemSpec(input_width=config.num_channels, width=config.embedding_size)
    stages = []
    input_width = stem.width
    for index, (width, depth) in enumerate(zip(config.hidden_sizes, config.depths, strict=True)):
        stride = 2 if (index > 0 or config.downsample_in_first_stage) else 1
        bottleneck, _, groups = stage_geometry(width, config.bottleneck_ratio, config.groups_width)
        blocks = []
        for block_index in range(depth):
            block_input = input_width if block_index == 0 else width
            blocks.append(
                BlockSpec(
                    input_width=block_input,
                    width=width,
                    stride=stride if block_index == 0 else 1,
                    bottleneck_width=bottleneck,
                    groups=groups,
                    se_width=se_width(block_input, config.se_ratio) if config.layer_type == "y" else 0,
                )
            )
        stages.append(
            StageSpec(
                input_width=input_width,
                width=width,
                depth=depth,
                stride=stride,
                bottleneck_width=bottleneck,
                groups=groups,
                blocks=tuple(blocks),
            )
        )
        input_width = width
    return ModelSpec(
        stem=stem,
        stages=tuple(stages),
        head=HeadSpec(input_width=input_width, num_labels=config.num_labels),
        activation=config.hidden_act,
        layer_type=config.layer_type,
    )
