"""The parameter-sharding plan (regnet_core.sharding) laid over a ``jax.sharding`` mesh.

Each parameter of at least ``MIN_SHARDED_ELEMENTS`` values is split along its output-channel
axis (the last of Flax's HWIO / (in, out) kernels) over one mesh axis; smaller ones are
replicated. ``NamedSharding`` needs the split axis to divide evenly, so an axis the device
count does not divide is laid out padded to the next multiple (e.g. 11110 channels as 11112
over 8 devices); the padded rows are zeros for the step to slice off. Works on abstract
shapes (``jax.eval_shape``), so a plan for regnet-y-10b-seer allocates nothing.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from regnet_core.sharding import TensorShard, shard_tensor


def parameter_shard(shape: tuple[int, ...], mesh: Mesh, axis_name: str) -> TensorShard:
    """The plan's TensorShard for a Flax (channels-last) parameter over the mesh axis ``axis_name``."""
    return shard_tensor(shape, mesh.shape[axis_name], layout="channels_last")


def sharded_parameter_shapes(params: Any, mesh: Mesh, axis_name: str = "fsdp") -> Any:
    """A tree of ``jax.ShapeDtypeStruct`` (padded shape, NamedSharding) for a tree of parameters or their shapes."""

    def lay(leaf: Any) -> jax.ShapeDtypeStruct:
        shard = parameter_shard(tuple(leaf.shape), mesh, axis_name)
        spec = [None] * len(shard.shape)
        if shard.axis is not None:
            spec[shard.axis] = axis_name
        return jax.ShapeDtypeStruct(shard.padded_shape, leaf.dtype, sharding=NamedSharding(mesh, P(*spec)))

    return jax.tree_util.tree_map(lay, params)
