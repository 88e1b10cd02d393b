"""``vissl``: SEER RegNets from vissl / ClassyVision (``.torch`` / ``.pth`` PyTorch pickles), read only.

vissl saves ``{"classy_state_dict": {"base_model": {"model": {"trunk": {...}, "heads": {...}}}}, ...}``
(the 10B model's consolidated FSDP file adds ``"type": "consolidated"`` and nothing else);
this reader unwraps that nesting, and also reads a trunk state dict saved on its own, with
or without the ``_feature_blocks.`` level, or a model state dict with ``trunk.`` / ``heads.``
prefixes. Tensors are named as in vissl's model: ``trunk._feature_blocks.conv1.stem.0.weight``,
``trunk._feature_blocks.res2.block1-0.f.a.0.weight`` (``res{S+1}.block{S}-{i}``: stages from 1,
blocks from 0 over the whole stage), ``heads.0.clf.0.weight``. The 10B trunk groups a
stage's blocks into ``res4.block3-part{k}.block3-{i}`` without restarting ``i``.

Heads: an in1k fine-tuned SEER head is one Linear, ``0.clf.0.{weight,bias}``, read as the
classifier. Any other head (SwAV projection head and prototypes, linear-eval heads) is not
a classifier of this network: it is set aside with a note and the trunk is converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..containers import flatten_pickle, load_pickle, open_safetensors_file, tensor_file_kind
from ..errors import CheckpointError
from ..tensors import LazyTensor
from ..weights import CONV
from . import neutral
from .base import ForeignCheckpoint, Format, NameTable, ReferenceUnavailable

_BLOCK = "block{stage1}-{block}"
# Names below are trunk-relative after ``_feature_blocks.res{S+1}.`` (and any ``block{S}-part{k}.``) is taken off.
VISSL_TABLE = NameTable(
    [
        ("conv1.stem.0.weight", "stem.conv.weight"),
        ("conv1.stem.1.{bn}", "stem.bn.{bn}"),
        (f"{_BLOCK}.proj.weight", "s{stage}.b{block}.proj.conv.weight"),
        (f"{_BLOCK}.bn.{{bn}}", "s{stage}.b{block}.proj.bn.{bn}"),  # the shortcut's BN sits on the block
        (f"{_BLOCK}.f.a.0.weight", "s{stage}.b{block}.a.conv.weight"),
        (f"{_BLOCK}.f.a.1.{{bn}}", "s{stage}.b{block}.a.bn.{bn}"),
        (f"{_BLOCK}.f.b.0.weight", "s{stage}.b{block}.b.conv.weight"),
        (f"{_BLOCK}.f.b.1.{{bn}}", "s{stage}.b{block}.b.bn.{bn}"),
        (f"{_BLOCK}.f.se.excitation.0.{{wb}}", "s{stage}.b{block}.se.reduce.{wb}"),
        (f"{_BLOCK}.f.se.excitation.2.{{wb}}", "s{stage}.b{block}.se.expand.{wb}"),
        (f"{_BLOCK}.f.c.weight", "s{stage}.b{block}.c.conv.weight"),
        (f"{_BLOCK}.f.final_bn.{{bn}}", "s{stage}.b{block}.c.bn.{bn}"),
        ("heads.0.clf.0.{wb}", "head.{wb}"),
    ]
)

TRUNK, HEADS = "trunk.", "heads."
FEATURE_BLOCKS = "_feature_blocks."
CLASSIFIER = ("0.clf.0.weight", "0.clf.0.bias")  # an in1k fine-tuned SEER head (vissl's mlp head: one Linear)
# vissl's checkpoint nesting, outermost first; each level is optional so that re-saved parts read too.
NESTING = ("classy_state_dict", "base_model", "model")
# Whole-dict prefixes that wrappers add to a trunk's keys: DataParallel, vissl's linear-eval FeatureExtractorModel.
TRUNK_WRAPPERS = ("module.", "base_model.")

_RES = re.compile(r"res(?P<res>\d+)\.(?:block(?P<part_stage>\d+)-part\d+\.)?(?P<rest>block(?P<stage>\d+)-\d+\..+)")


def trunk_key(name: str) -> str | None:
    """A vissl tensor name reduced to the table's form (``block1-0.f.a.0.weight``), or None when it is none."""
    if name.startswith(HEADS):
        return name
    body = name.removeprefix(TRUNK).removeprefix(FEATURE_BLOCKS)
    if body.startswith("conv1."):
        return body
    match = _RES.fullmatch(body)
    if match is None:
        return None
    stage = int(match.group("stage"))
    if int(match.group("res")) != stage + 1:  # vissl names stage S's module res{S+1}
        return None
    if match.group("part_stage") is not None and int(match.group("part_stage")) != stage:
        return None
    return match.group("rest")


def _kind(value: Any) -> str:
    return type(value).__name__


def _unwrap(obj: Mapping[str, Any], path: Path, notes: list[str], ignored: list[str]) -> Any:
    """The mapping under vissl's nesting (each level taken when present); the rest of each level is ignored."""
    node: Any = obj
    taken: list[str] = []
    if obj.get("type") == "consolidated":
        notes.append(f"{path.name} is a consolidated FSDP checkpoint (vissl's form of the SEER 10B files)")
    for key in NESTING:
        if not isinstance(node, Mapping) or key not in node:
            continue
        if not isinstance(node[key], Mapping):
            if not taken and key != NESTING[0]:
                break  # a top-level "model" / "base_model" entry that is no mapping is not vissl's nesting
            where = ".".join([*taken, key])
            raise CheckpointError(f"{path}: {where} is a {_kind(node[key])}; expected vissl's mapping there")
        for other, value in node.items():
            if other != key:
                ignored.append(f"{'.'.join([*taken, str(other)])} ({_kind(value)})")
        node = node[key]
        taken.append(key)
    if taken:
        notes.append(f"read the model under {'.'.join(taken)} of {path.name}")
    return node


