"""The canonical parameter table: every tensor's name, shape and kind, derived from the specs.

Canonical means Hugging Face transformers' PyTorch names and layouts: convolutions OIHW
(I = input channels per group), dense (out, in), BatchNorm as weight / bias /
running_mean / running_var / num_batches_tracked. A transformers RegNet checkpoint is
therefore already canonical. Backends map this table to their own names and layouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CheckpointError
from .specs import BlockSpec, ModelSpec
from .tensors import LazyTensor, check_finite, check_weight_dtypes, scratch_empty

BASE_PREFIX = "regnet."
# Module name pieces of the canonical (transformers) layout, for backends that map names.
CONV_MODULE = "convolution"
NORM_MODULE = "normalization"
SE_REDUCE_MODULE = "attention.0"
SE_EXPAND_MODULE = "attention.2"
CLASSIFIER_MODULE = "classifier.1"

# Kinds of canonical tensors; each backend knows how to lay each one out.
CONV = "conv"  # (out, in/groups, kh, kw)
CONV_BIAS = "conv_bias"  # (out,)
BN_WEIGHT = "bn_weight"
BN_BIAS = "bn_bias"
BN_MEAN = "bn_mean"
BN_VAR = "bn_var"
BN_COUNT = "bn_count"  # num_batches_tracked: PyTorch bookkeeping, optional on load
DENSE = "dense"  # (out, in)
DENSE_BIAS = "dense_bias"
KINDS = (CONV, CONV_BIAS, BN_WEIGHT, BN_BIAS, BN_MEAN, BN_VAR, BN_COUNT, DENSE, DENSE_BIAS)
BN_KINDS = (BN_WEIGHT, BN_BIAS, BN_MEAN, BN_VAR, BN_COUNT)
TRAINABLE_KINDS = (CONV, CONV_BIAS, BN_WEIGHT, BN_BIAS, DENSE, DENSE_BIAS)


# Channels-last frameworks (Keras, Flax) keep conv kernels HWIO and dense kernels (in, out);
# these axis orders take canonical arrays there and back. Other kinds keep their layout.
_CHANNELS_LAST_AXES = {CONV: (2, 3, 1, 0), DENSE: (1, 0)}
_CANONICAL_AXES = {CONV: (3, 2, 0, 1), DENSE: (1, 0)}


def channels_last_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Shape of a canonical tensor in the channels-last layout (conv HWIO, dense (in, out))."""
    axes = _CHANNELS_LAST_AXES.get(kind)
    return tuple(shape) if axes is None else tuple(shape[axis] for axis in axes)


# (source rows, source columns) of one transpose tile by value size: wide tiles cost fewer numpy
# calls and measured 20 to 70% faster than 64 x 64 on the AMD EPYC here (float32 and bfloat16).
# One thread: splitting a transpose over two measured no faster on regnet-y-320's tensors and
# twice as slow on the 10B model's (47 s against 91 s), the threads contending for memory.
_TILES = {2: (128, 256), 4: (64, 512)}
_TILE = (64, 64)  # other value sizes
_BLOCKED_FROM = 1 << 20  # values; smaller arrays transpose fast enough in one numpy call


