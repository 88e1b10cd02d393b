"""Containers tensors live in: safetensors files, PyTorch pickles, and sharded sets of either.

Readers here only hand out LazyTensors under the container's own names; what the names
mean is each format's business. PyTorch pickles go through ``torch.load(weights_only=True)``
and nothing else: a pickle that asks for anything but tensors and plain containers is
refused with torch's reason, and nothing in it runs.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafeCheckpointError
from .safetensors_io import open_safetensors
from .tensors import LazyTensor, dtype_name

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pyth", ".torch", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


def read_json(path: Path, what: str) -> Any:
    """JSON from a file, with an error that names the file and says what it should have been."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"expected {what} at {path}, found nothing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not {what}: {error}") from None


def _json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _inside(directory: Path, file_name: Any, index: Path) -> Path:
    """A shard file named by an index, refused unless it is a plain file name inside ``directory``."""
    if not isinstance(file_name, str) or not file_name:
        raise CheckpointError(f"{index} names the shard {file_name!r}; expected a file name")
    candidate = Path(file_name)
    plain = len(candidate.parts) == 1 and file_name not in (".", "..") and not set(file_name) & {"\\", "\x00"}
    if candidate.is_absolute() or not plain:
        raise UnsafeCheckpointError(
            f"{index} names the shard {file_name!r}, which is not a plain file name in {directory}; "
            "refusing to read outside the checkpoint directory"
        )
    path = directory / file_name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise CheckpointError(f"{index} names the shard {file_name!r}, which cannot be resolved: {error}") from None
    if resolved.parent != directory.resolve():
        raise UnsafeCheckpointError(
            f"{index} names the shard {file_name!r}, which resolves outside {directory}; refusing to read it"
        )
    if not path.is_file():
        found = "a directory" if path.is_dir() else "missing"
        raise CheckpointError(f"{index} lists the shard {file_name}, which is {found} in {directory}")
    return path


def read_index(index: Path) -> dict[str, Path]:
    """tensor name -> shard path from a transformers ``*.index.json``; every shard checked to lie in the directory."""
    data = read_json(index, "a shard index (JSON with a weight_map)")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        if not isinstance(data, dict):
            got = f"a JSON {_json_kind(data)}"
        elif "weight_map" not in data:
            got = f"an object without one (keys: {', '.join(map(str, list(data)[:8])) or 'none'})"
        else:
            got = f"a weight_map that is {'empty' if weight_map == {} else 'a JSON ' + _json_kind(weight_map)}"
        raise CheckpointError(
            f"{index} is not a shard index: expected a JSON object with a non-empty 'weight_map' object, got {got}"
        )
    shards: dict[str, Path] = {}
    out = {}
    for name, file_name in weight_map.items():
        if not isinstance(file_name, str):
            raise CheckpointError(f"{index} maps {name!r} to {file_name!r}; expected a shard file name")
        if file_name not in shards:
            shards[file_name] = _inside(index.parent, file_name, index)
        out[name] = shards[file_name]
    return out


def open_sharded(index: Path, open_file: Any) -> tuple[dict[str, LazyTensor], list[Path]]:
    """The tensors of every shard an index lists (each shard opened once), checked against the index."""
    weight_map = read_index(index)
    tensors: dict[str, LazyTensor] = {}
    files = sorted(set(weight_map.values()))
    for path in files:
        for name, tensor in open_file(path).items():
            if name in tensors:
                raise CheckpointError(f"the tensor {name!r} appears in more than one shard of {index.parent}")
            tensors[name] = tensor
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
        raise CheckpointError(f"shards in {index.parent} lack tensors their index lists: {', '.join(absent[:20])}")
    return tensors, files


# ----------------------------------------------------------------------------- safetensors


def open_safetensors_file(path: Path) -> dict[str, LazyTensor]:
    """Every tensor of one safetensors file, lazily."""
    return open_safetensors(path)


# ----------------------------------------------------------------------------- pickles


def _torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise CheckpointError(
            "reading PyTorch pickles (.pth, .bin, .pyth, .torch) needs PyTorch, which is not installed; "
            "install it with: pip install 'regnet-trio[torch]' (or convert the file to safetensors elsewhere)"
        ) from None
    return torch


# What torch's weights-only unpickler names when it refuses: an import (GLOBAL module.name) or an opcode.
_GLOBAL = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand \d+")
_ZIP_MAGIC = b"PK\x03\x04"


