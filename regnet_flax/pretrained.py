"""Building, loading and saving Flax RegNets: (module, variables) pairs in and out.

Checkpoint directories are the shared transformers layout (regnet_core.checkpoint), so a
directory saved by regnet_pt loads here and the other way round. Flax msgpack files are a
plain variables tree (the config comes from the caller), written and read as a stream by the
core's msgpack reader and writer (``regnet_core.msgpack_io``; the core's ``flax`` format).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from regnet_core.checkpoint import CheckpointError, save_checkpoint
from regnet_core.config import RegNetConfig, reject_keywords, require_config
from regnet_core.convert import load_pretrained
from regnet_core.io import atomic_write
from regnet_core.msgpack_io import nest, read_msgpack, write_msgpack
from regnet_core.resources import check_memory
from regnet_core.specs import build_model_spec
from regnet_core.tensors import LazyTensor, dtype_name, from_storage
from regnet_core.weights import HEAD_PREFIX, state_has_head

from .modeling import (
    RegNetForImageClassification,
    RegNetModel,
    canonical_dtype,
    classifier_kernel_init,
    has_head,
    model_class,
)
from .weights import PARAMS, check_native, fit_native_head, from_native, native_module_path, to_native, tree_has_head

Variables = dict[str, Any]
FlaxModel = tuple[RegNetModel | RegNetForImageClassification, Variables]

# init traces one forward on a dummy batch; at 32 x 32 (the zoo's overall stride) every stage is >= 1 x 1.
_INIT_IMAGE_SIZE = 32


def init(
    config: RegNetConfig,
    with_head: bool = True,
    seed: int = 0,
    *,
    zero_init_last_bn: bool = False,
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
    **unknown: Any,
) -> FlaxModel:
    """A new pycls-initialised (module, variables) pair, seeded; ``dtype`` is the computation dtype (see from_pretrained).

    Refused before anything is allocated when the weights would not fit in memory (``allow_large=True`` skips that).
    """
    reject_keywords(unknown, "regnet_flax.init()", ("with_head", "seed", "zero_init_last_bn", "dtype", "allow_large"))
    check_memory(require_config(config, "regnet_flax.init"), with_head, allow_large, what="Flax model")
    module = model_class(with_head)(config, zero_init_last_bn=zero_init_last_bn, dtype=canonical_dtype(dtype))
    dummy = jnp.zeros((1, _INIT_IMAGE_SIZE, _INIT_IMAGE_SIZE, config.num_channels), jnp.float32)
    # jit: one compiled init instead of hundreds of dispatched ops; the forward itself is discarded.
    # The classic threefry lowering: XLA:CPU compiles the partitionable one's random bits about
    # 6x slower (30 s against 5 s for a two-stage model here). Values are fixed by the seed either way.
    with jax.threefry_partitionable(False):
        variables = jax.jit(module.init)(jax.random.PRNGKey(seed), dummy)
    return module, dict(variables)


def from_canonical(
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    with_head: bool = True,
    *,
    reinit_head: bool = False,
    seed: int = 0,
    context: str = "",
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
) -> FlaxModel:
    """A (module, variables) pair holding canonical numpy weights, loaded strictly.

    ``reinit_head`` keeps the trunk and draws a fresh pycls classifier from ``seed``;
    ``dtype`` is the computation dtype (see from_pretrained); ``allow_large`` skips the memory guard.
    """
    check_memory(require_config(config, "regnet_flax.from_canonical"), with_head, allow_large, what="Flax model")
    spec = build_model_spec(config)
    variables = to_native(state, spec, with_head, reinit_head=reinit_head, context=context, leaf=jnp.asarray)
    if with_head and reinit_head and spec.head.num_labels > 0:
        classifier_path = native_module_path(HEAD_PREFIX + "1")
        kernel = classifier_kernel_init(jax.random.PRNGKey(seed), (spec.head.input_width, spec.head.num_labels))
        node = variables.setdefault(PARAMS, {})
        for name in classifier_path:
            node = node.setdefault(name, {})
        node.update(kernel=kernel, bias=jnp.zeros((spec.head.num_labels,), jnp.float32))
    return model_class(with_head)(config, dtype=canonical_dtype(dtype)), variables


def to_canonical(model: FlaxModel, context: str = "") -> dict[str, np.ndarray]:
    """Canonical numpy weights of a (module, variables) pair (num_batches_tracked written as zero)."""
    module, variables = model
    return from_native(variables, build_model_spec(module.config), has_head(module), context)


def from_pretrained(
    source: str | os.PathLike,
    *,
    with_head: bool | None = None,
    reinit_head: bool = False,
    seed: int = 0,
    format: str | None = None,
    config: RegNetConfig | str | None = None,
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
    **config_changes: Any,
) -> FlaxModel:
    """Load any supported checkpoint as ``(module, variables)``, strictly.

    ``source`` is a checkpoint directory, a weights file of any supported format (timm,
    torchvision, pycls, SEER, transformers TF / Flax, Keras) or a hub id; ``format`` names
    the format when detection should not decide, ``config`` supplies the architecture of a
    file that carries none (else it is inferred from the weights).

    Returns the Linen module (RegNetForImageClassification or RegNetModel) and its
    variables ``{"params": ..., "batch_stats": ...}``; run it with
    ``module.apply(variables, pixel_values_nhwc)``. ``with_head`` picks the class (default:
    what the checkpoint holds; a classification checkpoint also loads as a trunk).
    ``reinit_head=True`` keeps the trunk and starts a fresh classifier drawn from ``seed``
    (for fine-tuning, e.g. with ``num_labels=10``). Other keywords change config fields
    before building (a keyword that is no field is a ConfigError naming the nearest).
    ``allow_large=True`` skips the memory guard (regnet_core.resources). Every missing,
    unexpected or mis-shaped tensor is reported at once.

    ``dtype`` (default float32; "bfloat16", "float32" or a jnp dtype) is the computation
    dtype: with ``jnp.bfloat16`` convolutions, matmuls and activations run in bfloat16
    while the parameters stay float32 (cast when used), BatchNorm normalises in float32,
    and the pooled features and the classifier (hence the logits) are float32.
    """
    config, state = load_pretrained(source, format, config, **config_changes)
    if with_head is None:
        with_head = reinit_head or state_has_head(state)
    return from_canonical(
        config,
        state,
        with_head,
        reinit_head=reinit_head,
        seed=seed,
        context=f"in {source}",
        dtype=dtype,
        allow_large=allow_large,
    )


def save_pretrained(
    module: RegNetModel | RegNetForImageClassification,
    variables: Mapping[str, Any],
    directory: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    *,
    overwrite: bool = False,
) -> Path:
    """Write config.json and model.safetensors (sharded above ``max_shard_size``) in the transformers layout, whole.

    A directory that already holds files is replaced only with ``overwrite=True``, once the new one is complete.
    """
    state = to_canonical((module, dict(variables)))
    return save_checkpoint(directory, module.config, state, max_shard_size, type(module).__name__, overwrite=overwrite)


def _lazy_leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The tree with each array as a LazyTensor that fetches just that array from the device when written."""

    def lazy_leaf(leaf: Any) -> LazyTensor:
        dtype = dtype_name(leaf.dtype)

        def stored() -> np.ndarray:  # bfloat16 as its bit patterns, as every stored form holds it
            value = np.asarray(jax.device_get(leaf))
            return value.view(np.uint16) if dtype == "bfloat16" else value

        return LazyTensor(tuple(leaf.shape), dtype, lambda: from_storage(stored(), dtype), "", stored)

    return {key: _lazy_leaves(value) if isinstance(value, Mapping) else lazy_leaf(value) for key, value in tree.items()}


