"""The RegNet design space: quantized linear widths and width/group compatibility.

Symbols follow the paper ("Designing Network Design Spaces", Radosavovic et al. 2020):
``d`` blocks, initial width ``w_0``, slope ``w_a``, width multiplier ``w_m``, group width
``g`` and bottleneck ratio ``b``. Widths are quantized to multiples of ``q`` (8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

QUANTUM = 8
# Largest channel count or depth a config may name: frameworks index channels with 32-bit integers.
MAX_WIDTH = 2**31 - 1


@dataclass(frozen=True)
class StageDesign:
    """Per-stage widths, depths and group widths produced by the design space."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    group_widths: tuple[int, ...]
    bottleneck_widths: tuple[int, ...]
    block_widths: tuple[int, ...]


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _check_design_parameters(depth: int, w_0: float, w_a: float, w_m: float, quantum: int) -> None:
    """Raise ConfigError unless the four design numbers lie in the paper's domain."""
    problems = []
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, (bool, np.bool_)) or not 1 <= depth <= 10**6:
        problems.append(f"depth must be an integer from 1 to 1000000, got {depth!r}")
    if not isinstance(quantum, (int, np.integer)) or isinstance(quantum, (bool, np.bool_)) or quantum < 1:
        problems.append(f"quantum must be a positive integer, got {quantum!r}")
    for name, value in (("w0", w_0), ("wa", w_a), ("wm", w_m)):
        if not _is_finite_number(value):
            problems.append(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")
    if problems:
        raise ConfigError("invalid RegNet design: " + "; ".join(problems))
    if not w_0 > 0:
        problems.append(f"w0 must be > 0, got {w_0!r}")
    elif isinstance(quantum, (int, np.integer)) and quantum >= 1 and w_0 % quantum != 0:
        problems.append(f"w0 must be a multiple of the quantum {quantum}, got {w_0!r}")
    if not w_a >= 0:
        problems.append(f"wa must be >= 0, got {w_a!r}")
    if not w_m > 1:
        problems.append(f"wm must be > 1, got {w_m!r}")
    if problems:
        raise ConfigError("invalid RegNet design: " + "; ".join(problems))


def quantized_block_widths(depth: int, w_0: float, w_a: float, w_m: float, quantum: int = QUANTUM) -> list[int]:
    """Per-block widths: u_j = w_0 + w_a * j, snapped to w_0 * w_m^s and to multiples of q.

    Every rounding is round-half-to-even, as numpy rounds.
    """
    _check_design_parameters(depth, w_0, w_a, w_m, quantum)
    u = w_0 + w_a * np.arange(depth)
    s = np.round(np.log(u / w_0) / np.log(w_m))
    snapped = w_0 * np.power(w_m, s)
    return [int(w) for w in (np.round(snapped / quantum).astype(np.int64) * quantum)]


def group_stages(block_widths: list[int]) -> tuple[list[int], list[int]]:
    """Collapse consecutive equal block widths into (stage widths, stage depths)."""
    widths: list[int] = []
    depths: list[int] = []
    for width in block_widths:
        if widths and widths[-1] == width:
            depths[-1] += 1
        else:
            widths.append(width)
            depths.append(1)
    if any(b < a for a, b in zip(widths, widths[1:], strict=False)):
        raise ConfigError(f"block widths must not decrease, got {block_widths}")
    return widths, depths


def adjust_for_groups(
    widths: list[int], bottleneck_ratio: float, group_width: int
) -> tuple[list[int], list[int], list[int]]:
    """Make widths compatible with grouped convolution.

    For each stage the group width never exceeds the bottleneck width, and the bottleneck
    width is rounded to a multiple of the group width. Returns (widths, group widths,
    bottleneck widths).
    """
    if not _is_finite_number(bottleneck_ratio) or bottleneck_ratio <= 0:
        raise ConfigError(f"bottleneck_ratio must be a finite number > 0, got {bottleneck_ratio!r}")
    if not isinstance(group_width, (int, np.integer)) or isinstance(group_width, (bool, np.bool_)) or group_width < 1:
        raise ConfigError(f"group_width must be a positive integer, got {group_width!r}")
    out_widths, group_widths, bottleneck_widths = [], [], []
    for width in widths:
        bottleneck = max(1, int(width * bottleneck_ratio))
        stage_group_width = min(int(group_width), bottleneck)
        bottleneck = max(stage_group_width, int(round(bottleneck / stage_group_width)) * stage_group_width)
        out_widths.append(int(bottleneck / bottleneck_ratio))
        group_widths.append(stage_group_width)
        bottleneck_widths.append(bottleneck)
    return out_widths, group_widths, bottleneck_widths


def design_stages(
    depth: int,
    w_0: float,
    w_a: float,
    w_m: float,
    group_width: int,
    bottleneck_ratio: float = 1.0,
    quantum: int = QUANTUM,
) -> StageDesign:
    """Stage widths, depths and group widths of the RegNet with these design numbers."""
    block_widths = quantized_block_widths(depth, w_0, w_a, w_m, quantum)
    widths, depths = group_stages(block_widths)
    widths, group_widths, bottleneck_widths = adjust_for_groups(widths, bottleneck_ratio, group_width)
    return StageDesign(
        widths=tuple(widths),
        depths=tuple(depths),
        group_widths=tuple(group_widths),
        bottleneck_widths=tuple(bottleneck_widths),
        block_widths=tuple(block_widths),
    )


def stage_geometry(width: int, bottleneck_ratio: float, group_width: int) -> tuple[int, int, int]:
    """(bottleneck width, group width, groups) of a stage of output ``width``.

    The group width is capped at the bottleneck width; the bottleneck width must then be a
    whole number of groups, otherwise ConfigError says which widths clash.
    """
    product = width * bottleneck_ratio
    if not math.isfinite(product) or product > MAX_WIDTH:
        raise ConfigError(
            f"stage width {width} with bottleneck_ratio {bottleneck_ratio} gives a bottleneck width of {product:g}; "
            f"expected at most {MAX_WIDTH}"
        )
    bottleneck = int(round(product))
    if bottleneck < 1:
        raise ConfigError(
            f"stage width {width} with bottleneck_ratio {bottleneck_ratio} gives a bottleneck width of "
            f"{bottleneck}; expected at least 1"
        )
    stage_group_width = min(int(group_width), bottleneck)
    if bottleneck % stage_group_width:
        raise ConfigError(
            f"group width {group_width} does not divide the bottleneck width {bottleneck} of a stage of "
            f"width {width}; expected a bottleneck width that is a multiple of the group width "
            f"(RegNetConfig.from_design adjusts widths this way)"
        )
    return bottleneck, stage_group_width, bottleneck // stage_group_width


def se_width(block_input_width: int, se_ratio: float) -> int:
    """SE width of a block: round(block input width * se_ratio), half to even."""
    return int(round(block_input_width * se_ratio))