def _transpose_into(matrix: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = matrix.T``, tile by tile (about 2x numpy's copy of a transposed view)."""
    rows, columns = matrix.shape
    tile_rows, tile_columns = _TILES.get(matrix.itemsize, _TILE)
    for column in range(0, columns, tile_columns):
        for row in range(0, rows, tile_rows):
            out[column : column + tile_columns, row : row + tile_rows] = matrix[
                row : row + tile_rows, column : column + tile_columns
            ].T


def _transposed(matrix: np.ndarray) -> np.ndarray:
    """A new C-contiguous transpose of a 2-D array (in scratch memory during a conversion)."""
    rows, columns = matrix.shape
    if matrix.size < _BLOCKED_FROM:
        return np.ascontiguousarray(matrix.T)
    out = scratch_empty((columns, rows), matrix.dtype)
    _transpose_into(matrix, out)
    return out


def _copied(value: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of any array view (in scratch memory during a conversion)."""
    out = scratch_empty(value.shape, value.dtype)
    np.copyto(out, value)
    return out


def to_channels_last(value: np.ndarray, kind: str) -> np.ndarray:
    """A new C-contiguous array in the channels-last layout (conv OIHW -> HWIO, dense transposed)."""
    value = np.asarray(value)
    if kind == DENSE and value.ndim == 2:
        return _transposed(value)
    if kind == CONV and value.ndim == 4:
        out_channels, in_channels, height, width = value.shape
        # (O, I*H*W) -> (I*H*W, O) is the large transpose; (I, H, W, O) -> (H, W, I, O) moves whole rows of O.
        flat = _transposed(np.ascontiguousarray(value).reshape(out_channels, -1))
        grid = flat.reshape(in_channels, height, width, out_channels)
        if height == width == 1:
            return grid.reshape(height, width, in_channels, out_channels)
        return _copied(grid.transpose(1, 2, 0, 3))
    return np.array(value, order="C", copy=True)


def from_channels_last(value: np.ndarray, kind: str) -> np.ndarray:
    """A new C-contiguous canonical array from the channels-last layout (inverse of to_channels_last)."""
    value = np.asarray(value)
    if kind == DENSE and value.ndim == 2:
        return _transposed(value)
    if kind == CONV and value.ndim == 4:
        height, width, in_channels, out_channels = value.shape
        if height == width == 1:
            flat = value.reshape(in_channels, out_channels)
        else:
            flat = _copied(value.transpose(2, 0, 1, 3)).reshape(in_channels * height * width, out_channels)
        return _transposed(flat).reshape(out_channels, in_channels, height, width)
    return np.array(value, order="C", copy=True)


_BLOCK_BYTES = 1 << 26  # 64 MiB: the size of the pieces the block generators hand out


def to_channels_last_blocks(value: np.ndarray, kind: str, block_bytes: int = _BLOCK_BYTES) -> Iterator[np.ndarray]:
    """``to_channels_last(value, kind)`` as C-contiguous pieces whose bytes, in order, are the whole result.

    Only the pieces are new memory: a writer streams a large transposed tensor holding it once.
    """
    value = np.asarray(value)
    if kind == DENSE and value.ndim == 2:  # (out, in) -> (in, out): rows of the result are columns of value
        step = max(1, block_bytes // max(1, value.shape[0] * value.itemsize))
        for start in range(0, value.shape[1], step):
            yield _transposed(value[:, start : start + step])
        return
    if kind == CONV and value.ndim == 4:  # (O, I, H, W) -> (H, W, I, O)
        out_channels, in_channels, height, width = value.shape
        step = max(1, block_bytes // max(1, out_channels * value.itemsize))
        for row in range(height):
            for column in range(width):
                for start in range(0, in_channels, step):
                    yield _transposed(value[:, start : start + step, row, column])
        return
    yield np.array(value, order="C", copy=True)


def from_channels_last_blocks(value: np.ndarray, kind: str, block_bytes: int = _BLOCK_BYTES) -> Iterator[np.ndarray]:
    """``from_channels_last(value, kind)`` as C-contiguous pieces whose bytes, in order, are the whole result."""
    value = np.asarray(value)
    if kind == DENSE and value.ndim == 2:
        yield from to_channels_last_blocks(value, DENSE, block_bytes)
        return
    if kind == CONV and value.ndim == 4:  # (H, W, I, O) -> (O, I, H, W): a block of output channels at a time
        height, width, in_channels, out_channels = value.shape
        step = max(1, block_bytes // max(1, in_channels * height * width * value.itemsize))
        for start in range(0, out_channels, step):
            piece = value[:, :, :, start : start + step]
            if height == width == 1:
                yield _transposed(piece.reshape(in_channels, -1)).reshape(-1, in_channels, 1, 1)
            else:
                yield _copied(piece.transpose(3, 2, 0, 1))
        return
    yield np.array(value, order="C", copy=True)


@dataclass(frozen=True)
class TensorSpec:
    """One canonical tensor: name, shape, kind and the module path it belongs to."""

    name: str
    shape: tuple[int, ...]
    kind: str
    module: str

    @property
    def dtype(self) -> np.dtype:
        """int64 for num_batches_tracked, float32 otherwise."""
        return np.dtype(np.int64) if self.kind == BN_COUNT else np.dtype(np.float32)

    @property
    def optional(self) -> bool:
        """True for tensors a checkpoint may omit (num_batches_tracked)."""
        return self.kind == BN_COUNT


def _conv(module: str, c_in: int, c_out: int, kernel: int, groups: int = 1, bias: bool = False) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{module}.weight", (c_out, c_in // groups, kernel, kernel), CONV, module)
    if bias:
        yield TensorSpec(f"{module}.bias", (c_out,), CONV_BIAS, module)


def _bn(module: str, channels: int) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{module}.weight", (channels,), BN_WEIGHT, module)
    yield TensorSpec(f"{module}.bias", (channels,), BN_BIAS, module)
    yield TensorSpec(f"{module}.running_mean", (channels,), BN_MEAN, module)
    yield TensorSpec(f"{module}.running_var", (channels,), BN_VAR, module)
    yield TensorSpec(f"{module}.num_batches_tracked", (), BN_COUNT, module)


def _conv_bn(module: str, c_in: int, c_out: int, kernel: int, groups: int = 1) -> Iterator[TensorSpec]:
    yield from _conv(f"{module}.{CONV_MODULE}", c_in, c_out, kernel, groups)
    yield from _bn(f"{module}.{NORM_MODULE}", c_out)


def block_role_modules(has_se: bool) -> dict[str, str]:
    """Canonical module of each role in a block: conv a, conv b, SE (Y blocks), conv c, projection ("proj").

    SE shifts conv c from ``layer.2`` to ``layer.3``.
    """
    names = {"a": "layer.0", "b": "layer.1"}
    if has_se:
        names.update(se="layer.2", c="layer.3")
    else:
        names.update(c="layer.2")
    names["proj"] = "shortcut"
    return names


def block_module_names(block: BlockSpec) -> dict[str, str]:
    """Relative module names inside a block: projection, conv a, conv b, SE, conv c."""
    names = block_role_modules(block.has_se)
    projection = names.pop("proj")
    if block.has_projection:
        names["projection"] = projection
    return names


def _block(prefix: str, block: BlockSpec) -> Iterator[TensorSpec]:
    names = block_module_names(block)
    if block.has_projection:
        yield from _conv_bn(f"{prefix}.shortcut", block.input_width, block.width, 1)
    yield from _conv_bn(f"{prefix}.{names['a']}", block.input_width, block.bottleneck_width, 1)
    yield from _conv_bn(f"{prefix}.{names['b']}", block.bottleneck_width, block.bottleneck_width, 3, block.groups)
    if block.has_se:
        yield from _conv(
            f"{prefix}.{names['se']}.{SE_REDUCE_MODULE}", block.bottleneck_width, block.se_width, 1, bias=True
        )
        yield from _conv(
            f"{prefix}.{names['se']}.{SE_EXPAND_MODULE}", block.se_width, block.bottleneck_width, 1, bias=True
        )
    yield from _conv_bn(f"{prefix}.{names['c']}", block.bottleneck_width, block.width, 1)


def block_prefix(stage_index: int, block_index: int) -> str:
    """Canonical module path of a block (without the model prefix)."""
    return f"encoder.stages.{stage_index}.layers.{block_index}"


def parameter_table(spec: ModelSpec, with_head: bool = True) -> list[TensorSpec]:
    """Every canonical tensor of the model, in forward order.

    ``with_head`` gives RegNetForImageClassification's names (``regnet.`` prefix and the
    ``classifier.1`` dense layer when num_labels > 0); without it, RegNetModel's names.
    """
    prefix = BASE_PREFIX if with_head else ""
    table = list(_conv_bn(f"{prefix}embedder.embedder", spec.stem.input_width, spec.stem.width, spec.stem.kernel_size))
    for stage_index, block_index, block in spec.blocks():
        table.extend(_block(prefix + block_prefix(stage_index, block_index), block))
    if with_head and spec.head.num_labels > 0:
        table.append(
            TensorSpec("classifier.1.weight", (spec.head.num_labels, spec.head.input_width), DENSE, "classifier.1")
        )
        table.append(TensorSpec("classifier.1.bias", (spec.head.num_labels,), DENSE_BIAS, "classifier.1"))
    return table


def count_parameters(table: list[TensorSpec]) -> int:
    """Number of trainable values in a table (BN running statistics excluded)."""
    return sum(int(np.prod(t.shape)) for t in table if t.kind in TRAINABLE_KINDS)


def random_state(spec: ModelSpec, seed: int = 0, with_head: bool = True) -> dict[str, np.ndarray]:
    """Seeded random canonical weights with non-trivial BN statistics and head, for parity checks.

    Convolutions are He-normal (fan-out, as pycls), BN scales and running variances are
    drawn from [0.5, 1.5], shifts and running means from N(0, 0.1^2), the classifier from
    N(0, 1/fan_in) with a N(0, 0.1^2) bias. Nothing is an identity, so a wrong layout,
    padding or BN buffer shows up in the outputs.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for tensor in parameter_table(spec, with_head):
        shape = tensor.shape
        if tensor.kind == CONV:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.normal(0.0, np.sqrt(2.0 / fan_out), shape)
        elif tensor.kind in (BN_WEIGHT, BN_VAR):
            value = rng.uniform(0.5, 1.5, shape)
        elif tensor.kind in (BN_BIAS, BN_MEAN, CONV_BIAS, DENSE_BIAS):
            value = rng.normal(0.0, 0.1, shape)
        elif tensor.kind == DENSE:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
        else:  # BN_COUNT
            value = np.zeros(shape)
        state[tensor.name] = value.astype(tensor.dtype)
    return state


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the model: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str], context: str = "") -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with the wrong shape: {', '.join(mismatched)}")
        where = f" {context}" if context else ""
        super().__init__(f"checkpoint{where} does not match the model: " + "; ".join(parts))


