"""Fine-tuning with Keras: ``model.fit`` with PyTorch's SGD rule, Keras' own progress bar.

Keras' ``keras.optimizers.SGD`` is not PyTorch's: its ``weight_decay`` shrinks the weights
apart from the gradient (decoupled, never entering the momentum), and its velocity holds
``lr * g``, so a changing learning rate acts differently. ``SGD`` here is PyTorch's rule
(``regnet_core.training``): the decay is added to the gradient, the momentum buffer
accumulates the gradient, the learning rate scales the buffer.

    from regnet_core.datasets import load_digits_rgb
    from regnet_core.training import digits_config
    import regnet_tf
    from regnet_tf.training import fit

    model = regnet_tf.RegNetForImageClassification(digits_config())
    train = load_digits_rgb("train", data_format="channels_last")
    test = load_digits_rgb("test", data_format="channels_last")
    history = fit(model, train, test, epochs=12)  # model.compile + model.fit
    model.save_pretrained("digits-keras")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from regnet_core.datasets import ImageSplit
from regnet_core.training import (
    DEFAULT_SGD,
    History,
    SGDConfig,
    epoch_batches,
    fit_plan,
    score,
)

from .modeling import RegNetForImageClassification


@keras.saving.register_keras_serializable(package="regnet_tf")
class SGD(keras.optimizers.Optimizer):
    """SGD with momentum and weight decay as ``torch.optim.SGD`` computes them (dampening 0, no Nesterov).

    Per variable: ``g = grad + weight_decay * w``, ``buf = momentum * buf + g``,
    ``w = w - lr * buf``. ``learning_rate`` may be a float or a Keras schedule
    (e.g. ``LearningRateTable``). Keras' decoupled ``weight_decay`` is not used.
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        name: str = "regnet_sgd",
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        SGDConfig(1.0, momentum, weight_decay)  # the shared validation of momentum and decay
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)

    def build(self, variables: Sequence[Any]) -> None:
        """One momentum buffer per trainable variable (none without momentum)."""
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """PyTorch's SGD update of one variable."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.coupled_weight_decay, variable.dtype), variable))
        if self.momentum:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, ops.add(ops.multiply(buffer, ops.cast(self.momentum, variable.dtype)), gradient))
            gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self) -> dict[str, Any]:
        """Keras config (``weight_decay`` is the coupled, PyTorch-style decay)."""
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.coupled_weight_decay)
        return config


@keras.saving.register_keras_serializable(package="regnet_tf")
class LearningRateTable(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step ``i`` is ``rates[i]`` (the last one after the table ends)."""

    def __init__(self, rates: Sequence[float]) -> None:
        self.rates = [float(rate) for rate in rates]
        if not self.rates:
            raise ValueError("LearningRateTable needs at least one learning rate, got an empty table")

    def __call__(self, step: Any) -> Any:
        table = ops.convert_to_tensor(self.rates, dtype="float32")
        index = ops.minimum(ops.cast(step, "int32"), len(self.rates) - 1)
        return ops.take(table, index)

    def get_config(self) -> dict[str, Any]:
        """Keras config."""
        return {"rates": list(self.rates)}


def make_optimizer(sgd: SGDConfig = DEFAULT_SGD, rates: Sequence[float] | None = None) -> SGD:
    """``SGD`` with ``sgd``'s momentum and decay; the learning rate from ``rates`` per step, else constant."""
    learning_rate = sgd.learning_rate if rates is None else LearningRateTable(rates)
    return SGD(learning_rate, momentum=sgd.momentum, weight_decay=sgd.weight_decay)


def training_dataset(train: ImageSplit, batch_size: int, epochs: int, seed: int = 0) -> tf.data.Dataset:
    """Every epoch's batches in ``regnet_core.training.epoch_batches`` order, one after the other (NHWC)."""
    order = np.concatenate(
        [np.concatenate(epoch_batches(len(train), batch_size, epoch, seed)) for epoch in range(epochs)]
    )
    images, labels = tf.constant(train.images), tf.constant(train.labels)
    return (
        tf.data.Dataset.from_tensor_slices(order)
        .batch(batch_size, drop_remainder=True)
        .map(lambda index: (tf.gather(images, index), tf.gather(labels, index)))
        .prefetch(2)
    )


class StepLosses(keras.callbacks.Callback):
    """Records every training step's loss (Keras logs the epoch's running mean; each step's value is recovered from it)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self._mean, self._count = 0.0, 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._mean, self._count = 0.0, 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        mean = float((logs or {})["loss"])
        self._count += 1
        self.losses.append(self._count * mean - (self._count - 1) * self._mean)
        self._mean = mean


def evaluate(model: RegNetForImageClassification, split: ImageSplit, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model in inference mode on ``split`` (NHWC images)."""
    return score(np.asarray(model.predict(split.images, batch_size=batch_size, verbose=0)), split.labels)


def fit(
    model: RegNetForImageClassification,
    train: ImageSplit,
    val: ImageSplit | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    sgd: SGDConfig = DEFAULT_SGD,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    seed: int = 0,
    progress: bool = True,
    jit_compile: Any = "auto",
) -> History:
    """Compile ``model`` with ``SGD`` and the config's labels loss, then ``model.fit`` on ``train`` (NHWC).

    Same learning rates and batches as ``regnet_pt.training.fit`` (see regnet_core.training);
    held-out loss and accuracy on ``val`` after every epoch; Keras' progress bar when ``progress``.
    """
    per_epoch, rates = fit_plan(len(train), batch_size, epochs, sgd, schedule, warmup_steps)
    model.compile(optimizer=make_optimizer(sgd, rates), metrics=["accuracy"], jit_compile=jit_compile)
    dataset = training_dataset(train, batch_size, epochs, seed)
    validation = None if val is None else (val.images, val.labels)
    step_losses = StepLosses()
    started = time.perf_counter()
    result = model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        validation_data=validation,
        validation_batch_size=256,
        shuffle=False,
        callbacks=[step_losses],
        verbose=1 if progress else 0,
    ).history
    seconds = time.perf_counter() - started
    return History(
        loss=[float(v) for v in result["loss"]],
        step_loss=step_losses.losses,
        val_loss=[float(v) for v in result.get("val_loss", [])],
        val_accuracy=[float(v) for v in result.get("val_accuracy", [])],
        seconds=seconds,
    )
