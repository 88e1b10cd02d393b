"""FLOPs (multiply-adds), parameters and activations, walked over the same specs the modules use.

Counting follows pycls: a convolution costs k*k*c_in*c_out*h*w/groups multiply-adds (plus
c_out*h*w for a bias) and produces c_out*h*w activations; BatchNorm adds 2*c parameters and
nothing else; pooling and element-wise operations are free. Parameters are weights only
(BatchNorm running statistics are buffers, not parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .specs import BlockSpec, ModelSpec


@dataclass
class Complexity:
    """Running totals at a spatial size."""

    height: int
    width: int
    flops: int = 0
    params: int = 0
    acts: int = 0

    def conv(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        """Add a k x k convolution with symmetric k // 2 padding."""
        pad = kernel // 2
        self.height = (self.height + 2 * pad - kernel) // stride + 1
        self.width = (self.width + 2 * pad - kernel) // stride + 1
        positions = self.height * self.width
        self.flops += kernel * kernel * c_in * c_out * positions // groups + (c_out * positions if bias else 0)
        self.params += kernel * kernel * c_in * c_out // groups + (c_out if bias else 0)
        self.acts += c_out * positions

    def batch_norm(self, channels: int) -> None:
        """Add a BatchNorm (scale and shift)."""
        self.params += 2 * channels

    def linear(self, c_in: int, c_out: int) -> None:
        """Add a dense layer with bias on a pooled 1x1 map."""
        self.flops += c_in * c_out + c_out
        self.params += c_in * c_out + c_out
        self.acts += c_out


@dataclass(frozen=True)
class ComplexityReport:
    """Totals for a model, with a breakdown per part (stem, stage1.., head)."""

    flops: int
    params: int
    acts: int
    parts: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        """flops, params and acts as a plain dict."""
        return {"flops": self.flops, "params": self.params, "acts": self.acts}


def _block(cx: Complexity, block: BlockSpec) -> None:
    height, width = cx.height, cx.width
    if block.has_projection:
        cx.conv(block.input_width, block.width, 1, block.stride)
        cx.batch_norm(block.width)
        cx.height, cx.width = height, width
    cx.conv(block.input_width, block.bottleneck_width, 1)
    cx.batch_norm(block.bottleneck_width)
    cx.conv(block.bottleneck_width, block.bottleneck_width, 3, block.stride, block.groups)
    cx.batch_norm(block.bottleneck_width)
    if block.has_se:
        height, width = cx.height, cx.width
        cx.height = cx.width = 1
        cx.conv(block.bottleneck_width, block.se_width, 1, bias=True)
        cx.conv(block.se_width, block.bottleneck_width, 1, bias=True)
        cx.height, cx.width = height, width
    cx.conv(block.bottleneck_width, block.width, 1)
    cx.batch_norm(block.width)


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    height, width = image_size
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"image size must be positive integers, got {image_size!r}")
    return height, width


def model_complexity(spec: ModelSpec, image_size: int | tuple[int, int] = 224) -> ComplexityReport:
    """FLOPs, params and acts of the model at an input size (the head's classes come from the spec)."""
    cx = Complexity(*_as_hw(image_size))
    parts: dict[str, dict[str, int]] = {}

    def close(name: str, start: tuple[int, int, int]) -> None:
        parts[name] = {"flops": cx.flops - start[0], "params": cx.params - start[1], "acts": cx.acts - start[2]}

    start = (0, 0, 0)
    cx.conv(spec.stem.input_width, spec.stem.width, spec.stem.kernel_size, spec.stem.stride)
    cx.batch_norm(spec.stem.width)
    close("stem", start)
    for index, stage in enumerate(spec.stages):
        start = (cx.flops, cx.params, cx.acts)
        for block in stage.blocks:
            _block(cx, block)
        close(f"stage{index + 1}", start)
    if spec.head.num_labels > 0:
        start = (cx.flops, cx.params, cx.acts)
        cx.linear(spec.head.input_width, spec.head.num_labels)
        close("head", start)
    return ComplexityReport(flops=cx.flops, params=cx.params, acts=cx.acts, parts=parts)
