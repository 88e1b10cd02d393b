"""``pycls``: pycls ``.pyth`` checkpoints (the RegNet paper's own zoo), read only.

A ``.pyth`` file is ``torch.save({"epoch", "model_state", "optimizer_state", "cfg"})``, zip
or legacy serialisation; pycls main adds ``ema_state`` with ``test_err`` / ``ema_err`` and
loads whichever state has the lower error, as this reader does. A bare state dict is read
too. Everything but the chosen model state (optimizer, epoch, the other state) is set aside,
not refused. The yacs ``cfg`` is checked for what the weights cannot show (model type, stem
and block type, BN epsilon, activation). pycls trained on BGR images, so its stem expects
BGR input: ``--bgr-to-rgb`` flips it for an RGB model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..containers import flatten_pickle, load_pickle, tensor_file_kind
from ..errors import CheckpointError, FormatError
from ..specs import BN_EPS
from .base import ForeignCheckpoint, Format, NameTable, ReferenceUnavailable
from .timm import drop_empty_head, read_state_file, strip_module_prefix

PYCLS_SUFFIX = ".pyth"
_BLOCK = "s{stage1}.b{block1}"
PYCLS_TABLE = NameTable(
    [
        ("stem.conv.weight", "stem.conv.weight"),
        ("stem.bn.{bn}", "stem.bn.{bn}"),
        (f"{_BLOCK}.proj.weight", "s{stage}.b{block}.proj.conv.weight"),
        (f"{_BLOCK}.bn.{{bn}}", "s{stage}.b{block}.proj.bn.{bn}"),  # the shortcut's BN sits directly on the block
        (f"{_BLOCK}.f.a.weight", "s{stage}.b{block}.a.conv.weight"),
        (f"{_BLOCK}.f.a_bn.{{bn}}", "s{stage}.b{block}.a.bn.{bn}"),
        (f"{_BLOCK}.f.b.weight", "s{stage}.b{block}.b.conv.weight"),
        (f"{_BLOCK}.f.b_bn.{{bn}}", "s{stage}.b{block}.b.bn.{bn}"),
        (f"{_BLOCK}.f.se.f_ex.0.{{wb}}", "s{stage}.b{block}.se.reduce.{wb}"),
        (f"{_BLOCK}.f.se.f_ex.2.{{wb}}", "s{stage}.b{block}.se.expand.{wb}"),
        (f"{_BLOCK}.f.c.weight", "s{stage}.b{block}.c.conv.weight"),
        (f"{_BLOCK}.f.c_bn.{{bn}}", "s{stage}.b{block}.c.bn.{bn}"),
        ("head.fc.{wb}", "head.{wb}"),
    ]
)
BGR_NOTE = "pycls weights expect BGR input; pass --bgr-to-rgb for an RGB model"
MODEL_STATE, EMA_STATE = "model_state", "ema_state"
_NO_ERROR = 100.0  # pycls's loader takes a missing test_err / ema_err as 100 (%)


def choose_state(checkpoint: Mapping[str, Any]) -> tuple[str, str]:
    """(the state pycls's own loader takes, why): ``ema_state`` only when ``ema_err < test_err``."""
    if EMA_STATE not in checkpoint:
        return MODEL_STATE, ""
    test_err = _error(checkpoint, "test_err")
    ema_err = _error(checkpoint, "ema_err")
    if test_err <= ema_err:
        return (
            MODEL_STATE,
            f"took model_state, not ema_state (test_err {test_err:g} <= ema_err {ema_err:g}), as pycls does",
        )
    return EMA_STATE, f"took ema_state, not model_state (ema_err {ema_err:g} < test_err {test_err:g}), as pycls does"


def _error(checkpoint: Mapping[str, Any], key: str) -> float:
    value = checkpoint.get(key, _NO_ERROR)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"the pycls checkpoint's {key} is {value!r}; expected a number") from None


