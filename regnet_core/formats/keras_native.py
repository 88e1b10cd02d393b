"""``keras``: this package's own Keras 3 ``.weights.h5`` files, read and written with h5py alone.

``regnet_tf.save_native`` (Keras ``save_weights``) writes them: an HDF5 tree that follows
the Keras model's attributes, one group per layer with a ``vars`` group holding the
layer's variables as datasets ``0``, ``1``, ... and its layer name as the attribute
``name``, plus the RegNet config as the root attribute ``regnet_config``:

    layers/reg_net_model/layers/stage_1/blocks/bottleneck/conv_b/convolution/vars/0
        (the layers named regnet / stage_1 / block_0 / b / conv: variable 0 is the kernel)

Reading maps the layer names and variable positions to native variable paths
(``regnet/stage_1/block_0/b/conv/kernel``, Keras layout: conv HWIO, dense (in, out));
writing rebuilds the tree Keras writes for the model, tensor by tensor, so that Keras'
``load_weights`` reads it. The native naming rules live here (``regnet_tf`` builds its
layers with these names), so the core never needs TensorFlow for them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..errors import CheckpointError, FormatError, UnsafeCheckpointError
from ..io import PositionalWriter, direct_io_wanted
from ..specs import ModelSpec, build_model_spec
from ..tensors import (
    Extent,
    LazyTensor,
    check_finite,
    check_finite_stored,
    dtype_name,
    file_values,
    from_storage,
    itemsize,
    shape_problem,
    to_storage,
)
from ..weights import (
    BN_BIAS,
    BN_COUNT,
    BN_MEAN,
    BN_VAR,
    BN_WEIGHT,
    CONV,
    CONV_BIAS,
    DENSE,
    DENSE_BIAS,
    TensorSpec,
    channels_last_shape,
    parameter_table,
)
from . import neutral
from .base import (
    CHANNELS_LAST,
    KERAS_BN,
    ForeignCheckpoint,
    Format,
    NameTable,
    ReferenceUnavailable,
    WriteRequest,
)

# ----------------------------------------------------------------------------- native names

# Layer names of the Keras model (regnet_tf.modeling builds its layers with these).
TRUNK = "regnet"  # the RegNetModel inside RegNetForImageClassification
STEM = "stem"
CONV_LAYER = "conv"
BN_LAYER = "bn"
SE_LAYER = "se"
SE_REDUCE = "reduce"
SE_EXPAND = "expand"
CLASSIFIER = "classifier"
# Block roles (regnet_core.weights.block_module_names keys) double as the native layer names.
PROJECTION, CONV_A, CONV_B, CONV_C = "projection", "a", "b", "c"
_STAGE, _BLOCK = "stage_{}", "block_{}"

# Keras variable name of each canonical kind.
VARIABLE_NAMES = {
    CONV: "kernel",
    CONV_BIAS: "bias",
    BN_WEIGHT: "gamma",
    BN_BIAS: "beta",
    BN_MEAN: "moving_mean",
    BN_VAR: "moving_variance",
    DENSE: "kernel",
    DENSE_BIAS: "bias",
}
# A layer's variables in the order Keras saves them (trainable first): ``vars/<i>`` is the i-th.
BN_VARIABLES = (VARIABLE_NAMES[BN_WEIGHT], VARIABLE_NAMES[BN_BIAS], VARIABLE_NAMES[BN_MEAN], VARIABLE_NAMES[BN_VAR])
KERNEL_VARIABLES = ("kernel", "bias")


def stage_name(stage_index: int) -> str:
    """Native layer name of a stage."""
    return _STAGE.format(stage_index)


def block_name(block_index: int) -> str:
    """Native layer name of a block inside its stage."""
    return _BLOCK.format(block_index)


def layer_variables(layer: str) -> tuple[str, ...]:
    """Variable names of a native layer (by its name), in Keras' saving order."""
    return BN_VARIABLES if layer == BN_LAYER else KERNEL_VARIABLES


