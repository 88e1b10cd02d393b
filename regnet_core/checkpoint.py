"""Checkpoint directories in the transformers layout, read and written with numpy + safetensors.

A directory holds ``config.json``, ``preprocessor_config.json`` and either
``model.safetensors`` or shards ``model-0000k-of-0000n.safetensors`` listed in
``model.safetensors.index.json`` (transformers' ``pytorch_model.bin`` variants are read
too). Tensors are read lazily and written as a stream. Every backend reads and writes
through here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import CONFIG_NAME, RegNetConfig
from .containers import open_pickle_state, open_sharded
from .errors import CheckpointError, OutputError, OutputExistsError
from .io import atomic_output, clean_stale_temporaries, crash_point, is_empty_directory
from .safetensors_io import open_safetensors, plan_shards, write_safetensors
from .tensors import LazyTensor, is_float, itemsize, stored_dtype

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
# A checkpoint's own weight files, of any transformers framework (sharded or not, with their indexes).
_CHECKPOINT_FILE = re.compile(
    r"(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?\.(safetensors|bin|h5|msgpack)(\.index\.json)?"
)
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


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB', '200MB' or '1GiB'."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise OutputError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if not match or (unit or "B") not in _SIZE_UNITS:
        raise OutputError(f"max_shard_size must be bytes or a size like '5GB' or '500MiB', got {size!r}")
    number = float(match.group(1))
    if not math.isfinite(number) or number * _SIZE_UNITS[unit or "B"] >= 2**63:
        raise OutputError(f"max_shard_size must be under 2**63 bytes, got {size!r}")
    value = int(number * _SIZE_UNITS[unit or "B"])
    if value <= 0:
        raise OutputError(f"max_shard_size must be positive, got {size!r}")
    return value


def output_dtype(value: Any, dtype: str | None = None) -> str:
    """The dtype a tensor is written in: ``dtype`` for floating tensors when given, else its own (float64 as float32)."""
    stored = stored_dtype(value)
    if is_float(stored):
        if dtype is not None:
            return dtype
        return "float32" if stored == "float64" else stored
    return stored


def write_checkpoint_directory(
    target: str | os.PathLike,
    config: RegNetConfig,
    state: Mapping[str, Any],
    dtypes: Mapping[str, str] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: Callable[[str, int], None] | None = None,
    preprocessor: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write config.json, preprocessor_config.json and the weights (streamed, sharded) into ``target``.

    ``state`` maps canonical names to arrays or LazyTensors, in the order to write them;
    ``dtypes`` gives each tensor's output dtype (default: ``output_dtype``). Returns the
    files written; ``target`` is created, files already there are overwritten. Not atomic
    by itself: callers write into a temporary (``regnet_core.io.atomic_output``).
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    max_bytes = parse_size(max_shard_size)
    dtypes = {name: (dtypes or {}).get(name) or output_dtype(value) for name, value in state.items()}
    sizes = [
        (name, int(np.prod(np.shape(value), dtype=np.int64)) * itemsize(dtypes[name])) for name, value in state.items()
    ]
    shards = plan_shards(sizes, max_bytes)
    written: list[Path] = []
    metadata = {"format": "pt"}
    if len(shards) == 1:
        write_safetensors(target / WEIGHTS_NAME, state, dtypes, metadata, progress)
        written.append(target / WEIGHTS_NAME)
    else:
        weight_map = {}
        for index, names in enumerate(shards, start=1):
            file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(target / file_name, {n: state[n] for n in names}, dtypes, metadata, progress)
            written.append(target / file_name)
            weight_map.update({name: file_name for name in names})
            crash_point(f"shard-{index}")
        index_data = {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": weight_map}
        (target / INDEX_NAME).write_text(json.dumps(index_data, indent=2, sort_keys=True) + "\n")
        written.append(target / INDEX_NAME)
    (target / CONFIG_NAME).write_text(config.to_json_string())
    written.append(target / CONFIG_NAME)
    (target / PREPROCESSOR_NAME).write_text(json.dumps(dict(preprocessor or DEFAULT_PREPROCESSOR), indent=2) + "\n")
    written.append(target / PREPROCESSOR_NAME)
    return written


def save_checkpoint(
    directory: str | os.PathLike,
    config: RegNetConfig,
    state: Mapping[str, Any],
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    architecture: str | None = None,
    dtype: str | None = None,
    progress: Callable[[str, int], None] | None = None,
    overwrite: bool = False,
    flag: str = "overwrite=True",
) -> Path:
    """Write config and canonical weights into ``directory``, which appears complete or not at all.

    ``architecture`` (a class name such as "RegNetModel") is recorded as the config's
    ``architectures``; ``dtype`` casts floating tensors on the way out. The checkpoint is
    built in a hidden sibling and renamed into place whole. A directory that already holds
    files is replaced only with ``overwrite`` (else OutputExistsError naming ``flag``), and
    only once the new checkpoint is complete; its files that are no checkpoint's (a README,
    preprocessor_config.json) are carried into the new directory, the old weights are not.
    """
    if architecture is not None:
        config = config.copy(architectures=[architecture])
    directory = Path(directory)
    parse_size(max_shard_size)  # a bad size is an error before anything is written
    target = check_destination(directory, overwrite, flag)
    preprocessor = None
    if (target / PREPROCESSOR_NAME).is_file():
        try:
            preprocessor = json.loads((target / PREPROCESSOR_NAME).read_text())
        except (OSError, ValueError):
            preprocessor = None
    dtypes = {name: output_dtype(value, dtype) for name, value in state.items()}
    with atomic_output(target, overwrite=True) as staging:
        written = write_checkpoint_directory(staging, config, state, dtypes, max_shard_size, progress, preprocessor)
        if target.is_dir():
            _carry_over(target, staging, {path.name for path in written})
    return directory


def check_destination(directory: str | os.PathLike, overwrite: bool = False, flag: str = "overwrite=True") -> Path:
    """The real path a checkpoint directory will be saved at; raises unless saving there is allowed.

    A file is refused; a directory that holds anything needs ``overwrite`` (OutputExistsError
    naming ``flag``). Leftovers of interrupted saves beside it are tidied first.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"expected a directory to save into, got the file {directory}")
    target = Path(os.path.realpath(directory))  # a symlinked directory is written where it points
    clean_stale_temporaries(target)
    if target.is_dir() and not is_empty_directory(target) and not overwrite:
        raise OutputExistsError(
            f"{directory} already holds {describe_directory(target)}; pass {flag} to replace it "
            "(the new checkpoint replaces it only once complete)"
        )
    return target