def _strip_trunk_wrappers(tensors: dict[str, LazyTensor], notes: list[str]) -> dict[str, LazyTensor]:
    """The tensors without a prefix that every trunk name carries (``module.``, linear-eval's ``base_model.``)."""
    for wrapper in TRUNK_WRAPPERS:
        for outer in ("", TRUNK):
            trunk = [name for name in tensors if not name.startswith(HEADS)]
            if trunk and all(name.startswith(outer + wrapper) for name in trunk):
                notes.append(f"removed the {wrapper!r} prefix from every trunk tensor name")
                return {
                    (outer + name[len(outer + wrapper) :] if not name.startswith(HEADS) else name): tensor
                    for name, tensor in tensors.items()
                }
    return tensors


def _trunk_width(tensors: Mapping[str, LazyTensor]) -> int | None:
    """Output width of the trunk (rows of its last block's conv c), or None when the names do not say."""
    last: tuple[int, int] | None = None
    width = None
    for name, tensor in tensors.items():
        key = trunk_key(name)
        target = VISSL_TABLE.to_neutral(key) if key is not None else None
        address = neutral.parse(target) if target is not None else None
        if address is None or address.role != "c" or address.kind != CONV or not tensor.shape:
            continue
        position = (address.stage, address.block)
        if last is None or position > last:
            last, width = position, int(tensor.shape[0])
    return width


def _split_heads(tensors: dict[str, LazyTensor], notes: list[str], ignored: list[str]) -> dict[str, LazyTensor]:
    """The tensors with the heads kept only when they are one Linear on the trunk's output (a classifier)."""
    heads = {name[len(HEADS) :]: tensor for name, tensor in tensors.items() if name.startswith(HEADS)}
    if not heads:
        return tensors
    trunk = {name: tensor for name, tensor in tensors.items() if not name.startswith(HEADS)}
    weight, bias = (heads.get(key) for key in CLASSIFIER)
    width = _trunk_width(trunk)
    if (
        set(heads) == set(CLASSIFIER)
        and weight is not None
        and bias is not None
        and weight.ndim == 2
        and bias.shape == (weight.shape[0],)
        and weight.shape[1] == width
    ):
        notes.append(f"read the classifier from the head 0.clf.0 ({weight.shape[0]} classes)")
        return tensors
    shown = ", ".join(sorted(heads)[:6]) + (" ..." if len(heads) > 6 else "")
    notes.append(
        f"the heads ({shown}) are not one Linear on the {width}-wide trunk output "
        "(a self-supervised projection head, prototypes or another head): read the trunk only, without a classifier"
    )
    ignored.extend(f"{HEADS}{name} (head tensor {tuple(t.shape)})" for name, t in heads.items())
    return trunk


class VisslFormat(Format):
    """vissl's SEER names (``_feature_blocks.res2.block1-0.f.a.0``, ``...-part0...``, heads ``0.clf.0``)."""

    name = "vissl"
    description = "vissl / ClassyVision SEER checkpoint (.torch / .pth; classy_state_dict, trunk and heads)"
    library = "vissl"

    def claims(self, path: Path) -> bool:
        return path.is_file() and tensor_file_kind(path) is not None and path.suffix != ".pyth"

    def open(self, path: Path) -> ForeignCheckpoint:
        if not path.is_file():
            raise CheckpointError(
                f"expected a vissl checkpoint file (.torch / .pth), got {path} "
                f"({'a directory' if path.is_dir() else 'no such path'})"
            )
        notes: list[str] = []
        ignored: list[str] = []
        if tensor_file_kind(path) == "safetensors":
            tensors = open_safetensors_file(path)
        else:
            obj = load_pickle(path)
            if not isinstance(obj, Mapping):
                raise CheckpointError(
                    f"{path} holds a {_kind(obj)}; expected vissl's checkpoint dict (classy_state_dict, ...) "
                    "or a trunk state dict"
                )
            node = _unwrap(obj, path, notes, ignored)
            tensors, others = flatten_pickle(node, path)
            ignored.extend(f"{name} ({kind})" for name, kind in others.items())
        tensors = _strip_trunk_wrappers(tensors, notes)
        tensors = _split_heads(tensors, notes, ignored)
        if not tensors:
            raise CheckpointError(
                f"expected the tensors of a vissl RegNet trunk (_feature_blocks.conv1.stem.0.weight, ...) in {path}, "
                f"found none (set aside: {', '.join(ignored[:8]) or 'nothing'})"
            )
        return ForeignCheckpoint(path, self.name, [path], tensors, None, ignored, notes)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        mapped, unknown = {}, []
        for name in names:
            key = trunk_key(name)
            result = VISSL_TABLE.to_neutral(key) if key is not None else None
            if result is None:
                unknown.append(name)
            else:
                mapped[name] = result
        return mapped, unknown

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        raise ReferenceUnavailable(
            "vissl's own RegNet is not run here (it needs vissl's config system, and the 10B trunk CUDA FSDP); "
            "the source weights run in this package's backends instead"
        )


FORMAT = VisslFormat()
