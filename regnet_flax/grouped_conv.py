"""Grouped 2-D convolution (NHWC input, HWIO kernel) with lowerings that XLA:CPU runs fast.

XLA:CPU runs ``lax.conv_general_dilated(..., feature_group_count=g)`` as a slow generic
loop (2x to 5x slower than the lowerings below on RegNet's shapes), while its dense
convolution goes to a fast Eigen kernel. Every RegNet 3x3 conv is grouped, so the lowering
decides the Flax model's speed on CPU. The lowerings (all equal to ``feature_group_count``
up to float rounding; the kernel keeps its ``(kh, kw, in / groups, out)`` layout and its
parameter name, so checkpoints do not see the choice):

- ``"xla"``: ``feature_group_count`` as is (what ``nn.Conv`` does).
- ``"scan"``: one dense convolution on each group's channel slice, in a ``fori_loop`` that
  writes each group's output into place: compiled once whatever the group count.
- ``"loop"``: the same dense convolutions unrolled in Python and concatenated; as fast as
  ``"scan"`` but it compiles 5x to 10x slower (every group is its own op).
- ``"dense"``: one dense convolution with the kernel expanded block-diagonally to
  ``(kh, kw, in, out)`` with zeros: ``groups`` times the FLOPs, but a single fast op.
- ``"im2col"``: the input regrouped group-major, its ``kh * kw`` (strided) shifted views
  concatenated into patches ``(groups, batch * h * w, kh * kw * in / groups)`` and one
  batched matmul with the kernel as ``(groups, kh * kw * in / groups, out / groups)``.

``"auto"`` (the default) keeps XLA's own grouped conv on accelerators and, on CPU, takes
the lowering ``choose_method`` gives for the static shapes. The rule comes from
``benchmarks/flax_grouped_conv.py`` on a 2-core AVX2 machine, for the zoo's grouped convs
at 224 x 224 and batch 1, 8 and 32: ``"scan"`` / ``"loop"`` were fastest or within noise
of the fastest nearly everywhere (0.2x to 0.4x the time of ``"xla"`` on regnet-y-040's
convs, group width 64; 0.5x to 0.8x on regnet-x-002's, group width 8); ``"dense"`` wins
only with very few channels (the first stage of regnet-x-002 / -004: 24 or 32 channels),
where per-group convs are too small to run efficiently; ``"im2col"`` was slower than
``"scan"`` nearly everywhere. The CPU choice goes through ``lax.platform_dependent``, so an
artefact exported for several platforms (``regnet_flax.export``) keeps XLA's conv on GPUs.

Force a lowering on every platform with the ``REGNET_FLAX_GROUPED_CONV`` environment
variable (``auto|xla|scan|loop|dense|im2col``) or the ``grouped_conv_method`` context
manager (which wins over the variable). Both are read when a function is traced, so they
apply to functions traced afterwards (an already compiled jitted function keeps its
lowering). Convolutions with ``groups == 1`` are always XLA's dense convolution.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("xla", "scan", "loop", "dense", "im2col")
ENV_VAR = "REGNET_FLAX_GROUPED_CONV"
# "dense" below this many input channels (its extra FLOPs are cheaper than tiny per-group convs).
DENSE_MAX_CHANNELS = 32

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
_forced: list[str] = []


def _check_method(method: str) -> str:
    if method != "auto" and method not in METHODS:
        raise ValueError(f"unknown grouped conv method {method!r}; expected 'auto' or one of {', '.join(METHODS)}")
    return method


@contextlib.contextmanager
def grouped_conv_method(method: str) -> Iterator[None]:
    """Force a lowering (or "auto") for the grouped convs traced inside the block (wins over the environment)."""
    _forced.append(_check_method(method))
    try:
        yield
    finally:
        _forced.pop()


def configured_method() -> str:
    """The lowering asked for: the innermost grouped_conv_method, else $REGNET_FLAX_GROUPED_CONV, else "auto"."""
    if _forced:
        return _forced[-1]
    return _check_method(os.environ.get(ENV_VAR, "").strip().lower() or "auto")


def choose_method(channels: int, features: int, groups: int) -> str:
    """The lowering "auto" uses on CPU for a grouped conv with these channel counts (in, out) and groups."""
    del features  # the rule needs only the input side (RegNet's grouped convs keep the width)
    if groups == 1:
        return "xla"
    if channels <= DENSE_MAX_CHANNELS:
        return "dense"
    return "scan"


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """A grouped HWIO kernel (kh, kw, in / groups, out) as the equivalent dense (kh, kw, in, out) kernel."""
    kh, kw, group_in, out = kernel.shape
    grouped = kernel.reshape(kh, kw, 1, group_in, groups, out // groups)
    # (kh, kw, input group, in / groups, output group, out / groups), zero off the diagonal; a select, not a matmul.
    diagonal = jnp.eye(groups, dtype=bool)[:, None, :, None]
    return jnp.where(diagonal, grouped, jnp.zeros((), kernel.dtype)).reshape(kh, kw, groups * group_in, out)


def _shifted_views(
    x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
) -> tuple[list[jax.Array], int, int]:
    """The kh * kw strided views (row-major taps) of the zero-padded (..., H, W, C) input, and the output size."""
    (kh, kw), (sh, sw) = kernel_hw, strides
    (top, bottom), (left, right) = padding
    height = (x.shape[-3] + top + bottom - kh) // sh + 1
    width = (x.shape[-2] + left + right - kw) // sw + 1
    lead = x.ndim - 3
    xp = jnp.pad(x, ((0, 0),) * lead + ((top, bottom), (left, right), (0, 0)))
    views = [
        lax.slice(
            xp,
            (0,) * lead + (i, j, 0),
            (*xp.shape[:lead], i + sh * (height - 1) + 1, j + sw * (width - 1) + 1, xp.shape[-1]),
            (1,) * lead + (sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return views, height, width


def _lowered(
    x: jax.Array,
    kernel: jax.Array,
    *,
    method: str,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], ...],
    groups: int,
    precision: lax.PrecisionLike,
) -> jax.Array:
    def conv(lhs: jax.Array, rhs: jax.Array, count: int = 1) -> jax.Array:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            strides,
            padding,
            dimension_numbers=_DIMENSION_NUMBERS,
            feature_group_count=count,
            precision=precision,
        )

    if method == "xla":
        return conv(x, kernel, groups)
    if method == "dense":
        return conv(x, block_diagonal_kernel(kernel, groups))
    kh, kw, group_in, features = kernel.shape
    group_out = features // groups
    if method == "loop":
        outputs = [
            conv(x[..., g * group_in : (g + 1) * group_in], kernel[..., g * group_out : (g + 1) * group_out])
            for g in range(groups)
        ]
        return jnp.concatenate(outputs, axis=-1)
    if method == "scan":
        # One dense conv compiled once, run per group in a loop on its channel slice.
        def body(g: jax.Array, out: jax.Array) -> jax.Array:
            xs = lax.dynamic_slice_in_dim(x, g * group_in, group_in, axis=3)
            ks = lax.dynamic_slice_in_dim(kernel, g * group_out, group_out, axis=3)
            return lax.dynamic_update_slice_in_dim(out, conv(xs, ks), g * group_out, axis=3)

        shape = jax.eval_shape(conv, x[..., :group_in], kernel[..., :group_out]).shape
        return lax.fori_loop(0, groups, body, jnp.zeros((*shape[:3], features), x.dtype))
    if method == "im2col":
        batch, height, width = x.shape[:3]
        # Group-major patches: the batched matmul then needs no transposes of the big operand.
        xg = jnp.moveaxis(x.reshape(batch, height, width, groups, group_in), 3, 0)
        views, height, width = _shifted_views(xg, (kh, kw), strides, padding)
        patches = jnp.concatenate(views, axis=-1).reshape(groups, batch * height * width, kh * kw * group_in)
        weights = jnp.moveaxis(kernel.reshape(kh * kw * group_in, groups, group_out), 1, 0)
        out = jnp.einsum("gnk,gkd->gnd", patches, weights, precision=precision)
        out = jnp.moveaxis(out.reshape(groups, batch, height, width, group_out), 0, 3)
        return out.reshape(batch, height, width, features)
    raise AssertionError(method)


def grouped_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    groups: int = 1,
    method: str | None = None,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Conv of an NHWC batch with an HWIO kernel (kh, kw, in / groups, out), equal to feature_group_count=groups.

    ``method`` None follows ``configured_method()``; "auto" is XLA's conv off CPU and
    ``choose_method``'s lowering on CPU.
    """
    kh, kw, group_in, features = kernel.shape
    channels = x.shape[-1]
    if x.ndim != 4 or channels != group_in * groups or features % groups:
        raise ValueError(
            f"grouped conv: input {tuple(x.shape)}, kernel {tuple(kernel.shape)} and {groups} groups do not fit"
        )
    method = _check_method(configured_method() if method is None else method)
    lower = functools.partial(
        _lowered,
        strides=tuple(strides),
        padding=tuple((int(low), int(high)) for low, high in padding),
        groups=groups,
        precision=precision,
    )
    if groups == 1:
        return lower(x, kernel, method="xla")
    if method != "auto":
        return lower(x, kernel, method=method)
    cpu_method = choose_method(channels, features, groups)
    if cpu_method == "xla":
        return lower(x, kernel, method="xla")
    return lax.platform_dependent(
        x,
        kernel,
        cpu=functools.partial(lower, method=cpu_method),
        default=functools.partial(lower, method="xla"),
    )