def _rules(prefix: str) -> list[tuple[str, str]]:
    block = f"{prefix}{_STAGE.format('{stage}')}/{_BLOCK.format('{block}')}"
    rules = [
        (f"{prefix}{STEM}/{CONV_LAYER}/kernel", "stem.conv.weight"),
        (f"{prefix}{STEM}/{BN_LAYER}/{{bn}}", "stem.bn.{bn}"),
    ]
    for layer, role in ((CONV_A, "a"), (CONV_B, "b"), (CONV_C, "c"), (PROJECTION, "proj")):
        rules.append((f"{block}/{layer}/{CONV_LAYER}/kernel", f"s{{stage}}.b{{block}}.{role}.conv.weight"))
        rules.append((f"{block}/{layer}/{BN_LAYER}/{{bn}}", f"s{{stage}}.b{{block}}.{role}.bn.{{bn}}"))
    for layer, part in ((SE_REDUCE, "reduce"), (SE_EXPAND, "expand")):
        rules.append((f"{block}/{SE_LAYER}/{layer}/kernel", f"s{{stage}}.b{{block}}.se.{part}.weight"))
        rules.append((f"{block}/{SE_LAYER}/{layer}/bias", f"s{{stage}}.b{{block}}.se.{part}.bias"))
    return rules


_HEAD_RULES = [(f"{CLASSIFIER}/kernel", "head.weight"), (f"{CLASSIFIER}/bias", "head.bias")]
# Native paths inside RegNetForImageClassification (under "regnet/", plus the classifier) and inside RegNetModel.
CLASSIFIER_NAMES = NameTable(_rules(f"{TRUNK}/") + _HEAD_RULES, KERAS_BN)
TRUNK_NAMES = NameTable(_rules(""), KERAS_BN)
NATIVE_NAMES = NameTable(_rules(f"{TRUNK}/") + _HEAD_RULES + _rules(""), KERAS_BN)


def native_names(names: Sequence[str], with_head: bool) -> dict[str, str]:
    """Neutral name -> native variable path, for every tensor Keras keeps (num_batches_tracked has none).

    ``with_head``: paths inside RegNetForImageClassification (``regnet/...``, ``classifier/...``),
    else inside RegNetModel.
    """
    kept = [name for name in names if neutral.kind(name) != BN_COUNT]
    return (CLASSIFIER_NAMES if with_head else TRUNK_NAMES).map_from_neutral(kept, "keras")


def native_pairs(spec: ModelSpec, with_head: bool = True) -> list[tuple[TensorSpec, str]]:
    """(canonical tensor, native variable path) for every canonical tensor that has a Keras variable, in forward order."""
    table = [tensor for tensor in parameter_table(spec, with_head) if tensor.kind != BN_COUNT]
    to_neutral, unknown = neutral.from_canonical([tensor.name for tensor in table])
    if unknown:  # the canonical table grew a tensor the neutral vocabulary does not know
        raise RuntimeError(f"no neutral name for canonical tensors {unknown[:5]}")
    paths = native_names(list(to_neutral.values()), with_head)
    return [(tensor, paths[to_neutral[tensor.name]]) for tensor in table]


def module_paths(spec: ModelSpec, with_head: bool = True) -> dict[str, str]:
    """Canonical module name -> native Keras layer path (relative to the model), for every module with weights."""
    return {tensor.module: path.rsplit("/", 1)[0] for tensor, path in native_pairs(spec, with_head)}


def native_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Keras shape of a canonical tensor: conv OIHW -> HWIO, dense (out, in) -> (in, out)."""
    return channels_last_shape(shape, kind)


def native_table(spec: ModelSpec, with_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every native variable path (relative to the model) and its Keras shape, in forward order."""
    return {path: native_shape(tensor.shape, tensor.kind) for tensor, path in native_pairs(spec, with_head)}


def canonical_names(spec: ModelSpec, with_head: bool = True) -> dict[str, str]:
    """Native variable path -> canonical tensor name."""
    return {path: tensor.name for tensor, path in native_pairs(spec, with_head)}


# ----------------------------------------------------------------------------- the HDF5 tree Keras writes

# Keras 3 saves a model by walking its attributes: a layer held in an attribute is saved
# under the attribute's name; layers in a list under the list's name, each as its class
# name in snake case, numbered from the second of a class on ("stage", "stage_1", ...).
# A subclassed keras.Model's sub-layers go through its ``layers`` list; an attribute
# sorted before "layers" is saved there first (RegNetForImageClassification's classifier).
CONFIG_ATTRIBUTE = "regnet_config"
SUFFIX = ".weights.h5"  # Keras refuses other names for save_weights / load_weights
VARS = "vars"
ROOT_NAMES = {True: "regnet_for_image_classification", False: "regnet_model"}  # Keras' default model names
_OPTIMIZER = "optimizer"  # a compiled model's save_weights adds its optimizer's state here


