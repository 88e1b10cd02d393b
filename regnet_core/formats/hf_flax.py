"""``hf-flax``: transformers' Flax RegNet checkpoints (``flax_model.msgpack``), read and written without jax.

A directory with ``flax_model.msgpack``, or shards ``flax_model-0000k-of-0000n.msgpack``
listed in ``flax_model.msgpack.index.json`` (its ``weight_map`` keys are '/'-joined variable
paths, collection first), and usually ``config.json`` (read as our RegNetConfig when
present); or a bare .msgpack file in that layout (the config then comes from ``--config``
or from the weights). Each file is one msgpack variables tree ``{"params": ...,
"batch_stats": ...}`` (shards hold only their own leaves) under transformers' names: the
canonical ones with every dot a level, ``params/regnet/encoder/stages/0/layers/0/layer/2/
attention/0/kernel``, and the leaves of the ``flax`` format (kernel, scale, bias, mean, var;
HWIO and (in, out)). transformers prefers ``flax_model.msgpack`` to the index when both are
there, and so does this reader.

Writing: ``config.json``, ``preprocessor_config.json`` and the weights, sharded above
``max_shard_size`` as transformers shards them, always with ``batch_stats`` (transformers
silently gives a file without them mean 0 / variance 1). Models that transformers' Flax
classes cannot build are still written, as valid files that this package (and any reader of
the layout) loads, with a ``UserWarning`` that says why transformers cannot: X models (in
transformers 4.57 ``FlaxRegNetXLayer`` passes ``in_channels`` to a module without that field,
so building any X model raises TypeError) and configs transformers' RegNetConfig cannot
express (SE ratio other than 0.25, bottleneck ratio other than 1, groups that its width
arithmetic would not give); for those transformers would build another network and refuse
the shapes. ``reference_logits`` runs transformers' Flax classes where they can build the
model (Y models it can express) and says why not otherwise.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import DEFAULT_PREPROCESSOR, PREPROCESSOR_NAME, describe_directory, read_directory_config
from ..config import CONFIG_NAME, RegNetConfig
from ..containers import open_sharded
from ..errors import CheckpointError
from ..msgpack_io import nest, write_msgpack
from ..safetensors_io import plan_shards
from ..tensors import LazyTensor, itemsize
from . import neutral
from .base import CHANNELS_LAST, ForeignCheckpoint, Format, ReferenceUnavailable, WriteRequest
from .flax_native import flax_to_neutral, neutral_to_flax, ordered_variables, read_variables
from .hf import directory_extras, is_regnet_config, transformers_cannot_build, transformers_config_fields

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_INDEX_NAME = "flax_model.msgpack.index.json"
X_UNSUPPORTED = (
    "transformers' Flax RegNet cannot build X models (its FlaxRegNetXLayer passes in_channels to "
    "FlaxRegNetXLayerCollection, which has no such field: TypeError)"
)


def shard_name(index: int, count: int) -> str:
    """transformers' name of shard ``index`` (from 1) of ``count``: flax_model-00001-of-00003.msgpack."""
    return f"flax_model-{index:05d}-of-{count:05d}.msgpack"


def transformers_flax_problem(config: RegNetConfig) -> str:
    """Why transformers' Flax classes cannot build this model ('' when they can)."""
    if config.layer_type == "x":
        return X_UNSUPPORTED
    return transformers_cannot_build(config)


