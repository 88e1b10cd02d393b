"""``flax``: this package's Flax variables files (``.msgpack``), read and written without jax or flax.

A file is ``flax.serialization.to_bytes`` of the Linen variables ``{"params": ...,
"batch_stats": ...}`` of ``regnet_flax``'s modules (see ``msgpack_io`` for the bytes). The
naming rule lives here, once, and ``regnet_flax.weights`` uses it:

- the canonical module path split on dots, an index joined to the name before it (Linen's
  naming of list members): ``regnet.encoder.stages.0.layers.1.layer.0.convolution`` ->
  ``regnet/encoder/stages_0/layers_1/layer_0/convolution``; transformers' Flax classes keep
  the index as a level of its own (``stages/0``, the ``hf-flax`` format);
- the collection first and the leaf last: conv and dense weights -> ``params/.../kernel``
  (HWIO, (in, out)), biases -> ``params/.../bias``, BatchNorm weight / bias ->
  ``params/.../scale`` / ``bias``, running_mean / running_var -> ``batch_stats/.../mean`` /
  ``var``. num_batches_tracked has no Flax counterpart: it is not written, and reads as absent.

msgpack files carry no config: it comes from ``--config`` or is inferred from the weights.
Values outside the variables (a training step, ...) are listed as ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import CheckpointError
from ..msgpack_io import SEPARATOR, nest, read_msgpack, write_msgpack
from ..tensors import LazyTensor
from ..weights import BN_BIAS, BN_COUNT, BN_MEAN, BN_VAR, BN_WEIGHT, CONV, CONV_BIAS, DENSE, DENSE_BIAS
from . import neutral
from .base import CHANNELS_LAST, ForeignCheckpoint, Format, WriteRequest

PARAMS = "params"
BATCH_STATS = "batch_stats"
COLLECTIONS = (PARAMS, BATCH_STATS)
# canonical kind -> (collection, leaf name); num_batches_tracked (BN_COUNT) has no Flax counterpart.
LEAVES = {
    CONV: (PARAMS, "kernel"),
    CONV_BIAS: (PARAMS, "bias"),
    BN_WEIGHT: (PARAMS, "scale"),
    BN_BIAS: (PARAMS, "bias"),
    BN_MEAN: (BATCH_STATS, "mean"),
    BN_VAR: (BATCH_STATS, "var"),
    DENSE: (PARAMS, "kernel"),
    DENSE_BIAS: (PARAMS, "bias"),
}
# (collection, leaf) -> the canonical leaf: which of weight / bias a leaf is follows from it alone.
_CANONICAL_LEAVES = {
    (PARAMS, "kernel"): "weight",
    (PARAMS, "scale"): "weight",
    (PARAMS, "bias"): "bias",
    (BATCH_STATS, "mean"): "running_mean",
    (BATCH_STATS, "var"): "running_var",
}
_LINEN_MEMBER = re.compile(r"(?P<name>.*[^\d_])_(?P<index>\d+)")


def native_module_path(module: str) -> tuple[str, ...]:
    """Linen module path of a canonical one: 'encoder.stages.0.layers.1' -> ('encoder', 'stages_0', 'layers_1')."""
    parts: list[str] = []
    for part in module.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def transformers_module_path(module: str) -> tuple[str, ...]:
    """transformers' Flax module path of a canonical one: 'encoder.stages.0' -> ('encoder', 'stages', '0')."""
    return tuple(module.split("."))


def variable_path(module: str, kind: str, linen_names: bool = True) -> tuple[str, ...] | None:
    """(collection, *module path, leaf) of a canonical tensor of ``kind`` in ``module``; None for num_batches_tracked.

    ``linen_names``: this package's Linen names (``stages_0``); else transformers' (``stages/0``).
    """
    if kind == BN_COUNT:
        return None
    collection, leaf = LEAVES[kind]
    parts = native_module_path(module) if linen_names else transformers_module_path(module)
    return (collection, *parts, leaf)


def canonical_name(path: str, linen_names: bool = True) -> str | None:
    """The canonical name a '/'-joined Flax variable path stands for (unchecked: see ``to_neutral``), or None."""
    parts = path.split(SEPARATOR)
    if len(parts) < 3 or parts[0] not in COLLECTIONS:
        return None
    collection, *modules, leaf = parts
    canonical_leaf = _CANONICAL_LEAVES.get((collection, leaf))
    if canonical_leaf is None:
        return None
    if linen_names:
        expanded = []
        for part in modules:
            match = _LINEN_MEMBER.fullmatch(part)
            expanded.extend((match.group("name"), match.group("index")) if match else (part,))
        modules = expanded
    return ".".join((*modules, canonical_leaf))


