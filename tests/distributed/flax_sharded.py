"""Flax data-parallel over 8 host devices (jax.sharding) against one device, same global batches.

Three data-parallel forms: jit over a batch sharded on a Mesh (the sharding-native form, no
axis name: the batch mean of a sharded array is already the global one), shard_map with
BatchNorm's ``axis_name`` (statistics pmean'd), and shard_map without it (each device
normalises its own share: the step that differs; with ``--unsynced``).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from regnet_flax import backend as flax_backend  # noqa: E402
from regnet_flax.modeling import RegNetForImageClassification  # noqa: E402
from tests.distributed.common import (  # noqa: E402
    GLOBAL_BATCH,
    LEARNING_RATE,
    MOMENTUM,
    STEPS,
    batches,
    compare,
    initial_state,
    report,
    small_config,
)

AXIS = "data"


def make_step(module: RegNetForImageClassification, optimizer: optax.GradientTransformation, axis: str | None = None):
    """One SGD step on (params, batch_stats, opt_state); with ``axis`` (in shard_map) the loss is averaged over it."""

    def loss_and_stats(params, batch_stats, images, labels):
        outputs, updates = module.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, labels=labels, mutable=["batch_stats"]
        )
        # Per device the loss is the mean of its share; the global batch's is their mean. Its
        # gradient with respect to the replicated parameters is then the global one (shard_map
        # sums the cotangents of replicated inputs over the axis).
        loss = outputs.loss if axis is None else jax.lax.pmean(outputs.loss, axis)
        return loss, updates["batch_stats"]

    def step(params, batch_stats, opt_state, images, labels):
        (loss, batch_stats), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
            params, batch_stats, images, labels
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step


def train(step, params, batch_stats, put_batch=lambda array: array):
    """STEPS steps over the global batches; (params, batch_stats, losses)."""
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    opt_state = optimizer.init(params)
    images, labels = batches()
    losses = []
    for index in range(STEPS):
        batch = slice(index * GLOBAL_BATCH, (index + 1) * GLOBAL_BATCH)
        params, batch_stats, opt_state, loss = step(
            params, batch_stats, opt_state, put_batch(images[batch]), put_batch(labels[batch].astype(np.int32))
        )
        losses.append(float(loss))
    return params, batch_stats, losses


def canonical(module, params, batch_stats) -> dict[str, np.ndarray]:
    variables = jax.tree_util.tree_map(np.asarray, {"params": params, "batch_stats": batch_stats})
    return flax_backend.to_canonical((module, variables))


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    config = small_config()
    initial = initial_state(config)
    module, variables = flax_backend.from_canonical(config, initial)
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    params, batch_stats = variables["params"], variables["batch_stats"]

    single = train(jax.jit(make_step(module, optimizer)), params, batch_stats)
    reference = canonical(module, *single[:2])
    results = {"devices": jax.device_count(), "single_loss": single[2]}

    mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    put = jax.device_put
    # Sharding-native: parameters replicated, the batch split over the mesh, one jit.
    native = train(
        jax.jit(make_step(module, optimizer)),
        put(params, replicated),
        put(batch_stats, replicated),
        (lambda array: put(array, sharded)),
    )
    results["sharded_jit"] = {**compare(reference, canonical(module, *native[:2]), initial), "loss": native[2]}
    results["sharded_jit"]["batch_sharded"] = not sharded.is_fully_replicated

    # shard_map: per-device code; BatchNorm statistics pmean'd over the axis (axis_name) or not.
    variants = [("shard_map_axis_name", AXIS)]
    if "--unsynced" in sys.argv:
        variants.append(("shard_map_unsynced", None))
    for name, axis_name in variants:
        per_device = RegNetForImageClassification(config, axis_name=axis_name)
        step = make_step(per_device, optimizer, axis=AXIS)
        if axis_name is None:  # statistics differ per device: keep device 0's, as a checkpoint would
            local = step

            def step(*args, local=local):
                params, stats, opt_state, loss = local(*args)
                first = jax.lax.axis_index(AXIS) == 0
                stats = jax.tree_util.tree_map(lambda v: jax.lax.psum(jnp.where(first, v, 0.0), AXIS), stats)
                return params, stats, opt_state, loss

        mapped = jax.jit(
            jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS)), out_specs=(P(), P(), P(), P()))
        )
        trained = train(mapped, put(params, replicated), put(batch_stats, replicated), lambda a: put(a, sharded))
        results[name] = {**compare(reference, canonical(module, *trained[:2]), initial), "loss": trained[2]}
    report(results)


if __name__ == "__main__":
    main()