_LAST_PICKLE: list[tuple[tuple[str, int, int], Any]] = []


def load_pickle(path: Path) -> Any:
    """The object in a PyTorch pickle, through torch.load(weights_only=True): tensors and containers only.

    The last file read is remembered (by path, size and modification time), so that format
    detection and reading, which both look inside a pickle, unpickle it once.
    """
    if path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if _LAST_PICKLE and _LAST_PICKLE[0][0] == key:
            return _LAST_PICKLE[0][1]
        obj = _load_pickle(path)
        _LAST_PICKLE[:] = [(key, obj)]
        return obj
    return _load_pickle(path)


def _check_container(path: Path) -> None:
    """Refuse, before torch looks at it, a file that is no torch.save output: not a zip archive nor a pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is an incomplete PyTorch file: it begins as a zip archive (torch.save) but its directory "
                "at the end is missing; was it truncated?"
            )
    elif not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{path} is not a PyTorch file: expected a zip archive (torch.save) or a pickle, "
            f"it begins with {head[:4]!r}" + (" (it is empty)" if not head else "")
        )


def _load_pickle(path: Path) -> Any:
    torch = _torch()
    if not path.is_file():
        raise CheckpointError(
            f"expected a PyTorch pickle file, got {path} ({'a directory' if path.exists() else 'no such path'})"
        )
    _check_container(path)
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says what matters
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error) and "zip" not in str(error):
                    raise
                # Legacy (pre-zip) pickles cannot be memory-mapped; read them whole, still weights-only.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found, operand = _GLOBAL.search(str(error)), _OPERAND.search(str(error))
        if found:
            reason = f"it asks to import {found.group(1)}, which is no tensor or plain container"
        elif operand:
            reason = f"it uses a pickle instruction the weights-only reader does not run ({operand.group(0)})"
        else:
            reason = " ".join(str(error).split())[:200]
        raise UnsafeCheckpointError(
            f"refused to unpickle {path}: {reason}; only tensors and plain containers are loaded "
            "(torch.load weights_only=True), and nothing in the file was run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError) as error:
        raise CheckpointError(f"cannot read {path} as a PyTorch pickle: {type(error).__name__}: {error}") from None


def torch_lazy(tensor: Any, source: str) -> LazyTensor:
    """A LazyTensor over a torch tensor (bfloat16 widened to float32 on load)."""
    name = dtype_name(tensor.dtype)

    def load() -> np.ndarray:
        value = tensor.detach()
        if name == "bfloat16":
            value = value.float()
        return value.numpy()

    def load_stored() -> np.ndarray:
        value = tensor.detach()
        if name == "bfloat16":
            return value.view(_torch().int16).numpy().view(np.uint16)
        return value.numpy()

    return LazyTensor(tuple(int(d) for d in tensor.shape), name, load, source, load_stored)


def flatten_pickle(obj: Any, path: Path, separator: str = ".") -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """(tensors by dotted path, other leaves by dotted path -> a short description) of an unpickled object."""
    torch = _torch()
    tensors: dict[str, LazyTensor] = {}
    others: dict[str, str] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            tensors[prefix] = torch_lazy(node, f"{prefix} in {path}")
        elif isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, f"{prefix}{separator}{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)) and node and any(isinstance(v, (Mapping, torch.Tensor)) for v in node):
            for index, value in enumerate(node):
                visit(value, f"{prefix}{separator}{index}" if prefix else str(index))
        else:
            others[prefix] = type(node).__name__

    visit(obj, "")
    return tensors, others


def open_pickle_state(path: Path) -> dict[str, LazyTensor]:
    """A pickled state dict's tensors (a flat name -> tensor mapping), lazily where the file allows."""
    tensors, _ = flatten_pickle(load_pickle(path), path)
    return tensors


def tensor_file_kind(path: Path) -> str | None:
    """'safetensors', 'pickle' or None from a file name."""
    if path.name.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if path.suffix in PICKLE_SUFFIXES:
        return "pickle"
    return None


def open_state_file(path: Path) -> dict[str, LazyTensor]:
    """A flat state dict from a .safetensors file or a PyTorch pickle, lazily."""
    kind = tensor_file_kind(path)
    if kind == "safetensors":
        return open_safetensors_file(path)
    if kind == "pickle":
        return open_pickle_state(path)
    raise CheckpointError(
        f"cannot tell the container of {path}: expected .safetensors or a PyTorch pickle ({', '.join(PICKLE_SUFFIXES)})"
    )