def flax_to_neutral(names: Sequence[str], linen_names: bool) -> tuple[dict[str, str], list[str]]:
    """(Flax variable path -> neutral name, paths that are no RegNet variable), each checked by mapping it back."""
    canonical = {name: canonical_name(name, linen_names) for name in names}
    to_neutral, _ = neutral.from_canonical([c for c in canonical.values() if c is not None])
    mapped, unknown = {}, []
    for name, canonical_of in canonical.items():
        result = to_neutral.get(canonical_of) if canonical_of is not None else None
        if result is not None:
            module = canonical_of.rsplit(".", 1)[0]
            back = variable_path(module, neutral.kind(result), linen_names)
            if back is not None and SEPARATOR.join(back) == name:
                mapped[name] = result
                continue
        unknown.append(name)
    return mapped, unknown


def neutral_to_flax(names: Sequence[str], linen_names: bool) -> dict[str, str]:
    """Neutral name -> '/'-joined Flax variable path for one model's tensors (num_batches_tracked left out)."""
    canonical = neutral.to_canonical(names)
    out = {}
    for name in names:
        path = variable_path(canonical[name].rsplit(".", 1)[0], neutral.kind(name), linen_names)
        if path is not None:
            out[name] = SEPARATOR.join(path)
    return out


def read_variables(path: Path, what: str) -> tuple[dict[str, LazyTensor], list[str], list[str]]:
    """(arrays by path, ignored entries, notes) of one msgpack file."""
    contents = read_msgpack(path)
    ignored = [f"{name} ({kind})" for name, kind in contents.others.items()]
    notes = []
    if ignored:
        notes.append(f"{path.name}: ignored {len(ignored)} value(s) that are not arrays ({', '.join(ignored[:5])})")
    if not contents.tensors:
        raise CheckpointError(f"{path} holds no arrays; expected {what}")
    return contents.tensors, ignored, notes


def write_variables(request: WriteRequest, names: Mapping[str, str], target: Path, layout: str) -> Path:
    """Stream the request's tensors (renamed by ``names``, params before batch_stats) into one msgpack file."""
    flat, dtypes = ordered_variables(request, names, layout)
    write_msgpack(target, nest(flat), dtypes, request.progress)
    return target


def ordered_variables(
    request: WriteRequest, names: Mapping[str, str], layout: str
) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """(path -> tensor in ``layout``, path -> output dtype), params first, then batch_stats, each in forward order."""
    order = sorted(names, key=lambda n: COLLECTIONS.index(names[n].split(SEPARATOR, 1)[0]))  # stable
    flat = {names[n]: request.in_layout(n, layout) for n in order}
    dtypes = {names[n]: request.dtypes[n] for n in order}
    return flat, dtypes


class FlaxFormat(Format):
    """This package's Flax variables (``params/regnet/encoder/stages_0/layers_0/layer_0/convolution/kernel``)."""

    name = "flax"
    description = "Flax variables file (.msgpack: {'params', 'batch_stats'}, Linen names such as stages_0)"
    library = "flax"
    layout = CHANNELS_LAST
    can_write = True
    output_suffixes = (".msgpack",)

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".msgpack")

    def peek_names(self, path: Path) -> list[str]:
        return list(read_msgpack(path).tensors)

    def open(self, path: Path) -> ForeignCheckpoint:
        if not path.is_file():
            raise CheckpointError(
                f"expected a Flax .msgpack variables file, got {path} "
                f"({'a directory' if path.exists() else 'no such path'})"
            )
        tensors, ignored, notes = read_variables(path, "Flax variables {'params': ..., 'batch_stats': ...}")
        return ForeignCheckpoint(path, self.name, [path], tensors, None, ignored, notes)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return flax_to_neutral(names, linen_names=True)

    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        return neutral_to_flax(names, linen_names=True)

    def write(self, request: WriteRequest) -> list[Path]:
        names = self.from_neutral(list(request.tensors))
        return [write_variables(request, names, request.target, self.layout)]


FORMAT = FlaxFormat()
