"""What a checkpoint format is: how to find its files, read its tensors and map its names.

A format is a name table (its tensor names <-> neutral names, see ``neutral.py``) plus a
layout ("torch": conv OIHW and dense (out, in); "channels_last": conv HWIO and dense
(in, out)) plus the container its tensors live in. Formats stream: reading gives
LazyTensors, writing pulls one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..tensors import LazyTensor
from ..weights import (
    CONV,
    DENSE,
    from_channels_last,
    from_channels_last_blocks,
    to_channels_last,
    to_channels_last_blocks,
)
from . import neutral

TORCH_LAYOUT = "torch"
CHANNELS_LAST = "channels_last"

Progress = Callable[[str, int], None]


class ReferenceUnavailable(Exception):
    """The source's own library cannot run this checkpoint here; the message says why."""


@dataclass
class ForeignCheckpoint:
    """A checkpoint's tensors under the source's own names, and what else its files said."""

    path: Path
    format: str
    files: list[Path]
    tensors: dict[str, LazyTensor]
    config: RegNetConfig | None = None  # the source's own RegNet config, when its files carry one
    ignored: list[str] = field(default_factory=list)  # entries skipped on purpose (optimizer state, ...)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (e.g. a timm architecture name)


@dataclass(frozen=True)
class WriteRequest:
    """Everything a writer needs: where, what network, which tensors (neutral names, canonical layout), how."""

    target: Path  # a temporary path: a file or a directory to create, renamed into place by the caller
    config: RegNetConfig
    tensors: Mapping[str, LazyTensor]  # neutral name -> canonical-layout tensor, in forward order
    dtypes: Mapping[str, str]  # neutral name -> output dtype
    max_shard_size: int
    progress: Progress | None = None
    preprocessor: Mapping[str, Any] | None = None  # preprocessor_config.json to write beside the weights, if any
    destination: Path | None = None  # where the output will be once complete (``target`` is a temporary sibling)
    # The same tensors already in ``prepared_layout``, read and transposed ahead in the background
    # (see convert.write_checkpoint); writers take them through ``in_layout``.
    prepared: Mapping[str, LazyTensor] | None = None
    prepared_layout: str = TORCH_LAYOUT

    def in_layout(self, name: str, layout: str) -> LazyTensor:
        """Tensor ``name`` in a format's layout: the prepared one where it was prepared in that layout."""
        if self.prepared is not None and self.prepared_layout == layout:
            return self.prepared[name]
        return from_canonical_layout(self.tensors[name], name, layout)


class Format:
    """Base class of a checkpoint format; subclasses fill in the parts they support."""

    name: str = ""
    description: str = ""
    library: str = ""  # the source's own library, as --verify names it
    layout: str = TORCH_LAYOUT
    can_read: bool = True
    can_write: bool = False
    writes_directory: bool = False  # False: the output is one file
    output_suffixes: tuple[str, ...] = ()  # accepted file name endings of a written file
    verify_image_size: int = 64  # input size at which --verify compares with the source model

    # ------------------------------------------------------------- detection
    def claims(self, path: Path) -> bool:
        """True when the path's file names fit this format (tensor names are checked separately)."""
        return False

    def recognises(self, names: Sequence[str]) -> float:
        """Share of these source tensor names that this format's table maps (0 to 1)."""
        if not names:
            return 0.0
        mapped, _ = self.to_neutral(names)
        return len(mapped) / len(names)

    def peek_names(self, path: Path) -> list[str]:
        """Tensor names of a checkpoint without reading values (default: open it)."""
        return list(self.open(path).tensors)

    # ------------------------------------------------------------- reading
    def open(self, path: Path) -> ForeignCheckpoint:
        """The tensors of a checkpoint in this format, lazily."""
        raise NotImplementedError(f"reading {self.name} checkpoints is not supported")

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """(source name -> neutral name, names that are not RegNet tensors in this format)."""
        raise NotImplementedError

    # ------------------------------------------------------------- writing
    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        """Neutral name -> this format's name, for every tensor of one model."""
        raise NotImplementedError

    def write(self, request: WriteRequest) -> list[Path]:
        """Write a checkpoint at ``request.target``; returns the files written."""
        raise NotImplementedError(f"writing {self.name} checkpoints is not supported")

    # ------------------------------------------------------------- checks
    def reference_logits(
        self, foreign: ForeignCheckpoint, config: RegNetConfig
    ) -> Callable[[np.ndarray], np.ndarray] | None:
        """A function NCHW batch -> logits (or pooled features) that runs the source's own library, if installed."""
        return None