def check_cfg(text: Any, path: Path) -> dict[str, Any]:
    """The parsed yacs cfg of a pycls checkpoint, refused when it describes another network than a plain RegNet."""
    if not isinstance(text, str):
        return {}
    try:
        import yaml
    except ModuleNotFoundError:
        return {}
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(cfg, dict):
        return {}
    model = cfg.get("MODEL") if isinstance(cfg.get("MODEL"), dict) else {}
    kind = str(model.get("TYPE", "")).lower()
    if kind and kind not in ("regnet", "anynet"):
        raise FormatError(f"{path} is a pycls {model['TYPE']} checkpoint (cfg MODEL.TYPE); expected a RegNet")
    section = cfg.get(kind.upper()) if kind and isinstance(cfg.get(kind.upper()), dict) else {}
    expected = {"STEM_TYPE": "simple_stem_in", "BLOCK_TYPE": "res_bottleneck_block"}
    for key, value in expected.items():
        if key in section and str(section[key]) != value:
            raise FormatError(f"{path}: cfg {kind.upper()}.{key} is {section[key]!r}; a RegNet has {value!r}")
    eps = (cfg.get("BN") or {}).get("EPS") if isinstance(cfg.get("BN"), dict) else None
    if eps is not None and abs(float(eps) - BN_EPS) > 1e-12:
        raise FormatError(f"{path}: cfg BN.EPS is {eps}; this RegNet's BatchNorm uses {BN_EPS}")
    activation = model.get("ACTIVATION_FUN")
    if activation is not None and str(activation).lower() != "relu":
        raise FormatError(f"{path}: cfg MODEL.ACTIVATION_FUN is {activation!r}; this RegNet uses relu")
    return cfg


class PyclsFormat(Format):
    """pycls's RegNet names (``s1.b1.f.a``, ``s1.b1.f.a_bn``, ``s1.b1.proj`` + ``s1.b1.bn``, ``head.fc``)."""

    name = "pycls"
    description = "pycls .pyth checkpoint (model_state / ema_state; BGR input)"
    library = "pycls"

    def claims(self, path: Path) -> bool:
        return path.is_file() and tensor_file_kind(path) is not None

    def open(self, path: Path) -> ForeignCheckpoint:
        if not path.is_file():
            raise CheckpointError(
                f"expected a pycls .pyth file, got {path} ({'a directory' if path.is_dir() else 'no such path'})"
            )
        if tensor_file_kind(path) == "safetensors":
            state = read_state_file(path)
            tensors, ignored, notes, extra = state.tensors, state.ignored, state.notes, {}
        else:
            tensors, ignored, notes, extra = self._open_pickle(path)
        tensors = drop_empty_head(tensors, "head.fc.weight", "head.fc.bias", notes, ignored)
        notes.append(BGR_NOTE)
        return ForeignCheckpoint(path, self.name, [path], tensors, None, ignored, notes, extra)

    def _open_pickle(self, path: Path) -> tuple[dict, list[str], list[str], dict[str, Any]]:
        obj = load_pickle(path)
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}; expected pycls's checkpoint dict or a state dict"
            )
        notes: list[str] = []
        ignored: list[str] = []
        extra: dict[str, Any] = {}
        if MODEL_STATE not in obj:
            tensors, others = flatten_pickle(obj, path)
            ignored.extend(f"{name} ({kind})" for name, kind in others.items())
            return strip_module_prefix(tensors, notes), ignored, notes, extra
        key, why = choose_state(obj)
        if why:
            notes.append(why)
        state = obj[key]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: {key} is a {type(state).__name__}; expected a state dict")
        for other, value in obj.items():
            if other != key:
                ignored.append(f"{other} ({type(value).__name__})")
        if "epoch" in obj:
            extra["epoch"] = obj["epoch"]
        extra["cfg"] = check_cfg(obj.get("cfg"), path)
        tensors, others = flatten_pickle(state, path)
        ignored.extend(f"{key}.{name} ({kind})" for name, kind in others.items())
        return strip_module_prefix(tensors, notes), ignored, notes, extra

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return PYCLS_TABLE.map_to_neutral(names)

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        raise ReferenceUnavailable(
            "pycls's own model code is not run here (it needs pycls's global cfg and BGR input); "
            "the source weights run in this package's backends instead"
        )


FORMAT = PyclsFormat()
