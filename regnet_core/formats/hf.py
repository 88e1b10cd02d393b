"""``hf``: transformers' PyTorch RegNet checkpoints, which are this package's canonical format.

A directory with ``config.json`` and ``model.safetensors``, ``pytorch_model.bin``, or
either sharded with its ``*.index.json``; or a bare .safetensors / .bin file with the
canonical names (the config then comes from ``--config`` or from the weights).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import (
    BIN_INDEX_NAME,
    BIN_NAME,
    INDEX_NAME,
    PREPROCESSOR_NAME,
    WEIGHTS_NAME,
    describe_directory,
    read_directory_config,
    weight_files,
    write_checkpoint_directory,
)
from ..config import CONFIG_NAME, RegNetConfig
from ..containers import open_state_file, tensor_file_kind
from ..errors import CheckpointError
from ..specs import build_model_spec
from ..tensors import lazy
from ..weights import BN_COUNT, parameter_table
from . import neutral
from .base import ForeignCheckpoint, Format, ReferenceUnavailable, WriteRequest

CANONICAL_ROOTS = ("regnet.", "embedder.", "encoder.", "classifier.")


class HFFormat(Format):
    """transformers' PyTorch layout: the canonical names (``regnet.encoder.stages.0.layers.0.layer.1...``)."""

    name = "hf"
    description = "transformers PyTorch directory (model.safetensors / pytorch_model.bin, sharded or not)"
    library = "transformers (PyTorch)"
    can_write = True
    writes_directory = True

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            has_weights = any((path / name).is_file() for name in (WEIGHTS_NAME, INDEX_NAME, BIN_NAME, BIN_INDEX_NAME))
            config = path / CONFIG_NAME
            if not config.is_file() or is_foreign_config(config):
                return has_weights and not config.is_file()
            if has_weights:
                return True
            # A config.json of ours or transformers' (or too broken to tell) and no weights of any
            # transformers framework: claimed, so that reading it says precisely what is missing.
            return not any(path.glob("tf_model*.h5")) and not any(path.glob("flax_model*.msgpack"))
        return tensor_file_kind(path) is not None and not path.name.endswith(".pyth")

    def recognises(self, names: Sequence[str]) -> float:
        if not names or not any(name.startswith(CANONICAL_ROOTS) for name in names):
            return 0.0
        return super().recognises(names)

    def peek_names(self, path: Path) -> list[str]:
        return list(self.open(path).tensors)

    def open(self, path: Path) -> ForeignCheckpoint:
        if path.is_dir():
            config = read_directory_config(path) if (path / CONFIG_NAME).is_file() else None
            tensors, files = weight_files(path)
            return ForeignCheckpoint(path, self.name, files, tensors, config, extra=directory_extras(path))
        if not path.is_file():
            raise CheckpointError(f"expected a checkpoint directory or a weights file, got {path} (no such path)")
        return ForeignCheckpoint(path, self.name, [path], open_state_file(path))

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return neutral.from_canonical(names)

    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        return neutral.to_canonical(names)

    def write(self, request: WriteRequest) -> list[Path]:
        names = self.from_neutral(list(request.tensors))
        given = {names[n]: t for n, t in request.tensors.items()}
        dtypes = {names[n]: d for n, d in request.dtypes.items()}
        with_head = neutral.has_head(request.tensors)
        architecture = "RegNetForImageClassification" if with_head else "RegNetModel"
        # Every tensor of the canonical table, in its order: BatchNorm batch counters that the source
        # did not keep (Keras, Flax) are written as zero, as transformers' own files hold them.
        tensors = {}
        for tensor in parameter_table(build_model_spec(request.config), with_head):
            if tensor.name in given:
                tensors[tensor.name] = given[tensor.name]
            elif tensor.kind == BN_COUNT:
                tensors[tensor.name] = lazy(np.zeros((), np.int64))
                dtypes[tensor.name] = "int64"
        return write_checkpoint_directory(
            request.target,
            request.config.copy(architectures=[architecture]),
            tensors,
            dtypes=dtypes,
            max_shard_size=request.max_shard_size,
            progress=request.progress,
            preprocessor=request.preprocessor,
        )

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        try:
            import torch
            import transformers
        except ImportError as error:
            raise ReferenceUnavailable(f"transformers with PyTorch is not installed ({error})") from None
        problem = transformers_cannot_build(config)
        if problem:
            raise ReferenceUnavailable(problem)
        hf_config = transformers.RegNetConfig(**transformers_config_fields(config))
        with_head = neutral.has_head(self.to_neutral(list(foreign.tensors))[0].values())
        model_class = transformers.RegNetForImageClassification if with_head else transformers.RegNetModel
        model = model_class(hf_config).eval()
        state = {name: torch.from_numpy(np.array(tensor.load())) for name, tensor in foreign.tensors.items()}
        if not with_head:
            state = {name.removeprefix("regnet."): value for name, value in state.items()}
        result = model.load_state_dict(state, strict=False)
        missing = [name for name in result.missing_keys if not name.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise ReferenceUnavailable(
                f"transformers' model does not take these weights (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
            )

        def run(pixel_values: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                outputs = model(torch.from_numpy(np.ascontiguousarray(pixel_values, np.float32)))
            value = outputs.logits if with_head else outputs.pooler_output
            return value.numpy().reshape(pixel_values.shape[0], -1)

        return run


def directory_extras(directory: Path) -> dict[str, Any]:
    """What a transformers directory says besides weights and config: its preprocessor_config.json, if readable."""
    path = directory / PREPROCESSOR_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {"preprocessor": data} if isinstance(data, dict) else {}


def is_regnet_config(path: Path) -> bool:
    """True when a config.json exists and names model_type "regnet" (transformers always writes it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "regnet"


def is_foreign_config(path: Path) -> bool:
    """True for a readable config.json that belongs to another library (timm's "architecture", another model_type)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    return "architecture" in data or data.get("model_type", "regnet") != "regnet"


def transformers_config_fields(config: RegNetConfig) -> dict[str, Any]:
    """The fields transformers' RegNetConfig takes, from ours."""
    data = config.to_dict()
    for key in ("se_ratio", "bottleneck_ratio", "model_type"):
        data.pop(key, None)
    data["num_labels"] = config.num_labels
    return data


def transformers_cannot_build(config: RegNetConfig) -> str:
    """Why transformers' RegNet would build another network from this config ('' when it builds this one)."""
    if config.layer_type == "y" and config.se_ratio != 0.25:
        return f"transformers' Y block has SE ratio 0.25, this model has {config.se_ratio}"
    if config.bottleneck_ratio != 1:
        return f"transformers' blocks have bottleneck ratio 1, this model has {config.bottleneck_ratio}"
    spec = build_model_spec(config)
    for index, stage in enumerate(spec.stages):
        if max(1, stage.width // config.groups_width) != stage.groups:
            return f"transformers would give stage {index} {max(1, stage.width // config.groups_width)} groups, this model has {stage.groups}"
    return ""


FORMAT = HFFormat()


def describe(path: Path) -> str:
    """What a directory holds, for error messages."""
    return describe_directory(path)
