"""Flax variables <-> canonical weights: names and layouts, numpy only.

Every native entry is derived from the core's parameter table by two rules (the naming
rule itself lives in ``regnet_core.formats.flax_native``, which the core's ``flax`` format
shares):

- names: the canonical module path split on dots, an index joined to the name before it
  (Linen's own naming of list members), then the leaf:
  ``regnet.encoder.stages.0.layers.1.layer.0.convolution.weight`` ->
  ``params/regnet/encoder/stages_0/layers_1/layer_0/convolution/kernel``;
- layouts: convolutions OIHW -> HWIO (grouped: (kh, kw, in/groups, out)), dense
  (out, in) -> (in, out); BatchNorm weight / bias -> ``params`` scale / bias,
  running_mean / running_var -> ``batch_stats`` mean / var. num_batches_tracked has no
  Flax counterpart: it is dropped on the way in and written back as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from regnet_core.formats.flax_native import BATCH_STATS, COLLECTIONS, PARAMS, native_module_path, variable_path
from regnet_core.specs import ModelSpec
from regnet_core.weights import (
    BASE_PREFIX,
    TRAINABLE_KINDS,
    CheckpointMismatchError,
    TensorSpec,
    channels_last_shape,
    from_channels_last,
    parameter_table,
    prepare_state,
    to_channels_last,
)

# The naming rule itself lives in the core (its `flax` format reads and writes these files); re-exported here.
__all__ = [
    "BATCH_STATS",
    "COLLECTIONS",
    "PARAMS",
    "check_native",
    "fit_native_head",
    "flatten_variables",
    "from_native",
    "native_module_path",
    "native_path",
    "native_shape",
    "native_table",
    "params_to_canonical",
    "to_native",
]

# Float dtypes safetensors and numpy handle; others (bfloat16) are widened to float32.
_PORTABLE_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def native_path(tensor: TensorSpec) -> tuple[str, ...] | None:
    """(collection, *module path, leaf) of a canonical tensor; None for num_batches_tracked."""
    return variable_path(tensor.module, tensor.kind)


def native_shape(tensor: TensorSpec) -> tuple[int, ...]:
    """The tensor's shape in the Flax layout."""
    return channels_last_shape(tensor.shape, tensor.kind)


def _entries(
    spec: ModelSpec, with_head: bool, kinds: tuple[str, ...] | None = None
) -> Iterator[tuple[str, TensorSpec]]:
    for tensor in parameter_table(spec, with_head):
        path = native_path(tensor)
        if path is not None and (kinds is None or tensor.kind in kinds):
            yield "/".join(path), tensor


def native_table(spec: ModelSpec, with_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every variable of the Flax model: '/'-joined path (collection first) -> shape, in forward order."""
    return {path: native_shape(tensor) for path, tensor in _entries(spec, with_head)}


def flatten_variables(variables: Mapping[str, Any], context: str = "") -> dict[str, Any]:
    """A nested variables tree as {'/'-joined path: leaf}."""
    if not isinstance(variables, Mapping):
        where = f" {context}" if context else ""
        raise ValueError(
            f"expected a Flax variables dict {{'params': ..., 'batch_stats': ...}}{where}, got {type(variables).__name__}"
        )
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                visit(value, path + "/")
            else:
                flat[path] = value

    visit(variables, "")
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _check_flat(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], context: str) -> None:
    missing = [path for path in expected if path not in flat]
    unexpected = sorted(path for path in flat if path not in expected)
    mismatched = [
        f"{path} (expected {expected[path]}, got {tuple(np.shape(value))})"
        for path, value in flat.items()
        if path in expected and tuple(np.shape(value)) != expected[path]
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)


def tree_has_head(variables: Any) -> bool:
    """True for a RegNetForImageClassification variables tree (the trunk nested under ``regnet``), as core's state_has_head."""
    params = variables.get(PARAMS) if isinstance(variables, Mapping) else None
    return isinstance(params, Mapping) and BASE_PREFIX.rstrip(".") in params


def fit_native_head(variables: Any, with_head: bool) -> Any:
    """Fit a variables tree's trunk / classifier nesting to the model, as core's prepare_state does for names.

    A classifier's tree loads into a trunk (its classifier dropped); a trunk's tree is nested
    under ``regnet`` for a classifier, so that a strict check names just the missing classifier.
    """
    trunk = BASE_PREFIX.rstrip(".")
    params = variables.get(PARAMS) if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping) or tree_has_head(variables) == with_head:
        return variables
    if with_head:
        return {collection: {trunk: tree} for collection, tree in variables.items()}
    return {
        collection: tree[trunk] if isinstance(tree, Mapping) and trunk in tree else tree
        for collection, tree in variables.items()
    }


