"""Neutral tensor addresses: the one vocabulary every checkpoint format's name table maps to.

A neutral name says where a tensor sits in the network without any framework's naming:

    stem.conv.weight                  stem.bn.running_var
    s0.b1.a.conv.weight               s0.b1.a.bn.weight        (stage 0, block 1, 1x1 conv a)
    s2.b0.b.conv.weight               (grouped 3x3 conv b, stride here)
    s2.b0.se.reduce.weight / .bias    s2.b0.se.expand.weight   (squeeze-and-excitation)
    s2.b0.c.conv.weight               s2.b0.proj.conv.weight   (1x1 conv c; projection shortcut)
    head.weight / head.bias           (the classifier)

Values under neutral names are in the canonical layout (conv OIHW, dense (out, in)).
Stages and blocks count from 0. The canonical (transformers) names follow from neutral
ones by one rule, which needs to know which blocks have SE (it shifts conv c from
``layer.2`` to ``layer.3``): ``to_canonical`` looks at all names of a model at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..weights import (
    BASE_PREFIX,
    BN_BIAS,
    BN_COUNT,
    BN_MEAN,
    BN_VAR,
    BN_WEIGHT,
    CLASSIFIER_MODULE,
    CONV,
    CONV_BIAS,
    CONV_MODULE,
    DENSE,
    DENSE_BIAS,
    NORM_MODULE,
    SE_EXPAND_MODULE,
    SE_REDUCE_MODULE,
    block_prefix,
    block_role_modules,
)

CONV_ROLES = ("a", "b", "c", "proj")  # conv + BN pairs inside a block
SE_PARTS = ("reduce", "expand")
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BN_KINDS = dict(zip(BN_PARAMS, (BN_WEIGHT, BN_BIAS, BN_MEAN, BN_VAR, BN_COUNT), strict=True))

_STEM = re.compile(r"stem\.(conv\.weight|bn\.(?P<bn>\w+))")
_BLOCK = re.compile(
    r"s(?P<stage>\d+)\.b(?P<block>\d+)\."
    r"(?:(?P<role>a|b|c|proj)\.(?:conv\.weight|bn\.(?P<bn>\w+))|se\.(?P<se>reduce|expand)\.(?P<se_param>weight|bias))"
)
_HEAD = re.compile(r"head\.(weight|bias)")


@dataclass(frozen=True)
class Address:
    """A parsed neutral name: where the tensor is (stage and block None outside the stages) and its kind."""

    name: str
    kind: str
    stage: int | None = None
    block: int | None = None
    role: str | None = None  # "a", "b", "c", "proj", "se", "stem" or "head"


def parse(name: str) -> Address | None:
    """The address of a neutral name, or None when it is not one."""
    match = _STEM.fullmatch(name)
    if match:
        bn = match.group("bn")
        if bn is not None and bn not in _BN_KINDS:
            return None
        return Address(name, CONV if bn is None else _BN_KINDS[bn], role="stem")
    match = _BLOCK.fullmatch(name)
    if match:
        stage, block = int(match.group("stage")), int(match.group("block"))
        if match.group("se"):
            kind = CONV if match.group("se_param") == "weight" else CONV_BIAS
            return Address(name, kind, stage, block, "se")
        bn = match.group("bn")
        if bn is not None and bn not in _BN_KINDS:
            return None
        return Address(name, CONV if bn is None else _BN_KINDS[bn], stage, block, match.group("role"))
    match = _HEAD.fullmatch(name)
    if match:
        return Address(name, DENSE if match.group(1) == "weight" else DENSE_BIAS, role="head")
    return None


def kind(name: str) -> str:
    """The canonical kind (conv, bn_weight, dense, ...) of a neutral name; ValueError when it is not one."""
    address = parse(name)
    if address is None:
        raise ValueError(f"not a neutral tensor name: {name!r}")
    return address.kind


def stem(part: str) -> str:
    """Neutral name of a stem tensor: part 'conv.weight' or 'bn.<param>'."""
    return f"stem.{part}"


def block(stage: int, block_index: int, part: str) -> str:
    """Neutral name of a block tensor, e.g. block(0, 1, 'a.conv.weight')."""
    return f"s{stage}.b{block_index}.{part}"


def _blocks_with_se(names: Iterable[str]) -> set[tuple[int, int]]:
    found = set()
    for name in names:
        address = parse(name)
        if address is not None and address.role == "se":
            found.add((address.stage, address.block))
    return found


def has_head(names: Iterable[str]) -> bool:
    """True when the names include the classifier."""
    return any(name.startswith("head.") for name in names)


def to_canonical(names: Iterable[str], with_prefix: bool | None = None) -> dict[str, str]:
    """Neutral name -> canonical (transformers) name for every name of one model.

    ``with_prefix`` (default: whether there is a head) gives RegNetForImageClassification's
    ``regnet.`` prefix; without it, RegNetModel's names. Names that are not neutral raise ValueError.
    """
    names = list(names)
    se_blocks = _blocks_with_se(names)
    prefix = BASE_PREFIX if (has_head(names) if with_prefix is None else with_prefix) else ""
    out = {}
    for name in names:
        address = parse(name)
        if address is None:
            raise ValueError(f"not a neutral tensor name: {name!r}")
        leaf = name.rsplit(".", 1)[1]
        if address.role == "head":
            out[name] = f"{CLASSIFIER_MODULE}.{leaf}"
            continue
        if address.role == "stem":
            module = f"{prefix}embedder.embedder"
            part = CONV_MODULE if address.kind == CONV else NORM_MODULE
            out[name] = f"{module}.{part}.{leaf}"
            continue
        roles = block_role_modules((address.stage, address.block) in se_blocks)
        module = f"{prefix}{block_prefix(address.stage, address.block)}"
        if address.role == "se":
            se_module = SE_REDUCE_MODULE if ".reduce." in name else SE_EXPAND_MODULE
            out[name] = f"{module}.{roles['se']}.{se_module}.{leaf}"
        else:
            part = CONV_MODULE if address.kind == CONV else NORM_MODULE
            out[name] = f"{module}.{roles[address.role]}.{part}.{leaf}"
    return out


_CANONICAL_BLOCK = re.compile(
    r"(?:regnet\.)?encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<block>\d+)\.(?P<module>shortcut|layer\.\d)\."
    r"(?:(?P<part>convolution|normalization)\.(?P<leaf>\w+)|attention\.(?P<se>[02])\.(?P<se_leaf>weight|bias))"
)
_CANONICAL_STEM = re.compile(r"(?:regnet\.)?embedder\.embedder\.(?P<part>convolution|normalization)\.(?P<leaf>\w+)")
_CANONICAL_HEAD = re.compile(r"classifier\.1\.(weight|bias)")


def from_canonical(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """(canonical name -> neutral name, canonical names that are not RegNet tensors) for one model's names."""
    names = list(names)
    se_blocks = set()
    for name in names:
        match = _CANONICAL_BLOCK.fullmatch(name)
        if match and match.group("se") is not None:
            se_blocks.add((int(match.group("stage")), int(match.group("block"))))
    out, unknown = {}, []
    for name in names:
        neutral = _canonical_to_neutral(name, se_blocks)
        if neutral is None or parse(neutral) is None:
            unknown.append(name)
        else:
            out[name] = neutral
    return out, unknown


def _canonical_to_neutral(name: str, se_blocks: set[tuple[int, int]]) -> str | None:
    match = _CANONICAL_HEAD.fullmatch(name)
    if match:
        return f"head.{match.group(1)}"
    match = _CANONICAL_STEM.fullmatch(name)
    if match:
        if match.group("part") == "convolution":
            return "stem.conv.weight" if match.group("leaf") == "weight" else None
        return f"stem.bn.{match.group('leaf')}"
    match = _CANONICAL_BLOCK.fullmatch(name)
    if not match:
        return None
    stage, block_index = int(match.group("stage")), int(match.group("block"))
    roles = {module: role for role, module in block_role_modules((stage, block_index) in se_blocks).items()}
    role = roles.get(match.group("module"))
    if role is None:
        return None
    if role == "se":
        if match.group("se") is None:
            return None
        part = "reduce" if match.group("se") == "0" else "expand"
        return f"s{stage}.b{block_index}.se.{part}.{match.group('se_leaf')}"
    if match.group("se") is not None:
        return None
    if match.group("part") == "convolution":
        return f"s{stage}.b{block_index}.{role}.conv.weight" if match.group("leaf") == "weight" else None
    return f"s{stage}.b{block_index}.{role}.bn.{match.group('leaf')}"
