"""Data-parallel RegNet training in Flax with jax.sharding: the batch split over a device mesh.

The train step is the ordinary one-device step under ``jax.jit``; with the variables
replicated and the batch sharded, BatchNorm's batch mean is the global batch's and XLA adds
the all-reduces (docs/SCALING.md). On a CPU the script asks for 8 host devices:
``python examples/sharded_flax.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before jax initialises

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from regnet_core import RegNetConfig  # noqa: E402
from regnet_flax import RegNetForImageClassification  # noqa: E402


def main() -> None:
    config = RegNetConfig(hidden_sizes=[16, 32], depths=[1, 2], groups_width=8, embedding_size=16, num_labels=4)
    model = RegNetForImageClassification(config)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated, batch_split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    optimizer = optax.sgd(0.1, momentum=0.9)
    params, batch_stats = jax.device_put((variables["params"], variables["batch_stats"]), replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                labels=labels,
                mutable=["batch_stats"],
            )
            return outputs.loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    rng = np.random.default_rng(1)
    print(f"{jax.device_count()} devices")
    for index in range(5):
        images = jax.device_put(rng.normal(size=(16, 32, 32, 3)).astype(np.float32), batch_split)
        labels = jax.device_put(rng.integers(0, 4, size=16).astype(np.int32), batch_split)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, images, labels)
        print(f"step {index}: loss {float(loss):.4f}")


if __name__ == "__main__":
    main()