def check_state(state: Mapping[str, Any], table: list[TensorSpec], context: str = "") -> None:
    """Raise CheckpointMismatchError unless ``state`` has exactly the table's tensors and shapes.

    Optional tensors (num_batches_tracked) may be absent.
    """
    expected = {t.name: t for t in table}
    missing = [t.name for t in table if t.name not in state and not t.optional]
    unexpected = sorted(name for name in state if name not in expected)
    mismatched = [
        f"{name} (expected {expected[name].shape}, got {tuple(np.shape(value))})"
        for name, value in state.items()
        if name in expected and tuple(np.shape(value)) != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)


def _cast(name: str, value: Any, dtype: np.dtype) -> Any:
    """``value`` as ``dtype``, checked finite; a LazyTensor stays lazy (cast and checked when loaded)."""

    def convert(array: np.ndarray) -> np.ndarray:
        array = np.asarray(array).astype(dtype, copy=False)
        check_finite(name, array)
        return array

    if isinstance(value, LazyTensor):
        return value.map(convert)
    return convert(value)


def complete_state(state: Mapping[str, Any], table: list[TensorSpec]) -> dict[str, Any]:
    """Checked ``state`` in table order: float32 values (LazyTensors stay lazy), zero num_batches_tracked filled in.

    Integer or boolean weights are refused up front, NaN or infinity when a tensor is loaded,
    each with the tensor's name.
    """
    check_state(state, table)
    kinds = {tensor.name: tensor.kind for tensor in table}
    check_weight_dtypes(state, lambda name: kinds.get(name) == BN_COUNT)
    out = {}
    for tensor in table:
        value = state.get(tensor.name)
        if value is None:
            value = np.zeros(tensor.shape, tensor.dtype)
        out[tensor.name] = _cast(tensor.name, value, tensor.dtype)
    return out


