"""Keras fit under MirroredStrategy over 2 logical CPUs against fit on one device, same global batches.

``--keras-loss`` adds a run compiled with a Keras loss (the default compiles none: the labels loss).
"""

from __future__ import annotations

import sys

import tensorflow as tf

# Before anything initialises TensorFlow's devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402

from regnet_tf import backend as tf_backend  # noqa: E402
from tests.distributed.common import (  # noqa: E402
    GLOBAL_BATCH,
    LEARNING_RATE,
    MOMENTUM,
    batches,
    compare,
    initial_state,
    report,
    small_config,
)


def fit(strategy: tf.distribute.Strategy, sync: bool = True, keras_loss: bool = False) -> tuple[dict, list[float]]:
    """Canonical weights after fit (SGD with momentum, no shuffling) and the loss it reported."""
    config = small_config()
    images, labels = batches()
    with strategy.scope():
        model = tf_backend.from_canonical(config, initial_state(config)).sync_batchnorm(sync)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if keras_loss else None
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), loss=loss)
    history = model.fit(images, labels, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0).history
    return tf_backend.to_canonical(model), history["loss"]


def main() -> None:
    config = small_config()
    initial = initial_state(config)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, single_loss = fit(tf.distribute.get_strategy())
    results = {"replicas": mirrored.num_replicas_in_sync, "single_loss": single_loss}
    variants = {"synced": {}, "unsynced": {"sync": False}}
    if "--keras-loss" in sys.argv:
        variants["synced_keras_loss"] = {"keras_loss": True}
    for name, options in variants.items():
        weights, loss = fit(mirrored, **options)
        results[name] = {**compare(single, weights, initial), "loss": loss}
    report(results)


if __name__ == "__main__":
    main()