def is_checkpoint_file(name: str) -> bool:
    """True for the names of a transformers checkpoint's own files (config and weights of any framework)."""
    return name == CONFIG_NAME or bool(_CHECKPOINT_FILE.fullmatch(name))


def _carry_over(old: Path, new: Path, written: set[str]) -> None:
    """Link (or copy) into ``new`` the entries of ``old`` that are no checkpoint file and were not written anew."""
    for entry in old.iterdir():
        if entry.name in written or is_checkpoint_file(entry.name) or entry.name.startswith(".saving-"):
            continue
        destination = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), destination)
        elif entry.is_dir():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, destination)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def describe_directory(directory: Path) -> str:
    """The first few names in a directory, for error messages ('nothing' when empty or absent)."""
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def weight_files(directory: Path) -> tuple[dict[str, LazyTensor], list[Path]]:
    """(canonical tensors, files) of a transformers PyTorch directory: safetensors preferred, then pytorch_model.bin."""
    if (directory / WEIGHTS_NAME).is_file():
        return open_safetensors(directory / WEIGHTS_NAME), [directory / WEIGHTS_NAME]
    if (directory / INDEX_NAME).is_file():
        return open_sharded(directory / INDEX_NAME, open_safetensors)
    if (directory / BIN_NAME).is_file():
        return open_pickle_state(directory / BIN_NAME), [directory / BIN_NAME]
    if (directory / BIN_INDEX_NAME).is_file():
        return open_sharded(directory / BIN_INDEX_NAME, open_pickle_state)
    raise CheckpointError(
        f"expected {WEIGHTS_NAME}, {INDEX_NAME}, {BIN_NAME} or {BIN_INDEX_NAME} in {directory}, "
        f"found {describe_directory(directory)}"
    )


def load_state(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical tensors of a checkpoint directory (one file or shards) as numpy arrays (bfloat16 as float32).

    ``weight_files`` gives the same tensors lazily, one read per tensor when it is needed.
    """
    return {name: tensor.load() for name, tensor in weight_files(Path(directory))[0].items()}


def read_directory_config(directory: Path) -> RegNetConfig:
    """The RegNetConfig in a directory's config.json, with errors that name the file."""
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"expected {CONFIG_NAME} in {directory}, found {describe_directory(directory)}")
    try:
        return RegNetConfig.from_pretrained(directory)
    except OSError as error:
        raise CheckpointError(f"cannot read {directory / CONFIG_NAME}: {error.strerror or error}") from None
    except ValueError as error:
        message = str(error)
        where = str(directory / CONFIG_NAME)
        raise CheckpointError(message if where in message else f"{where}: {message}") from None


def load_checkpoint(
    directory: str | os.PathLike, config_changes: Mapping[str, object] | None = None
) -> tuple[RegNetConfig, dict[str, np.ndarray]]:
    """(config, canonical numpy tensors) of a checkpoint directory; ``config_changes`` edit the config first.

    For any format, lazily, use ``regnet_core.convert.read_checkpoint``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"expected a checkpoint directory, got {directory} ({'a file' if directory.exists() else 'no such path'})"
        )
    config = read_directory_config(directory)
    if config_changes:
        config = config.copy(**config_changes)
    return config, load_state(directory)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()