def check_native(variables: Mapping[str, Any], spec: ModelSpec, with_head: bool = True, context: str = "") -> None:
    """Raise CheckpointMismatchError listing every missing, unexpected and mis-shaped variable at once."""
    _check_flat(flatten_variables(variables, context), native_table(spec, with_head), context)


def to_native(
    state: Mapping[str, np.ndarray],
    spec: ModelSpec,
    with_head: bool = True,
    *,
    reinit_head: bool = False,
    context: str = "",
    leaf: Callable[[np.ndarray], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Canonical numpy weights as a Flax variables tree of new numpy arrays (no views of ``state``).

    The state is checked strictly and fitted to the model (trunk / classifier prefixes,
    ``reinit_head`` leaves the classifier out) by the core's ``prepare_state``. ``leaf``
    converts each array as it is made (e.g. to a device array), so that a lazily read state
    is never held twice.
    """
    table, prepared = prepare_state(state, spec, with_head=with_head, reinit_head=reinit_head, context=context)
    flat = {}
    for tensor in table:
        path = native_path(tensor)
        if path is None:
            continue
        # Always fresh memory (to_channels_last copies): JAX on CPU may wrap a numpy buffer
        # without copying, and the caller's canonical arrays must stay theirs to reuse.
        array = to_channels_last(prepared[tensor.name], tensor.kind)
        flat["/".join(path)] = array if leaf is None else leaf(array)
    return _nest(flat)


def _canonical_array(value: Any, kind: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in _PORTABLE_FLOATS:
        array = array.astype(np.float32)
    # Own, writeable memory (from_channels_last copies): never a view of a device buffer or of the caller's tree.
    return from_channels_last(array, kind)


def from_native(
    variables: Mapping[str, Any], spec: ModelSpec, with_head: bool = True, context: str = ""
) -> dict[str, np.ndarray]:
    """Canonical numpy weights (table order, num_batches_tracked zero) of a Flax variables tree, checked strictly."""
    flat = flatten_variables(variables, context)
    _check_flat(flat, native_table(spec, with_head), context)
    state: dict[str, np.ndarray] = {}
    for tensor in parameter_table(spec, with_head):
        path = native_path(tensor)
        if path is None:
            state[tensor.name] = np.zeros(tensor.shape, tensor.dtype)
        else:
            state[tensor.name] = _canonical_array(flat["/".join(path)], tensor.kind)
    return state


def params_to_canonical(params: Mapping[str, Any], spec: ModelSpec, with_head: bool = True) -> dict[str, np.ndarray]:
    """A ``params`` tree (weights or their gradients) as canonical trainable tensors, checked strictly."""
    entries = dict(_entries(spec, with_head, TRAINABLE_KINDS))
    prefix = PARAMS + "/"
    flat = {prefix + path: value for path, value in flatten_variables(params).items()}
    _check_flat(flat, {path: native_shape(tensor) for path, tensor in entries.items()}, "")
    return {tensor.name: _canonical_array(flat[path], tensor.kind) for path, tensor in entries.items()}