# ----------------------------------------------------------------------------- layouts


def to_canonical_layout(tensor: LazyTensor, neutral_name: str, layout: str) -> LazyTensor:
    """A source tensor in the canonical layout (conv OIHW, dense (out, in))."""
    kind = neutral.kind(neutral_name)
    if layout == TORCH_LAYOUT or kind not in (CONV, DENSE):
        return tensor
    shape = tuple(tensor.shape)
    if kind == CONV and len(shape) == 4:
        new_shape = (shape[3], shape[2], shape[0], shape[1])
    elif kind == DENSE and len(shape) == 2:
        new_shape = (shape[1], shape[0])
    else:
        return tensor  # a wrong rank shows up in the shape check, named
    return _with_blocks(
        tensor.map(lambda value: from_channels_last(value, kind), new_shape, layout_only=True),
        tensor,
        lambda stored: from_channels_last_blocks(stored, kind),
    )


def _with_blocks(
    moved: LazyTensor, source: LazyTensor, blocks: Callable[[np.ndarray], Iterator[np.ndarray]]
) -> LazyTensor:
    """``moved`` able to stream its stored values in pieces: the source is held once, only the pieces are new."""

    def stored_blocks() -> Iterator[np.ndarray]:
        yield from blocks(source.load_stored())

    return dataclasses.replace(moved, stored_blocks=stored_blocks)


def from_canonical_layout(tensor: LazyTensor, neutral_name: str, layout: str) -> LazyTensor:
    """A canonical-layout tensor in a format's layout."""
    kind = neutral.kind(neutral_name)
    if layout == TORCH_LAYOUT or kind not in (CONV, DENSE):
        return tensor
    shape = tuple(tensor.shape)
    new_shape = (shape[2], shape[3], shape[1], shape[0]) if kind == CONV else (shape[1], shape[0])
    return _with_blocks(
        tensor.map(lambda value: to_channels_last(value, kind), new_shape, layout_only=True),
        tensor,
        lambda stored: to_channels_last_blocks(stored, kind),
    )


# ----------------------------------------------------------------------------- name tables

TORCH_BN = {p: p for p in neutral.BN_PARAMS}
KERAS_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}

_FIELD = re.compile(r"\{(stage1|stage|block1|block|bn|wb)\}")


@dataclass(frozen=True)
class _Rule:
    foreign: str
    neutral: str
    foreign_regex: re.Pattern
    neutral_regex: re.Pattern


def _compile(template: str, bn_values: Iterable[str]) -> re.Pattern:
    seen: set[str] = set()
    pattern = ""
    position = 0
    for match in _FIELD.finditer(template):
        pattern += re.escape(template[position : match.start()])
        field_name = match.group(1)
        if field_name in seen:
            pattern += f"(?P={field_name})"
        else:
            seen.add(field_name)
            if field_name == "bn":
                pattern += "(?P<bn>" + "|".join(re.escape(v) for v in sorted(bn_values, key=len, reverse=True)) + ")"
            elif field_name == "wb":
                pattern += "(?P<wb>weight|bias)"
            else:
                pattern += f"(?P<{field_name}>\\d+)"
        position = match.end()
    pattern += re.escape(template[position:])
    return re.compile(pattern)


