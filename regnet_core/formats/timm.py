"""``timm``: timm's plain RegNetX / RegNetY state dicts (``regnetx_*``, ``regnety_*``), read and written.

Reads a .safetensors / .pth / .bin / .pt state dict (also inside a ``{"state_dict": ...}`` or
``{"model": ...}`` wrapper) or a timm hub directory (``model.safetensors`` or
``pytorch_model.bin`` beside timm's own ``config.json`` with ``architecture``). Writes one
.safetensors file (numpy only) or a .pth / .bin / .pt pickle (needs PyTorch).

timm's other ``regnet*`` models are different networks (regnetv: pre-activation; regnetz:
bottleneck x4 without shortcut projections, SiLU; ``_sgn``: GroupNorm; byobnet RegNetZ) and
are refused by name: their tensors do not map to a plain RegNet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import BIN_NAME, INDEX_NAME, WEIGHTS_NAME
from ..config import CONFIG_NAME, RegNetConfig
from ..containers import (
    SAFETENSORS_SUFFIX,
    flatten_pickle,
    load_pickle,
    open_safetensors_file,
    open_sharded,
    read_json,
    tensor_file_kind,
)
from ..errors import CheckpointError, FormatError
from ..safetensors_io import write_safetensors
from ..tensors import LazyTensor, check_finite, to_storage
from .base import ForeignCheckpoint, Format, NameTable, ReferenceUnavailable, WriteRequest

TIMM_TABLE = NameTable(
    [
        ("stem.conv.weight", "stem.conv.weight"),
        ("stem.bn.{bn}", "stem.bn.{bn}"),
        ("s{stage1}.b{block1}.conv1.conv.weight", "s{stage}.b{block}.a.conv.weight"),
        ("s{stage1}.b{block1}.conv1.bn.{bn}", "s{stage}.b{block}.a.bn.{bn}"),
        ("s{stage1}.b{block1}.conv2.conv.weight", "s{stage}.b{block}.b.conv.weight"),
        ("s{stage1}.b{block1}.conv2.bn.{bn}", "s{stage}.b{block}.b.bn.{bn}"),
        ("s{stage1}.b{block1}.se.fc1.{wb}", "s{stage}.b{block}.se.reduce.{wb}"),
        ("s{stage1}.b{block1}.se.fc2.{wb}", "s{stage}.b{block}.se.expand.{wb}"),
        ("s{stage1}.b{block1}.conv3.conv.weight", "s{stage}.b{block}.c.conv.weight"),
        ("s{stage1}.b{block1}.conv3.bn.{bn}", "s{stage}.b{block}.c.bn.{bn}"),
        ("s{stage1}.b{block1}.downsample.conv.weight", "s{stage}.b{block}.proj.conv.weight"),
        ("s{stage1}.b{block1}.downsample.bn.{bn}", "s{stage}.b{block}.proj.bn.{bn}"),
        ("head.fc.{wb}", "head.{wb}"),
    ]
)

STATE_WRAPPERS = ("state_dict", "model")  # keys a training checkpoint keeps its model's state dict under
PICKLE_OUTPUTS = (".pth", ".bin", ".pt")
# timm's plain pycls-design models (``*_tv``: the same network with torchvision's width rounding).
PLAIN_ARCHITECTURE = re.compile(r"regnet[xy]_\d+(?:_tv)?")


# ----------------------------------------------------------------------------- torch state-dict files


@dataclass
class StateFile:
    """A state dict read from one file: its tensors (lazy), what else the file held, and notes."""

    tensors: dict[str, LazyTensor]
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: dict[str, Any] = field(default_factory=dict)  # non-tensor top-level entries of a pickled wrapper


def _describe(value: Any) -> str:
    return type(value).__name__


def read_state_file(path: Path, wrappers: Sequence[str] = STATE_WRAPPERS) -> StateFile:
    """A state dict from a .safetensors file or a PyTorch pickle (unwrapping the first of ``wrappers`` found)."""
    if tensor_file_kind(path) == "safetensors":
        return StateFile(open_safetensors_file(path))
    if tensor_file_kind(path) is None:
        raise CheckpointError(f"expected a .safetensors file or a PyTorch pickle (.pth, .bin, .pt), got {path.name}")
    obj = load_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {_describe(obj)}; expected a state dict (a mapping of name -> tensor)")
    result = StateFile({})
    chosen = obj
    for key in wrappers:
        if isinstance(obj.get(key), Mapping):
            chosen = obj[key]
            result.notes.append(f"read the state dict under {key!r} of {path.name}")
            for other, value in obj.items():
                if other != key:
                    result.ignored.append(f"{other} ({_describe(value)})")
                    result.entries[str(other)] = value
            break
    tensors, others = flatten_pickle(chosen, path)
    result.ignored.extend(f"{name} ({kind})" for name, kind in others.items())
    result.tensors = strip_module_prefix(tensors, result.notes)
    return result


def strip_module_prefix(tensors: dict[str, LazyTensor], notes: list[str]) -> dict[str, LazyTensor]:
    """The tensors without the ``module.`` prefix that (Distributed)DataParallel adds, when every name has it."""
    if tensors and all(name.startswith("module.") for name in tensors):
        notes.append("removed the 'module.' prefix (DataParallel) from every tensor name")
        return {name[len("module.") :]: tensor for name, tensor in tensors.items()}
    return tensors


def drop_empty_head(
    tensors: dict[str, LazyTensor], weight: str, bias: str, notes: list[str], ignored: list[str]
) -> dict[str, LazyTensor]:
    """The tensors without a zero-row classifier (a num_classes=0 model's), which is no classifier at all."""
    head = tensors.get(weight)
    if head is None or head.ndim != 2 or head.shape[0] != 0:
        return tensors
    dropped = [name for name in (weight, bias) if name in tensors]
    notes.append(f"{' and '.join(dropped)} have no rows (num_classes=0): read as a model without a classifier")
    ignored.extend(f"{name} (empty classifier)" for name in dropped)
    return {name: tensor for name, tensor in tensors.items() if name not in dropped}


def lazy_to_torch(tensor: LazyTensor) -> Any:
    """A torch tensor with a LazyTensor's values (bfloat16 sources come as float32, exactly)."""
    import torch

    return torch.from_numpy(np.array(tensor.load()))


# ----------------------------------------------------------------------------- timm variants

_BLOCK = r"s\d+\.b\d+\."
_VARIANTS: list[tuple[str, Callable[[Sequence[str]], list[str]]]] = [
    (
        "a timm byobnet model (such as regnetz_b16 / c16 / d8 / d32 / e8)",
        lambda names: [n for n in names if re.match(r"stages\.\d+\.\d+\.(?:conv1_1x1|conv2_kxk)\.", n)],
    ),
    (
        "a timm regnetv (pre-activation blocks, SiLU)",
        lambda names: (
            [n for n in names if n == "stem.weight" or re.match(_BLOCK + r"norm\d\.", n)]
            if any(re.match(_BLOCK + r"norm\d\.", n) for n in names)
            else []
        ),
    ),
    (
        "a timm RegNet with a final 1x1 conv (regnetz_005 / regnetz_040_h)",
        lambda names: [n for n in names if n.startswith("final_conv.")],
    ),
    (
        "a timm RegNet with an average-pool shortcut (downsample='avg', e.g. regnetv_064)",
        lambda names: [n for n in names if re.match(_BLOCK + r"downsample\.\d+\.", n)],
    ),
]


def _without_running_stats(names: Sequence[str]) -> list[str]:
    present = set(names)
    pattern = re.compile(r"(?:stem|" + _BLOCK + r"(?:conv\d|downsample))\.bn\.weight")
    return [n for n in names if pattern.fullmatch(n) and n[: -len("weight")] + "running_var" not in present]


def timm_variant(names: Sequence[str]) -> tuple[str, list[str]] | None:
    """(what a non-plain timm RegNet is, tensors that show it), or None for names that may be a plain one."""
    for description, finder in _VARIANTS:
        found = finder(names)
        if found:
            return description, found
    found = _without_running_stats(names)
    if found:
        return "a timm RegNet with GroupNorm (regnety_040_sgn: no BatchNorm running statistics, SiLU)", found
    block_convs = [n for n in names if re.fullmatch(_BLOCK + r"conv1\.conv\.weight", n)]
    if block_convs and not any(".downsample." in n for n in names):
        return (
            "a timm regnetz (no shortcut projections anywhere: bottleneck x4, no residual where shapes change, SiLU)",
            block_convs,
        )
    return None


def refuse_variant(path: Path, names: Sequence[str]) -> None:
    """Raise FormatError when the names are those of a timm RegNet that is not a plain RegNetX / RegNetY."""
    variant = timm_variant(names)
    if variant is None:
        return
    description, found = variant
    shown = ", ".join(found[:6]) + (" ..." if len(found) > 6 else "")
    raise FormatError(
        f"{path} is {description}, not a plain RegNetX / RegNetY: tensors such as {shown} have no place in one "
        "(and its activation or residuals would differ); only timm's regnetx_* / regnety_* models convert"
    )


# ----------------------------------------------------------------------------- the format


class TimmFormat(Format):
    """timm's RegNet names (``s1.b1.conv1.conv.weight``, ``s1.b1.downsample.bn.running_var``, ``head.fc.weight``)."""

    name = "timm"
    description = "timm state dict (.safetensors / .pth / .bin) or timm hub directory (config.json 'architecture')"
    library = "timm"
    can_write = True
    output_suffixes = (SAFETENSORS_SUFFIX, *PICKLE_OUTPUTS)

    # ------------------------------------------------------------- detection
    def claims(self, path: Path) -> bool:
        if path.is_dir():
            has_weights = any((path / name).is_file() for name in (WEIGHTS_NAME, INDEX_NAME, BIN_NAME))
            return has_weights and is_timm_config(path / CONFIG_NAME)
        return tensor_file_kind(path) is not None and path.suffix != ".pyth"

    # ------------------------------------------------------------- reading
    def open(self, path: Path) -> ForeignCheckpoint:
        if path.is_dir():
            return self._open_directory(path)
        if not path.is_file():
            raise CheckpointError(f"expected a timm weights file or hub directory, got {path} (no such path)")
        state = read_state_file(path)
        extra: dict[str, Any] = {}
        architecture = state.entries.get("arch")  # timm's train.py records the model name here
        if isinstance(architecture, str):
            extra["architecture"] = architecture
        return self._checkpoint(path, [path], state, extra)

    def _open_directory(self, path: Path) -> ForeignCheckpoint:
        config = read_json(path / CONFIG_NAME, "timm's config.json")
        if not isinstance(config, dict):
            raise CheckpointError(f"{path / CONFIG_NAME} is not timm's config.json: expected a JSON object")
        if (path / INDEX_NAME).is_file():
            tensors, files = open_sharded(path / INDEX_NAME, open_safetensors_file)
            state = StateFile(tensors)
        else:
            weights = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() else path / BIN_NAME
            if not weights.is_file():
                raise CheckpointError(
                    f"expected {WEIGHTS_NAME} or {BIN_NAME} in the timm directory {path}, found neither"
                )
            state, files = read_state_file(weights), [weights]
        extra: dict[str, Any] = {"architecture": config.get("architecture")}
        labels = config.get("label_names")
        head = state.tensors.get("head.fc.weight")
        if labels and head is not None:
            id2label = _label_names(labels)
            if id2label is not None and sorted(id2label) == list(range(head.shape[0])):
                extra["id2label"] = id2label
            else:
                state.notes.append(
                    f"config.json's label_names do not name the classifier's {head.shape[0]} rows one by one: not used"
                )
        return self._checkpoint(path, files, state, extra)

    def _checkpoint(self, path: Path, files: list[Path], state: StateFile, extra: dict[str, Any]) -> ForeignCheckpoint:
        architecture = extra.get("architecture")
        if architecture is not None:
            base = str(architecture).split(".", 1)[0]  # a pretrained tag ("regnety_002.pycls_in1k") is not a model
            if not PLAIN_ARCHITECTURE.fullmatch(base):
                raise FormatError(
                    f"{path} is timm's {architecture!r}, which is not a plain RegNetX / RegNetY "
                    "(expected regnetx_* or regnety_*, optionally *_tv); it does not convert"
                )
            extra["architecture"] = base
        refuse_variant(path, list(state.tensors))
        return ForeignCheckpoint(path, self.name, files, state.tensors, None, state.ignored, state.notes, extra)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return TIMM_TABLE.map_to_neutral(names)

    # ------------------------------------------------------------- writing
    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        return TIMM_TABLE.map_from_neutral(names, self.name)

    def write(self, request: WriteRequest) -> list[Path]:
        names = self.from_neutral(list(request.tensors))
        tensors = {names[n]: t for n, t in request.tensors.items()}
        dtypes = {names[n]: d for n, d in request.dtypes.items()}
        suffix = _written_suffix(request.destination or request.target, self.output_suffixes)
        if suffix == SAFETENSORS_SUFFIX:
            write_safetensors(request.target, tensors, dtypes, metadata={"format": "pt"}, progress=request.progress)
        else:
            save_torch_state(request.target, tensors, dtypes, request.progress)
        return [request.target]

    # ------------------------------------------------------------- checks
    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        try:
            import timm
            import torch
        except ImportError as error:
            raise ReferenceUnavailable(f"timm is not installed ({error})") from None
        if config.hidden_act != "relu":
            raise ReferenceUnavailable(f"timm's plain RegNets use ReLU, this model has {config.hidden_act}")
        shapes = {
            name: tuple(t.shape) for name, t in foreign.tensors.items() if not name.endswith("num_batches_tracked")
        }
        num_classes = int(shapes["head.fc.weight"][0]) if "head.fc.weight" in shapes else 0
        tried = []
        for candidate in timm_candidates(timm, config, foreign.extra.get("architecture")):
            with torch.device("meta"):
                model = timm.create_model(candidate, pretrained=False, num_classes=num_classes)
            theirs = {n: tuple(t.shape) for n, t in model.state_dict().items() if not n.endswith("num_batches_tracked")}
            tried.append(candidate)
            if theirs == shapes:
                model = model.to_empty(device="cpu").eval()
                model.load_state_dict({n: lazy_to_torch(t) for n, t in foreign.tensors.items()}, strict=True)
                return torch_runner(model)
        raise ReferenceUnavailable(
            "no timm model has this architecture"
            + (f" (compared the tensor shapes of {', '.join(tried)})" if tried else " (no timm RegNet has its depth)")
        )


def timm_candidates(timm: Any, config: RegNetConfig, architecture: str | None) -> list[str]:
    """timm model names that may build this network, most likely first (shapes decide; nothing is trusted)."""
    from ..formats.infer import zoo_matches
    from ..zoo import ZOO

    available = set(timm.list_models("regnet*"))
    names: list[str] = []
    if architecture:
        names.append(architecture)
    names.extend(ZOO[match].timm_name for match in zoo_matches(config) if ZOO[match].timm_name)
    cfgs = getattr(getattr(getattr(timm, "models", None), "regnet", None), "model_cfgs", {})
    depth, with_se = sum(config.depths), config.layer_type == "y"
    for name in sorted(available):
        cfg = cfgs.get(name)
        if not PLAIN_ARCHITECTURE.fullmatch(name) or cfg is None:
            continue
        if getattr(cfg, "depth", None) == depth and (getattr(cfg, "se_ratio", 0) > 0) == with_se:
            names.append(name)
    unique = []
    for name in names:
        if name in available and PLAIN_ARCHITECTURE.fullmatch(name) and name not in unique:
            unique.append(name)
    return unique


def torch_runner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function NCHW numpy batch -> the model's output as (batch, features) numpy."""
    import torch

    def run(pixel_values: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            output = model(torch.from_numpy(np.ascontiguousarray(pixel_values, np.float32)))
        return output.numpy().reshape(pixel_values.shape[0], -1)

    return run


def _label_names(labels: Any) -> dict[int, str] | None:
    """id -> name from timm's label_names (a list, or a mapping of ids to names), or None when it is neither."""
    if isinstance(labels, Mapping):
        try:
            return {int(key): str(value) for key, value in labels.items()}
        except (TypeError, ValueError):
            return None
    if isinstance(labels, (list, tuple)):
        return dict(enumerate(str(name) for name in labels))
    return None


def is_timm_config(path: Path) -> bool:
    """True when a config.json is timm's own (it names an ``architecture``), not a transformers one."""
    try:
        data = read_json(path, "timm's config.json")
    except CheckpointError:
        return False
    return isinstance(data, dict) and isinstance(data.get("architecture"), str) and data.get("model_type") != "regnet"


def _written_suffix(target: Path, suffixes: Sequence[str]) -> str:
    """Which of ``suffixes`` the destination has (the request names it; the writer's target is a temporary sibling)."""
    name = target.name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise FormatError(f"timm output is a file named *{' or *'.join(suffixes)}, got {name}")


def save_torch_state(
    target: Path, tensors: Mapping[str, LazyTensor], dtypes: Mapping[str, str], progress: Any = None
) -> None:
    """torch.save a state dict of these tensors, each cast to its output dtype (needs PyTorch)."""
    try:
        import torch
    except ModuleNotFoundError:
        raise CheckpointError(
            "writing .pth / .bin files needs PyTorch, which is not installed; write a .safetensors file instead"
        ) from None
    state = {}
    for name, tensor in tensors.items():
        dtype = dtypes.get(name, tensor.dtype)
        values = tensor.load()
        check_finite(name, values)
        if dtype == "bfloat16":
            bits = to_storage(values, dtype).reshape(tensor.shape)
            stored = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
        else:
            stored = torch.from_numpy(np.array(to_storage(values, dtype)).reshape(tensor.shape))
        state[name] = stored
        if progress is not None:
            progress(name, stored.numel() * stored.element_size())
    torch.save(state, target)


FORMAT = TimmFormat()