def _numbered(name: str, index: int) -> str:
    return name if index == 0 else f"{name}_{index}"


def _index(name: str, template: str) -> int | None:
    match = re.fullmatch(template.replace("{}", r"(\d+)"), name)
    return int(match.group(1)) if match else None


def _child_group(parent: str, layer: str) -> tuple[str, str] | None:
    """(group path relative to the parent layer's group, kind of the child) for a native layer name."""
    if parent == "classifier_model":
        return {TRUNK: ("layers/reg_net_model", "trunk"), CLASSIFIER: (CLASSIFIER, "leaf")}.get(layer)
    if parent == "trunk":
        if layer == STEM:
            return "layers/conv_norm_act", "conv_bn"
        stage = _index(layer, _STAGE)
        return None if stage is None else (f"layers/{_numbered('stage', stage)}", "stage")
    if parent == "stage":
        block = _index(layer, _BLOCK)
        return None if block is None else (f"blocks/{_numbered('bottleneck', block)}", "block")
    if parent == "block":
        children = {
            CONV_A: ("conv_a", "conv_bn"),
            CONV_B: ("conv_b", "conv_bn"),
            CONV_C: ("conv_c", "conv_bn"),
            PROJECTION: ("projection", "conv_bn"),
            SE_LAYER: ("squeeze_excitation", "se"),
        }
        return children.get(layer)
    if parent == "conv_bn":
        return {CONV_LAYER: ("convolution", "leaf"), BN_LAYER: ("normalization", "leaf")}.get(layer)
    if parent == "se":
        return {SE_REDUCE: (SE_REDUCE, "leaf"), SE_EXPAND: (SE_EXPAND, "leaf")}.get(layer)
    return None


def h5_layer_groups(layer_path: str, with_head: bool) -> list[tuple[str, str]]:
    """(HDF5 group, layer name) of every layer on a native layer path, outermost first, as Keras saves them.

    ``h5_layer_groups("regnet/stage_1/block_0/b/conv", True)`` ends with
    ``("layers/reg_net_model/layers/stage_1/blocks/bottleneck/conv_b/convolution", "conv")``.
    """
    kind = "classifier_model" if with_head else "trunk"
    group = ""
    out = []
    for layer in layer_path.split("/"):
        child = _child_group(kind, layer)
        if child is None:
            raise FormatError(f"the Keras model has no layer {layer!r} on the path {layer_path!r}")
        relative, kind = child
        group = f"{group}/{relative}" if group else relative
        out.append((group, layer))
    return out


# ----------------------------------------------------------------------------- HDF5 helpers (shared with hf-tf)