class NameTable:
    """Two-way name mapping from templates: ``("s{stage1}.b{block1}.conv1.conv.weight", "s{stage}.b{block}.a.conv.weight")``.

    Fields: ``{stage}`` / ``{block}`` count from 0, ``{stage1}`` / ``{block1}`` from 1 (a
    template may use either; a field may repeat, as in ``block{stage1}.block{stage1}-{block}``),
    ``{bn}`` a BatchNorm parameter (through ``bn_names``: neutral -> source) and ``{wb}``
    weight or bias. Neutral templates use ``{stage}``, ``{block}``, ``{bn}`` and ``{wb}``.
    """

    def __init__(self, rules: Sequence[tuple[str, str]], bn_names: Mapping[str, str] = TORCH_BN) -> None:
        self.bn_names = dict(bn_names)
        self._bn_back = {v: k for k, v in self.bn_names.items()}
        self.rules = [
            _Rule(f, n, _compile(f, self.bn_names.values()), _compile(n, self.bn_names.keys())) for f, n in rules
        ]

    @staticmethod
    def _values(match: re.Match, bn_map: Mapping[str, str]) -> dict[str, Any]:
        groups = match.groupdict()
        values: dict[str, Any] = {}
        if groups.get("stage") is not None:
            values["stage"] = int(groups["stage"])
        if groups.get("stage1") is not None:
            values["stage"] = int(groups["stage1"]) - 1
        if groups.get("block") is not None:
            values["block"] = int(groups["block"])
        if groups.get("block1") is not None:
            values["block"] = int(groups["block1"]) - 1
        if groups.get("bn") is not None:
            values["bn"] = bn_map[groups["bn"]]
        if groups.get("wb") is not None:
            values["wb"] = groups["wb"]
        return values

    @staticmethod
    def _fill(template: str, values: Mapping[str, Any], bn_map: Mapping[str, str]) -> str | None:
        if min(values.get("stage", 0), values.get("block", 0)) < 0:
            return None
        filled = {
            "stage": values.get("stage"),
            "stage1": None if values.get("stage") is None else values["stage"] + 1,
            "block": values.get("block"),
            "block1": None if values.get("block") is None else values["block"] + 1,
            "bn": None if values.get("bn") is None else bn_map.get(values["bn"]),
            "wb": values.get("wb"),
        }

        def replace(match: re.Match) -> str:
            value = filled[match.group(1)]
            if value is None:
                raise KeyError(match.group(1))
            return str(value)

        try:
            return _FIELD.sub(replace, template)
        except KeyError:
            return None

    def to_neutral(self, name: str) -> str | None:
        """The neutral name of a source name, or None."""
        for rule in self.rules:
            match = rule.foreign_regex.fullmatch(name)
            if match:
                result = self._fill(rule.neutral, self._values(match, self._bn_back), {k: k for k in neutral.BN_PARAMS})
                if result is not None and neutral.parse(result) is not None:
                    return result
        return None

    def from_neutral(self, name: str) -> str | None:
        """The source name of a neutral name, or None when the table has no rule for it."""
        for rule in self.rules:
            match = rule.neutral_regex.fullmatch(name)
            if match:
                result = self._fill(rule.foreign, self._values(match, {k: k for k in neutral.BN_PARAMS}), self.bn_names)
                if result is not None:
                    return result
        return None

    def map_to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """(source -> neutral for the names the table knows, the others)."""
        mapped, unknown = {}, []
        for name in names:
            result = self.to_neutral(name)
            if result is None:
                unknown.append(name)
            else:
                mapped[name] = result
        return mapped, unknown

    def map_from_neutral(self, names: Sequence[str], format_name: str = "") -> dict[str, str]:
        """neutral -> source for every name; a name the table cannot express raises ValueError."""
        out = {}
        for name in names:
            result = self.from_neutral(name)
            if result is None:
                raise ValueError(f"the {format_name or 'target'} format has no name for the tensor {name!r}")
            out[name] = result
        return out


def strip_prefix(names: Iterable[str], prefixes: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The first prefix that every name carries ('' if none), and name -> name without it."""
    names = list(names)
    for prefix in prefixes:
        if names and all(name.startswith(prefix) for name in names):
            return prefix, {name: name[len(prefix) :] for name in names}
    return "", {name: name for name in names}
