"""Checkpoint directories in the transformers layout, read and written with numpy + safetensors.

A directory holds ``config.json``, ``preprocessor_config.json`` and either
``model.safetensors`` or shards ``model-0000k-of-0000n.safetensors`` listed in
``model.safetensors.index.json``. Every backend reads and writes through here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .config import CONFIG_NAME, RegNetConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}

# ImageNet preprocessing of the published checkpoints (transformers' ConvNext image processor).
DEFAULT_PREPROCESSOR = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read: says what was expected and what was found."""


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB', '200MB' or '1GiB'."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if not match or (unit or "B") not in _SIZE_UNITS:
        raise ValueError(f"max_shard_size must be bytes or a size like '5GB' or '500MiB', got {size!r}")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit or "B"])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _shards(state: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    used = 0
    for name, value in state.items():
        nbytes = value.nbytes
        if shards[-1] and used + nbytes > max_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = value
        used += nbytes
    return shards


def save_checkpoint(
    directory: str | os.PathLike,
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    architecture: str | None = None,
) -> Path:
    """Write config and canonical weights into ``directory``; files appear only once all are written.

    ``architecture`` (a class name such as "RegNetModel") is recorded as the config's
    ``architectures``. Weight files from an earlier save that the new one does not use are removed.
    """
    from safetensors.numpy import save_file

    if architecture is not None:
        config = config.copy(architectures=[architecture])
    directory = Path(directory)
    max_bytes = parse_size(max_shard_size)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"expected a directory to save into, got the file {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(value, order="C") for name, value in state.items()}
    shards = _shards(arrays, max_bytes)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory))
    try:
        written: list[str] = []
        if len(shards) == 1:
            save_file(shards[0], str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
            written.append(WEIGHTS_NAME)
        else:
            weight_map = {}
            for index, shard in enumerate(shards, start=1):
                file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(staging / file_name), metadata={"format": "pt"})
                written.append(file_name)
                weight_map.update({name: file_name for name in shard})
            index_data = {"metadata": {"total_size": sum(v.nbytes for v in arrays.values())}, "weight_map": weight_map}
            (staging / INDEX_NAME).write_text(json.dumps(index_data, indent=2, sort_keys=True) + "\n")
            written.append(INDEX_NAME)
        (staging / CONFIG_NAME).write_text(config.to_json_string())
        written.append(CONFIG_NAME)
        if not (directory / PREPROCESSOR_NAME).exists():
            (staging / PREPROCESSOR_NAME).write_text(json.dumps(DEFAULT_PREPROCESSOR, indent=2) + "\n")
            written.append(PREPROCESSOR_NAME)
        for file_name in written:
            os.replace(staging / file_name, directory / file_name)
        for stale in directory.iterdir():
            is_weights = stale.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_PATTERN.fullmatch(stale.name)
            if is_weights and stale.name not in written:
                stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _describe(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot read {path} as safetensors: {error}") from None


def load_state(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical tensors of a checkpoint directory, from one file or from shards."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file():
        return _load_safetensors(directory / WEIGHTS_NAME)
    if (directory / INDEX_NAME).is_file():
        try:
            weight_map = json.loads((directory / INDEX_NAME).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{directory / INDEX_NAME} is not a safetensors index: {error!r}") from None
        state: dict[str, np.ndarray] = {}
        for file_name in sorted(set(weight_map.values())):
            if not (directory / file_name).is_file():
                raise CheckpointError(f"{directory / INDEX_NAME} lists the shard {file_name}, which is missing")
            state.update(_load_safetensors(directory / file_name))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise CheckpointError(f"shards in {directory} lack tensors their index lists: {', '.join(absent)}")
        return state
    raise CheckpointError(f"expected {WEIGHTS_NAME} or {INDEX_NAME} in {directory}, found {_describe(directory)}")


def load_checkpoint(
    directory: str | os.PathLike, config_changes: Mapping[str, object] | None = None
) -> tuple[RegNetConfig, dict[str, np.ndarray]]:
    """(config, canonical tensors) of a checkpoint directory; ``config_changes`` edit the config first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"expected a checkpoint directory, got {directory} ({'a file' if directory.exists() else 'no such path'})"
        )
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"expected {CONFIG_NAME} in {directory}, found {_describe(directory)}")
    config = RegNetConfig.from_pretrained(directory)
    if config_changes:
        config = config.copy(**config_changes)
    return config, load_state(directory)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()