def save_native(model: FlaxModel, path: str | os.PathLike) -> Path:
    """Write the variables as a Flax msgpack file (checked against the module first; streamed; atomic)."""
    module, variables = model
    check_native(variables, build_model_spec(module.config), has_head(module), context="to save")
    tree = _lazy_leaves(dict(variables))
    atomic_write(path, lambda temporary: write_msgpack(temporary, tree))
    return Path(path)


def _device_leaf(tensor: LazyTensor) -> jax.Array:
    return jnp.asarray(tensor.load(), dtype=jnp.bfloat16 if tensor.dtype == "bfloat16" else None)


def load_native(
    config: RegNetConfig,
    path: str | os.PathLike,
    with_head: bool | None = None,
    *,
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
) -> FlaxModel:
    """(module, variables) from a Flax msgpack file written by save_native, checked strictly.

    The file is read lazily (core's msgpack reader): names and shapes are checked before any
    value is read, then each array goes to the device in turn. ``with_head=None`` follows the
    file (a classifier's variables nest the trunk under ``regnet``). As with checkpoint
    directories, a classifier's file also loads as a trunk (``with_head=False``); a trunk's
    file loaded with a head reports the missing classifier.
    """
    path = Path(path)
    contents = read_msgpack(path)
    if contents.others:
        found = ", ".join(f"{name} ({kind})" for name, kind in list(contents.others.items())[:10])
        raise CheckpointError(f"{path} holds values that are not arrays ({found}); expected Flax variables only")
    variables: Any = nest(contents.tensors)
    if with_head is None:
        with_head = tree_has_head(variables)
    variables = fit_native_head(variables, with_head)
    check_memory(require_config(config, "regnet_flax.load_native"), with_head, allow_large, what="Flax model")
    check_native(variables, build_model_spec(config), with_head, context=f"in {path}")
    return model_class(with_head)(config, dtype=canonical_dtype(dtype)), jax.tree_util.tree_map(_device_leaf, variables)
