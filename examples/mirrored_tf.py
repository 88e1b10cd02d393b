"""Data-parallel RegNet training with Keras fit under tf.distribute.MirroredStrategy.

On a CPU-only machine the script splits the CPU into two logical devices; on GPUs the
strategy takes them all. Our BatchNorm synchronises its statistics across replicas by
default, so this fit takes the steps fit on one device takes (docs/SCALING.md).
``python examples/mirrored_tf.py``
"""

from __future__ import annotations

import tensorflow as tf

if not tf.config.list_physical_devices("GPU"):  # must happen before TensorFlow initialises its devices
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

from regnet_core import RegNetConfig  # noqa: E402
from regnet_tf import RegNetForImageClassification  # noqa: E402


def main() -> None:
    strategy = tf.distribute.MirroredStrategy()
    print(f"{strategy.num_replicas_in_sync} replicas")
    config = RegNetConfig(hidden_sizes=[16, 32], depths=[1, 2], groups_width=8, embedding_size=16, num_labels=4)
    with strategy.scope():
        model = RegNetForImageClassification(config)  # .sync_batchnorm(False) for per-replica statistics
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))  # no loss: the labels loss
    rng = np.random.default_rng(1)
    images = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=64)
    model.fit(images, labels, batch_size=16, epochs=2, verbose=2)


if __name__ == "__main__":
    main()
