"""``hf-tf``: transformers' TensorFlow RegNet checkpoints (``tf_model.h5``), read and written with h5py alone.

A directory with ``tf_model.h5`` (or shards ``tf_model-0000k-of-0000n.h5`` listed in
``tf_model.h5.index.json``) and usually ``config.json``; or a bare ``.h5`` file in either
layout. Names are transformers' TF variable names without their first component, the
model's Keras name, which changes from instance to instance and is never matched on:

    regnet/encoder/stages.1/layers.0/layer.1/convolution/kernel:0   (kh, kw, in/groups, out)
    regnet/encoder/stages.1/layers.0/layer.1/normalization/moving_variance:0
    classifier.1/kernel:0                                            (in, out)

They are the canonical (PyTorch) names with ``/`` between modules and Keras' variable
names (kernel, gamma, beta, moving_mean, moving_variance); ``TFRegNetModel`` keeps the
``regnet/`` main layer too. The single file is Keras 2's HDF5 weights layout: root
attribute ``layer_names``, one group per top-level layer whose attribute
``weight_names`` lists its variables' full names, each stored at
``<layer>/<full name>``. A shard lists its (stripped) names in the root attribute
``layer_names`` and stores each at that path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import DEFAULT_PREPROCESSOR, PREPROCESSOR_NAME, read_directory_config
from ..config import CONFIG_NAME, RegNetConfig
from ..containers import read_index
from ..errors import CheckpointError, FormatError
from ..safetensors_io import plan_shards
from ..tensors import LazyTensor, itemsize
from ..weights import BN_COUNT, CLASSIFIER_MODULE, NORM_MODULE
from . import neutral
from .base import CHANNELS_LAST, KERAS_BN, ForeignCheckpoint, Format, ReferenceUnavailable, WriteRequest
from .hf import is_regnet_config, transformers_cannot_build, transformers_config_fields
from .keras_native import SUFFIX as KERAS_SUFFIX
from .keras_native import H5Output, h5_child, h5_tensor, open_h5, require_h5py, text

TF_WEIGHTS_NAME = "tf_model.h5"
TF_INDEX_NAME = "tf_model.h5.index.json"
# The Keras names of transformers' first model instance in a process (the loader ignores them).
MODEL_NAMES = {True: "tf_reg_net_for_image_classification", False: "tf_reg_net_model"}
CLASSIFIER_CLASSES = {True: "TFRegNetForImageClassification", False: "TFRegNetModel"}
# The classification model's top-level Keras layers; "flatten" and the group
# "top_level_model_weights" hold no weights, but transformers writes them.
TOP_LAYERS = {True: ("regnet", "flatten", CLASSIFIER_MODULE), False: ("regnet",)}
EMPTY_GROUP = "top_level_model_weights"
# Keras 2 HDF5 layout facts: attributes above this many bytes are split into name0, name1, ...;
# any keras_version other than "1" means no Keras 1 weight conversion on load.
HDF5_OBJECT_HEADER_LIMIT = 64512
FILE_ATTRIBUTES = {"backend": "tensorflow", "keras_version": "2.21.0"}
OUTPUT_DTYPES = ("float32", "float16")

_TO_TF_BN = dict(KERAS_BN)
_FROM_TF_BN = {keras: torch for torch, keras in KERAS_BN.items()}
_FROM_TF_OTHER = {"kernel": "weight", "bias": "bias"}


# ----------------------------------------------------------------------------- names


def tf_name(canonical: str) -> str:
    """transformers' TF variable name (without the model name) of a canonical name.

    ``regnet.encoder.stages.0.layers.1.layer.0.normalization.running_mean`` ->
    ``regnet/encoder/stages.0/layers.1/layer.0/normalization/moving_mean:0``.
    """
    parts = canonical.split(".")
    modules: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and modules:
            modules[-1] = f"{modules[-1]}.{part}"
        else:
            modules.append(part)
    leaf = parts[-1]
    variable = _TO_TF_BN[leaf] if modules[-1] == NORM_MODULE else {"weight": "kernel", "bias": "bias"}[leaf]
    return "/".join([*modules, f"{variable}:0"])


def canonical_name(name: str) -> str | None:
    """The canonical name of a TF variable name (without the model name), or None when it is not one."""
    if not name.endswith(":0"):
        return None
    parts = name[: -len(":0")].split("/")
    if len(parts) < 2 or not all(parts):
        return None
    leaf = (_FROM_TF_BN if parts[-2] == NORM_MODULE else _FROM_TF_OTHER).get(parts[-1])
    if leaf is None:
        return None
    return ".".join([*parts[:-1], leaf])


def strip_model_name(name: str) -> str:
    """A full TF weight name without its first component, the model's Keras name (as transformers' loader does)."""
    return name.split("/", 1)[1] if "/" in name else name


# ----------------------------------------------------------------------------- HDF5 reading


def read_names(group: Any, name: str) -> list[str] | None:
    """A Keras 2 string-list attribute (also split as name0, name1, ...), or None when absent."""
    if name in group.attrs:
        return [text(value) for value in np.atleast_1d(group.attrs[name])]
    if f"{name}0" not in group.attrs:
        return None
    out: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in group.attrs:
        out.extend(text(value) for value in np.atleast_1d(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return out


def write_names(group: Any, name: str, names: Sequence[str], limit: int | None = None) -> None:
    """Store a string list as Keras 2 does: UTF-8 bytes, split into name0, name1, ... above ``limit`` bytes.

    ``limit`` defaults to HDF5_OBJECT_HEADER_LIMIT.
    """
    limit = HDF5_OBJECT_HEADER_LIMIT if limit is None else limit
    data = np.asarray([value.encode("utf8") for value in names])
    chunks = 1
    pieces = np.array_split(data, chunks)
    while any(piece.nbytes > limit for piece in pieces) and chunks < len(data):
        chunks += 1
        pieces = np.array_split(data, chunks)
    if chunks == 1:
        group.attrs[name] = data
    else:
        for index, piece in enumerate(pieces):
            group.attrs[f"{name}{index}"] = piece


def _entries(handle: Any, path: Path) -> dict[str, Any]:
    """(stripped TF name -> dataset) of one h5 file, single-file or shard layout."""
    h5py = require_h5py()
    layers = read_names(handle, "layer_names")
    if layers is None:
        found = ", ".join(sorted(handle.attrs)) or "none"
        raise CheckpointError(
            f"{path} is not a transformers TF weights file: expected the root attribute 'layer_names' (Keras 2 HDF5 "
            f"weights layout), found attributes: {found}"
            + (f" (a Keras 3 {KERAS_SUFFIX} file? read it as --from keras)" if "vars" in handle else "")
        )
    out: dict[str, Any] = {}

    def add(name: str, dataset: Any) -> None:
        if name in out:
            raise CheckpointError(f"{path} holds the weight {name} twice ({out[name].name} and {dataset.name})")
        out[name] = dataset

    for layer in layers:
        item = h5_child(handle, layer)
        if isinstance(item, h5py.Dataset):  # shard layout: the name is the dataset's path
            add(layer, item)
        elif isinstance(item, h5py.Group):
            for weight in read_names(item, "weight_names") or []:
                dataset = h5_child(item, weight)
                if not isinstance(dataset, h5py.Dataset):
                    raise CheckpointError(
                        f"{path}: the layer {layer!r} lists the weight {weight!r} in weight_names but holds no array there"
                    )
                add(strip_model_name(weight), dataset)
        else:
            raise CheckpointError(f"{path} lists the layer {layer!r} in layer_names but holds no such group or array")
    return out


def read_h5(path: Path) -> dict[str, LazyTensor]:
    """The weights of one transformers TF h5 file (a whole model or one shard), lazily, by stripped TF name."""
    with open_h5(path, "a transformers TF weights file (tf_model.h5)") as handle:
        return {name: h5_tensor(path, dataset, name) for name, dataset in _entries(handle, path).items()}


def read_sharded(index: Path) -> tuple[dict[str, LazyTensor], list[Path]]:
    """The weights of every shard an index lists (each shard inside the directory), checked against the index."""
    weight_map = read_index(index)
    files = sorted(set(weight_map.values()))
    tensors: dict[str, LazyTensor] = {}
    for file in files:
        for name, tensor in read_h5(file).items():
            if name in tensors:
                raise CheckpointError(f"the weight {name} appears in more than one shard of {index.parent}")
            tensors[name] = tensor
    absent = [name for name in weight_map if name not in tensors and strip_model_name(name) not in tensors]
    if absent:
        raise CheckpointError(f"shards in {index.parent} lack weights their index lists: {', '.join(absent[:20])}")
    return tensors, files


# ----------------------------------------------------------------------------- the format


class HFTFFormat(Format):
    """transformers' TF layout: ``tf_model.h5`` (sharded or not), names such as ``regnet/encoder/stages.0/...:0``."""

    name = "hf-tf"
    description = "transformers TensorFlow directory (tf_model.h5, sharded or not) or a bare tf_model.h5"
    library = "transformers (TensorFlow)"
    layout = CHANNELS_LAST
    can_write = True
    writes_directory = True

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            has_weights = (path / TF_WEIGHTS_NAME).is_file() or (path / TF_INDEX_NAME).is_file()
            config = path / CONFIG_NAME
            return has_weights and (not config.exists() or is_regnet_config(config))
        return path.is_file() and path.suffix == ".h5" and not path.name.endswith(KERAS_SUFFIX)

    def open(self, path: Path) -> ForeignCheckpoint:
        if path.is_dir():
            if (path / TF_WEIGHTS_NAME).is_file():  # transformers prefers it over the index too
                tensors, files = read_h5(path / TF_WEIGHTS_NAME), [path / TF_WEIGHTS_NAME]
            elif (path / TF_INDEX_NAME).is_file():
                tensors, files = read_sharded(path / TF_INDEX_NAME)
            else:
                raise CheckpointError(f"expected {TF_WEIGHTS_NAME} or {TF_INDEX_NAME} in {path}")
            config = read_directory_config(path) if (path / CONFIG_NAME).is_file() else None
            return ForeignCheckpoint(path, self.name, files, tensors, config)
        if not path.is_file():
            raise CheckpointError(f"expected a transformers TF directory or .h5 file, got {path} (no such path)")
        return ForeignCheckpoint(path, self.name, [path], read_h5(path))

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        canonical = {name: canonical_name(name) for name in names}
        mapped, _ = neutral.from_canonical([c for c in canonical.values() if c is not None])
        out = {name: mapped[c] for name, c in canonical.items() if c is not None and c in mapped}
        return out, [name for name in names if name not in out]

    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        """Neutral name -> TF name (without the model name) for every tensor TF keeps (no num_batches_tracked)."""
        kept = [name for name in names if neutral.kind(name) != BN_COUNT]
        canonical = neutral.to_canonical(kept, with_prefix=True)  # TFRegNetModel keeps its "regnet" main layer
        return {name: tf_name(canonical[name]) for name in kept}

    def write(self, request: WriteRequest) -> list[Path]:
        bad = sorted({request.dtypes[name] for name, _ in _kept(request)} - set(OUTPUT_DTYPES))
        if bad:
            raise FormatError(
                f"hf-tf stores {' or '.join(OUTPUT_DTYPES)} arrays (what transformers' TF loader reads from HDF5), "
                f"got {', '.join(bad)}; pass --dtype float32 or --dtype float16"
            )
        require_h5py()
        with_head = neutral.has_head(request.tensors)
        names = self.from_neutral(list(request.tensors))
        target = request.target
        target.mkdir(parents=True, exist_ok=True)
        sizes = [(n, int(np.prod(t.shape, dtype=np.int64)) * itemsize(request.dtypes[n])) for n, t in _kept(request)]
        shards = plan_shards(sizes, request.max_shard_size)
        written: list[Path] = []
        if len(shards) == 1:
            written.append(_write_single(target / TF_WEIGHTS_NAME, request, names, with_head))
        else:
            weight_map = {}
            for index, shard in enumerate(shards, start=1):
                file_name = f"tf_model-{index:05d}-of-{len(shards):05d}.h5"
                _write_shard(target / file_name, request, {n: names[n] for n in shard})
                written.append(target / file_name)
                weight_map.update({f"{MODEL_NAMES[with_head]}/{names[n]}": file_name for n in shard})
            index_data = {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": weight_map}
            (target / TF_INDEX_NAME).write_text(json.dumps(index_data, indent=2, sort_keys=True) + "\n")
            written.append(target / TF_INDEX_NAME)
        _skip_counters(request)
        # transformers' TF save_pretrained records the class name without "TF".
        architecture = "RegNetForImageClassification" if with_head else "RegNetModel"
        (target / CONFIG_NAME).write_text(request.config.copy(architectures=[architecture]).to_json_string())
        preprocessor = request.preprocessor or DEFAULT_PREPROCESSOR
        (target / PREPROCESSOR_NAME).write_text(json.dumps(dict(preprocessor), indent=2) + "\n")
        return [*written, target / CONFIG_NAME, target / PREPROCESSOR_NAME]

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        """transformers' TFRegNet* loaded by its own from_pretrained from the source, run on an NCHW batch."""
        transformers = _transformers_tf()
        problem = transformers_cannot_build(config)
        if problem:
            raise ReferenceUnavailable(problem)
        with_head = neutral.has_head(self.to_neutral(list(foreign.tensors))[0].values())
        if foreign.path.is_file() and not _is_single_file(foreign.path):
            raise ReferenceUnavailable(f"{foreign.path} is one shard; transformers loads shards through their index")
        model_class = getattr(transformers, CLASSIFIER_CLASSES[with_head])
        hf_config = transformers.RegNetConfig(**transformers_config_fields(config))
        with _quiet(transformers):
            model, info = model_class.from_pretrained(
                str(foreign.path), config=hf_config, use_safetensors=False, output_loading_info=True
            )
        problems = {
            kind: [str(name) for name in info.get(kind, []) if not str(name).startswith("flatten")]
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        if any(problems.values()):
            raise ReferenceUnavailable(
                "transformers' TF model does not take these weights ("
                + "; ".join(f"{kind}: {names[:5]}" for kind, names in problems.items() if names)
                + ")"
            )
        import tensorflow as tf

        def run(pixel_values: np.ndarray) -> np.ndarray:
            # transformers' TF RegNet takes NCHW and transposes to NHWC itself.
            batch = tf.constant(np.ascontiguousarray(pixel_values, np.float32))
            outputs = model(pixel_values=batch, training=False)
            value = outputs.logits if with_head else outputs.pooler_output
            return np.asarray(value).reshape(pixel_values.shape[0], -1)

        return run


def _kept(request: WriteRequest) -> list[tuple[str, LazyTensor]]:
    return [(name, tensor) for name, tensor in request.tensors.items() if neutral.kind(name) != BN_COUNT]


def _skip_counters(request: WriteRequest) -> None:
    """Account for num_batches_tracked in the progress: TF keeps no batch counter, nothing is written."""
    if request.progress is None:
        return
    for name, tensor in request.tensors.items():
        if neutral.kind(name) == BN_COUNT:
            request.progress(name, tensor.nbytes)


def _add_tensor(output: H5Output, group: Any, key: str, name: str, request: WriteRequest, neutral_name: str) -> None:
    output.add(group, key, name, request.in_layout(neutral_name, CHANNELS_LAST), request.dtypes[neutral_name])


def _write_single(path: Path, request: WriteRequest, names: dict[str, str], with_head: bool) -> Path:
    """One file in Keras 2's save_weights layout, as TF save_pretrained writes it."""
    model_name = MODEL_NAMES[with_head]
    by_layer: dict[str, list[str]] = {layer: [] for layer in TOP_LAYERS[with_head]}
    for neutral_name, name in names.items():
        layer = name.split("/", 1)[0]
        if layer not in by_layer:
            raise FormatError(f"the TF model has no top-level layer {layer!r} (for {name})")
        by_layer[layer].append(neutral_name)
    output = H5Output(path, request.progress)
    with output.create() as handle:
        for key, value in FILE_ATTRIBUTES.items():
            handle.attrs[key] = value
        write_names(handle, "layer_names", list(by_layer))
        for layer, members in by_layer.items():
            group = handle.create_group(layer)
            write_names(group, "weight_names", [f"{model_name}/{names[n]}" for n in members])
            for n in members:
                _add_tensor(output, group, f"{model_name}/{names[n]}", names[n], request, n)
        write_names(handle.create_group(EMPTY_GROUP), "weight_names", [])
    output.write_values()
    return path


def _write_shard(path: Path, request: WriteRequest, names: dict[str, str]) -> None:
    """One shard as TF save_pretrained writes it: each weight at its stripped name, the names in layer_names."""
    order = sorted(names, key=lambda n: names[n])
    output = H5Output(path, request.progress)
    with output.create() as handle:
        for neutral_name in order:
            _add_tensor(output, handle, names[neutral_name], names[neutral_name], request, neutral_name)
        write_names(handle, "layer_names", [names[n] for n in order])
    output.write_values()


def _is_single_file(path: Path) -> bool:
    """True for a whole-model h5 file (layer groups), False for one shard (arrays at the top)."""
    h5py = require_h5py()
    with open_h5(path, "a transformers TF weights file") as handle:
        layers = read_names(handle, "layer_names") or []
        return all(isinstance(h5_child(handle, layer), h5py.Group) for layer in layers)


def _transformers_tf() -> Any:
    """transformers with working TF classes, or ReferenceUnavailable saying what is missing."""
    try:
        import transformers
        from transformers.utils import is_tf_available
    except ImportError as error:
        raise ReferenceUnavailable(f"transformers is not installed ({error})") from None
    if not is_tf_available():
        raise ReferenceUnavailable("transformers cannot use TensorFlow here (TensorFlow is not installed)")
    try:
        transformers.TFRegNetForImageClassification  # noqa: B018  (imports transformers' TF modeling)
    except (ImportError, AttributeError, RuntimeError, ValueError) as error:
        raise ReferenceUnavailable(f"transformers' TF RegNet does not import here (needs tf-keras): {error}") from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' logging at error level for a while (from_pretrained's notes on the weightless flatten layer)."""
    logging = transformers.utils.logging
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


FORMAT = HFTFFormat()