def require_h5py() -> Any:
    """The h5py module, or a CheckpointError saying how to install it."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise CheckpointError(
            "reading and writing HDF5 checkpoints (.h5) needs h5py, which is not installed; install it with: "
            "pip install h5py"
        ) from None
    return h5py


_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)
MAX_H5_LINKS = 1_000_000  # a RegNet weights file has a few thousand


def h5_child(group: Any, name: str) -> Any:
    """``group[name]``, or None where nothing is there (h5py's ``get`` looks the name up twice)."""
    try:
        return group[name]
    except KeyError:
        return None


def _storage(dataset_id: Any) -> tuple[int, int]:
    """(layout, number of external files) of a low-level dataset, from one fetch of its creation properties."""
    plist = dataset_id.get_create_plist()
    return plist.get_layout(), plist.get_external_count()


def _refuse_outside_storage(name: str, layout: int, external: int, path: Path) -> None:
    h5py = require_h5py()
    if layout == h5py.h5d.VIRTUAL or external:
        kind = "a virtual dataset" if layout == h5py.h5d.VIRTUAL else "stored in external files"
        raise UnsafeCheckpointError(
            f"{path}: the array {name} is {kind}, which would read data from outside this file; refusing it"
        )


def check_h5_dataset(dataset: Any, path: Path) -> None:
    """Refuse a dataset whose values live in another file (external storage or a virtual dataset)."""
    _refuse_outside_storage(dataset.name, *_storage(dataset.id), path)


def check_h5_self_contained(handle: Any, path: Path) -> None:
    """Refuse an HDF5 file that reaches outside itself: external links, external storage, virtual datasets."""
    h5py = require_h5py()
    count = 0
    problems: list[CheckpointError] = []

    def visit_link(name: bytes, info: Any) -> bool | None:
        # h5py's visitor cannot raise through HDF5: record the problem and stop the walk (a non-None return).
        nonlocal count
        count += 1
        if count > MAX_H5_LINKS:
            problems.append(
                CheckpointError(f"{path} holds more than {MAX_H5_LINKS} HDF5 objects; a weights file holds far fewer")
            )
        elif info.type == h5py.h5l.TYPE_EXTERNAL:
            link = handle.get(name.decode("utf8", "replace"), getlink=True)
            problems.append(
                UnsafeCheckpointError(
                    f"{path}: /{name.decode('utf8', 'replace')} is a link to {link.filename}:{link.path}, "
                    "outside this file; refusing it"
                )
            )
        return True if problems else None

    def visit_object(name: bytes, info: Any) -> bool | None:
        if info.type == h5py.h5o.TYPE_DATASET:
            try:
                layout, external = _storage(h5py.h5d.open(handle.id, name))
                _refuse_outside_storage("/" + name.decode("utf8", "replace"), layout, external, path)
            except CheckpointError as error:
                problems.append(error)
        return True if problems else None

    # Every link first, by the low-level walk (h5py's visititems_links looks each one up by name):
    # then the object walk, which follows hard links only, never leaves the file. Both stay at
    # HDF5's level: h5py's visititems makes a high-level object per name (0.10 s against 0.04 s
    # on regnet-y-320's 407 datasets).
    handle.id.links.visit(visit_link, info=True)
    if not problems:
        h5py.h5o.visit(handle.id, visit_object, info=True)  # each object once
    if problems:
        raise problems[0]


@contextmanager
def open_h5(path: Path, what: str, check: bool = True) -> Iterator[Any]:
    """An HDF5 file open for reading; a missing, foreign, truncated or broken file raises CheckpointError naming ``what``.

    ``check`` (default) first refuses a file that reaches outside itself (check_h5_self_contained).
    """
    h5py = require_h5py()
    if not path.is_file():
        raise CheckpointError(f"expected {what} at {path}, found {'a directory' if path.exists() else 'nothing'}")
    try:
        handle = h5py.File(path, "r")
    except _H5_ERRORS as error:
        raise CheckpointError(f"{path} is not an HDF5 file ({what}) or is damaged: {error}") from None
    try:
        if check:
            check_h5_self_contained(handle, path)
        yield handle
    except CheckpointError:
        raise
    except _H5_ERRORS as error:
        raise CheckpointError(f"{path} ({what}) is damaged or not laid out as expected: {error}") from None
    finally:
        handle.close()


def text(value: Any) -> str:
    """An HDF5 string attribute (str, bytes or a numpy scalar of either) as str."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def h5_dtype(dataset: Any) -> str:
    """The stored dtype name of a dataset: Keras marks bfloat16 (2-byte opaque) with the attribute ``dtype``."""
    if text(dataset.attrs.get("dtype", "")) == "bfloat16" and dataset.dtype.itemsize == 2:
        return "bfloat16"
    stored = dataset.dtype
    return dtype_name(stored.newbyteorder("=") if stored.byteorder in "<>" else stored)  # values load in native order


def h5_tensor(path: Path, dataset: Any, source: str) -> LazyTensor:
    """A LazyTensor over a dataset: the file is opened again, and the dataset read, only on load()."""
    dtype = h5_dtype(dataset)
    try:
        itemsize(dtype)
    except ValueError:
        raise CheckpointError(
            f"{source} in {path} holds {dataset.dtype} values; expected floating-point weights"
        ) from None
    address = dataset.name
    shape = tuple(int(d) for d in dataset.shape)
    problem = shape_problem(list(shape), dtype)
    if problem:
        raise CheckpointError(f"{source} in {path}: {problem}")
    layout, external = _storage(dataset.id)
    _refuse_outside_storage(address, layout, external, path)
    _check_h5_storage(dataset, path, source, shape, dtype, layout)
    offset = _contiguous_offset(dataset, layout, external)
    if offset is not None:  # plain bytes at a known place: read them as safetensors' are, without HDF5
        raw_dtype = np.dtype("<u2") if dtype == "bfloat16" else dataset.id.dtype

        def stored() -> np.ndarray:
            return file_values(path, offset, shape, raw_dtype, source)

        extent = Extent(str(path), offset, math.prod(shape) * raw_dtype.itemsize)
        return LazyTensor(
            shape, dtype, lambda: from_storage(stored(), dtype), f"{source} in {path}", stored, extent=extent
        )

    def load() -> np.ndarray:
        with open_h5(path, f"the HDF5 file holding {source}", check=False) as handle:  # the file was checked on open
            item = handle[address]
            check_h5_dataset(item, path)
            if tuple(item.shape) != shape or h5_dtype(item) != dtype:
                raise CheckpointError(f"{source} in {path} changed since the file was opened")
            raw = item[()]
        raw = np.asarray(raw)
        raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
        return from_storage(raw.view(np.uint16), dtype) if dtype == "bfloat16" else raw

    return LazyTensor(shape, dtype, load, f"{source} in {path}")


def _contiguous_offset(dataset: Any, layout: int, external: int) -> int | None:
    """Where a contiguous, unfiltered dataset's bytes start in its file (None for chunked, compact or empty data)."""
    h5py = require_h5py()
    if layout != h5py.h5d.CONTIGUOUS or external or dataset.id.dtype.kind not in "fV":
        return None
    try:
        offset = dataset.id.get_offset()
    except (RuntimeError, ValueError, OSError):
        return None
    return None if offset is None or offset < 0 else int(offset)


def _check_h5_storage(dataset: Any, path: Path, source: str, shape: tuple[int, ...], dtype: str, layout: int) -> None:
    """Refuse a plain (contiguous, unfiltered) dataset whose stored bytes are not what its shape and dtype need."""
    declared = math.prod(shape) * itemsize(dtype)
    if layout == require_h5py().h5d.CHUNKED or not declared:
        return  # chunked (possibly compressed) data: h5py checks each chunk as it is read
    stored = dataset.id.get_storage_size()
    if stored != declared:
        raise CheckpointError(
            f"{source} in {path} declares shape {shape} of {dtype} ({declared} bytes) but stores {stored} bytes: "
            "the file is truncated or damaged"
        )


class H5Output:
    """An HDF5 weights file made in two steps: the tree with each dataset's space reserved, then the values.

    h5py copies a dataset's values through the page cache as it makes it, about 1 ms and a
    fresh copy per tensor. Here ``create`` opens the file for the tree (datasets contiguous,
    their space allocated at creation, never filled, large ones 4096-aligned); ``add`` makes
    a dataset and notes where its bytes go; after the file is closed, ``write_values`` writes
    every tensor at its offset (checked finite, in the order added, O_DIRECT for large files),
    while the tensors after it are read ahead.
    """

    ALIGN_FROM = 1 << 16  # bytes: datasets from this size start on a 4096-byte boundary

    def __init__(self, path: Path, progress: Callable[[str, int], None] | None = None) -> None:
        self.path = path
        self.progress = progress
        self._pending: list[tuple[str, LazyTensor, str, int | None]] = []
        self._closed_tree = False

    @contextmanager
    def create(self) -> Iterator[Any]:
        """The new file, open for its tree; closed on leaving."""
        h5py = require_h5py()
        with h5py.File(self.path, "w", alignment_threshold=self.ALIGN_FROM, alignment_interval=4096) as handle:
            yield handle
        self._closed_tree = True

    def add(self, group: Any, key: str, name: str, tensor: LazyTensor, dtype: str) -> None:
        """Make the dataset ``key`` in ``group`` for a tensor written as ``dtype``; its values come later."""
        h5py = require_h5py()
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        stored_dtype = np.dtype("V2") if dtype == "bfloat16" else np.dtype(dtype)
        dataset = group.create_dataset(
            key, shape=tuple(tensor.shape), dtype=stored_dtype, dcpl=plist, fill_time="never"
        )
        if dtype == "bfloat16":
            dataset.attrs["dtype"] = "bfloat16"
        offset = dataset.id.get_offset()
        if offset is None and tensor.size:
            raise RuntimeError(f"HDF5 reserved no space for {name} in {self.path}")
        self._pending.append((name, tensor, dtype, offset))

    def write_values(self) -> int:
        """Write every added tensor's values into the closed file; returns their bytes."""
        if not self._closed_tree:
            raise RuntimeError("write_values comes after the file's tree is complete and closed")
        total = sum(tensor.size * itemsize(dtype) for _, tensor, dtype, _ in self._pending)
        with PositionalWriter(self.path, direct=direct_io_wanted(total)) as out:
            for name, tensor, dtype, offset in self._pending:
                written = 0
                if tensor.dtype == dtype:  # the stored bytes pass through, in pieces where the tensor streams
                    for block in tensor.iter_stored():
                        check_finite_stored(name, block, dtype)
                        written += out.write_at(
                            offset + written, np.ascontiguousarray(block).reshape(-1).view(np.uint8)
                        )
                else:
                    values = tensor.load()
                    check_finite(name, values)
                    stored = to_storage(values, dtype)
                    del values
                    written = out.write_at(offset or 0, stored.reshape(-1).view(np.uint8))
                expected = tensor.size * itemsize(dtype)
                if written != expected:
                    raise CheckpointError(f"tensor {name}: expected {expected} bytes, produced {written}")
                if self.progress is not None:
                    self.progress(name, expected)
        return total


# ----------------------------------------------------------------------------- the format


def _read_config(handle: Any, path: Path) -> RegNetConfig | None:
    raw = handle.attrs.get(CONFIG_ATTRIBUTE)
    if raw is None:
        return None
    try:
        return RegNetConfig.from_dict(json.loads(text(raw)))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the {CONFIG_ATTRIBUTE!r} attribute is not a RegNet config: {error}") from None


def read_native_config(path: str | Path) -> RegNetConfig | None:
    """The RegNet config a ``.weights.h5`` file carries (root attribute ``regnet_config``), or None."""
    with open_h5(Path(path), f"a Keras {SUFFIX} file") as handle:
        return _read_config(handle, Path(path))


def _walk(handle: Any, path: Path) -> tuple[dict[str, LazyTensor], list[str]]:
    """(native variable path -> tensor, ignored entries) of a Keras weights file, from its layer names."""
    h5py = require_h5py()
    tensors: dict[str, LazyTensor] = {}
    ignored: list[str] = []

    def visit(group: Any, layers: list[str], top: bool) -> None:
        own = h5_child(group, VARS)
        if isinstance(own, h5py.Group):
            if not top:
                layers = [*layers, text(own.attrs.get("name", group.name.rsplit("/", 1)[-1]))]
            variables = layer_variables(layers[-1]) if layers else ()
            for key in own:
                item = own[key]
                if not isinstance(item, h5py.Dataset):
                    continue
                position = int(key) if key.isdigit() else -1
                variable = variables[position] if 0 <= position < len(variables) else f"{VARS}/{key}"
                native = "/".join([*layers, variable])
                if native in tensors:
                    raise CheckpointError(f"{path} holds two arrays for the variable {native} ({item.name})")
                tensors[native] = h5_tensor(path, item, native)
        for key in group:
            if key == VARS:
                continue
            item = group[key]
            if top and key == _OPTIMIZER:
                ignored.append(f"optimizer state ({_count_datasets(item, h5py)} arrays)")
            elif isinstance(item, h5py.Group):
                visit(item, layers, False)

    visit(handle, [], True)
    return tensors, ignored


def _count_datasets(group: Any, h5py: Any) -> int:
    found: list[str] = []
    group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return len(found)


def read_native(path: str | Path) -> tuple[dict[str, LazyTensor], RegNetConfig | None, list[str]]:
    """(native variable path -> lazy tensor, the stored config or None, ignored entries) of a ``.weights.h5`` file."""
    path = Path(path)
    with open_h5(path, f"a Keras {SUFFIX} file") as handle:
        config = _read_config(handle, path)
        tensors, ignored = _walk(handle, path)
    if not tensors:
        raise CheckpointError(
            f"{path} holds no Keras layer variables (expected groups with '{VARS}' datasets, as Keras 3 "
            "save_weights writes); is it another kind of .h5 file?"
        )
    return tensors, config, ignored


class KerasFormat(Format):
    """This package's Keras 3 weights files: native paths such as ``regnet/stage_1/block_0/b/conv/kernel``."""

    name = "keras"
    description = "Keras 3 .weights.h5 (regnet_tf.save_native / keras Model.save_weights), config inside"
    library = "Keras (regnet_tf)"
    layout = CHANNELS_LAST
    can_write = True
    output_suffixes = (SUFFIX,)

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(SUFFIX)

    def open(self, path: Path) -> ForeignCheckpoint:
        tensors, config, ignored = read_native(path)
        return ForeignCheckpoint(path, self.name, [path], tensors, config, ignored)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return NATIVE_NAMES.map_to_neutral(names)

    def from_neutral(self, names: Sequence[str]) -> dict[str, str]:
        """Neutral name -> native path for every tensor Keras keeps (num_batches_tracked is left out)."""
        return native_names(names, neutral.has_head(names))

    def write(self, request: WriteRequest) -> list[Path]:
        require_h5py()
        with_head = neutral.has_head(request.tensors)
        paths = self.from_neutral(list(request.tensors))
        _check_complete(paths.values(), request.config, with_head)
        architecture = "RegNetForImageClassification" if with_head else "RegNetModel"
        config = request.config.copy(architectures=[architecture])
        output = H5Output(request.target, request.progress)
        with output.create() as handle:
            handle.attrs[CONFIG_ATTRIBUTE] = config.to_json_string()
            handle.create_group(VARS).attrs["name"] = ROOT_NAMES[with_head]
            made: dict[str, Any] = {}
            for name, tensor in request.tensors.items():
                if name not in paths:  # num_batches_tracked: Keras keeps no batch counter
                    _report(request.progress, name, tensor.nbytes)
                    continue
                layer_path, variable = paths[name].rsplit("/", 1)
                own = None
                for group_path, layer in h5_layer_groups(layer_path, with_head):
                    if group_path not in made:
                        made[group_path] = handle.create_group(group_path).create_group(VARS)
                        made[group_path].attrs["name"] = layer
                    own = made[group_path]
                key = str(layer_variables(layer_path.rsplit("/", 1)[-1]).index(variable))
                output.add(own, key, paths[name], request.in_layout(name, self.layout), request.dtypes[name])
        output.write_values()
        return [request.target]

    def reference_logits(
        self, foreign: ForeignCheckpoint, config: RegNetConfig
    ) -> Callable[[np.ndarray], np.ndarray] | None:
        """Keras' own ``load_weights`` into regnet_tf's model (by the file's tree, not our reading), when installed."""
        from ..backends import BackendUnavailableError, get_backend

        try:
            backend = get_backend("tf")
        except BackendUnavailableError as error:
            raise ReferenceUnavailable(str(error)) from None
        if not foreign.path.name.endswith(SUFFIX):
            raise ReferenceUnavailable(f"Keras loads only files named *{SUFFIX}, not {foreign.path.name}")
        # The file's tree says which Keras model wrote it (a classifier without labels has no head tensors).
        with_head = any(name.startswith((f"{TRUNK}/", f"{CLASSIFIER}/")) for name in foreign.tensors)
        model = backend.build(config, with_head)
        try:
            model.load_weights(foreign.path)
        except (ValueError, KeyError) as error:
            raise ReferenceUnavailable(f"Keras' load_weights does not take {foreign.path}: {error}") from None

        def run(pixel_values: np.ndarray) -> np.ndarray:
            outputs = backend.run(model, pixel_values, output_hidden_states=False)
            value = outputs["logits"] if "logits" in outputs else outputs["pooler_output"]
            return np.asarray(value).reshape(pixel_values.shape[0], -1)

        return run


def _report(progress: Callable[[str, int], None] | None, name: str, nbytes: int) -> None:
    if progress is not None:
        progress(name, nbytes)


def _check_complete(paths: Any, config: RegNetConfig, with_head: bool) -> None:
    """Raise CheckpointError unless the paths are exactly the Keras model's variables for this config."""
    expected = set(native_table(build_model_spec(config), with_head))
    got = set(paths)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise CheckpointError(
            f"the tensors do not make the Keras model of this config: missing {missing[:10]}, unexpected {extra[:10]}"
        )


FORMAT = KerasFormat()