def strip_head(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RegNetModel names from RegNetForImageClassification names (drops the classifier)."""
    return {k[len(BASE_PREFIX) :]: v for k, v in state.items() if k.startswith(BASE_PREFIX)}


def add_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RegNetForImageClassification trunk names from RegNetModel names."""
    return {BASE_PREFIX + k: v for k, v in state.items()}


HEAD_PREFIX = "classifier."


def state_has_head(names: Iterable[str]) -> bool:
    """True for RegNetForImageClassification weights (trunk names under ``regnet.``), False for RegNetModel's.

    A classifier without labels (num_labels 0) has no classifier tensors but still counts:
    its trunk is nested as in any RegNetForImageClassification.
    """
    return any(name.startswith(BASE_PREFIX) for name in names)


def prepare_state(
    state: Mapping[str, np.ndarray],
    spec: ModelSpec,
    *,
    with_head: bool,
    reinit_head: bool = False,
    context: str = "",
) -> tuple[list[TensorSpec], dict[str, np.ndarray]]:
    """Fit a canonical state to a model: (table, checked and completed state in table order).

    A classification checkpoint loads into a trunk (its classifier is dropped, as
    transformers does); a trunk checkpoint loads into a classifier only with
    ``reinit_head``, which also ignores any classifier in the checkpoint. Anything else
    that does not fit raises CheckpointMismatchError listing every problem.
    """
    table = parameter_table(spec, with_head)
    has_prefix = state_has_head(state)
    if with_head and not has_prefix:
        state = add_prefix(state)
    elif not with_head and has_prefix:
        state = strip_head(state)
    if with_head and reinit_head:
        table = [t for t in table if not t.name.startswith(HEAD_PREFIX)]
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    check_state(state, table, context)
    return table, complete_state(state, table)