class HFFlaxFormat(Format):
    """transformers' Flax names: the canonical ones with dots as levels, Flax leaves, collection first."""

    name = "hf-flax"
    description = "transformers Flax directory (flax_model.msgpack, sharded or not) or such a .msgpack file"
    library = "transformers (Flax)"
    layout = CHANNELS_LAST
    can_write = True
    writes_directory = True

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            has_weights = (path / FLAX_WEIGHTS_NAME).is_file() or (path / FLAX_INDEX_NAME).is_file()
            config = path / CONFIG_NAME
            return has_weights and (not config.exists() or is_regnet_config(config))
        return path.is_file() and path.name.endswith(".msgpack")

    def peek_names(self, path: Path) -> list[str]:
        return list(self.open(path).tensors)

    def open(self, path: Path) -> ForeignCheckpoint:
        what = "transformers Flax variables {'params': ..., 'batch_stats': ...}"
        if path.is_file():
            tensors, ignored, notes = read_variables(path, what)
            return ForeignCheckpoint(path, self.name, [path], tensors, None, ignored, notes)
        if not path.is_dir():
            raise CheckpointError(
                f"expected a transformers Flax directory or a .msgpack file, got {path} (no such path)"
            )
        config = read_directory_config(path) if (path / CONFIG_NAME).is_file() else None
        if (path / FLAX_WEIGHTS_NAME).is_file():
            tensors, ignored, notes = read_variables(path / FLAX_WEIGHTS_NAME, what)
            if (path / FLAX_INDEX_NAME).is_file():
                notes.append(f"{path} has both {FLAX_WEIGHTS_NAME} and {FLAX_INDEX_NAME}: read {FLAX_WEIGHTS_NAME}")
            files = [path / FLAX_WEIGHTS_NAME]
            return ForeignCheckpoint(path, self.name, files, tensors, config, ignored, notes, directory_extras(path))
        if not (path / FLAX_INDEX_NAME).is_file():
            raise CheckpointError(
                f"expected {FLAX_WEIGHTS_NAME} or {FLAX_INDEX_NAME} in {path}, found {describe_directory(path)}"
            )
        ignored: list[str] = []
        notes: list[str] = []

        def open_shard(shard: Path) -> dict[str, LazyTensor]:
            shard_tensors, shard_ignored, shard_notes = read_variables(shard, what)
            ignored.extend(shard_ignored)
            notes.extend(shard_notes)
            return shard_tensors

        tensors, files = open_sharded(path / FLAX_INDEX_NAME, open_shard)
        files = [*files, path / FLAX_INDEX_NAME]
        return ForeignCheckpoint(path, self.name, files, tensors, config, ignored, notes, directory_extras(path))

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return flax_to_neutral(names, linen_names=False)

    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        return neutral_to_flax(names, linen_names=False)

    def write(self, request: WriteRequest) -> list[Path]:
        problem = transformers_flax_problem(request.config)
        if problem:
            warnings.warn(
                f"writing {request.target.name}: {problem}; the files are valid and this package reads them, "
                "but transformers' FlaxRegNet classes will not load them",
                UserWarning,
                stacklevel=2,
            )
        names = self.from_neutral(list(request.tensors))
        flat, dtypes = ordered_variables(request, names, self.layout)
        target = request.target
        target.mkdir(parents=True, exist_ok=True)
        sizes = [
            (path, int(np.prod(tensor.shape, dtype=np.int64)) * itemsize(dtypes[path])) for path, tensor in flat.items()
        ]
        shards = plan_shards(sizes, request.max_shard_size)
        written = []
        if len(shards) == 1:
            write_msgpack(target / FLAX_WEIGHTS_NAME, nest(flat), dtypes, request.progress)
            written.append(target / FLAX_WEIGHTS_NAME)
        else:
            weight_map = {}
            for index, paths in enumerate(shards, start=1):
                file_name = shard_name(index, len(shards))
                shard = nest({p: flat[p] for p in paths})
                write_msgpack(target / file_name, shard, {p: dtypes[p] for p in paths}, request.progress)
                written.append(target / file_name)
                weight_map.update({p: file_name for p in paths})
            index_data = {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": weight_map}
            (target / FLAX_INDEX_NAME).write_text(json.dumps(index_data, indent=2, sort_keys=True) + "\n")
            written.append(target / FLAX_INDEX_NAME)
        architecture = "RegNetForImageClassification" if neutral.has_head(request.tensors) else "RegNetModel"
        (target / CONFIG_NAME).write_text(request.config.copy(architectures=[architecture]).to_json_string())
        preprocessor = request.preprocessor or DEFAULT_PREPROCESSOR
        (target / PREPROCESSOR_NAME).write_text(json.dumps(dict(preprocessor), indent=2) + "\n")
        written.extend([target / CONFIG_NAME, target / PREPROCESSOR_NAME])
        return written

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        problem = transformers_flax_problem(config)
        if problem:
            raise ReferenceUnavailable(problem)
        try:
            import jax
            import transformers

            model_classes = (transformers.FlaxRegNetModel, transformers.FlaxRegNetForImageClassification)
        except Exception as error:  # jax / flax missing or broken: transformers raises several types
            raise ReferenceUnavailable(
                f"transformers' Flax RegNet does not import here ({type(error).__name__}: {error})"
            ) from None
        with_head = neutral.has_head(self.to_neutral(list(foreign.tensors))[0].values())
        hf_config = transformers.RegNetConfig(**transformers_config_fields(config))
        model = model_classes[with_head](hf_config, _do_init=False)
        variables = nest({name: np.array(tensor.load(), np.float32) for name, tensor in foreign.tensors.items()})

        def forward(params: dict, pixel_values: jax.Array) -> jax.Array:
            outputs = model(pixel_values, params=params, train=False)
            return outputs.logits if with_head else outputs.pooler_output

        forward = jax.jit(forward)  # one compiled forward instead of hundreds of dispatched operations

        def run(pixel_values: np.ndarray) -> np.ndarray:
            with jax.default_matmul_precision("highest"):
                value = forward(variables, np.ascontiguousarray(pixel_values, np.float32))
            return np.asarray(value).reshape(pixel_values.shape[0], -1)

        return run


FORMAT = HFFlaxFormat()
