"""Fine-tuning in Flax with optax: a ``TrainState`` carrying params, batch_stats and the optimizer state.

``make_optimizer`` is PyTorch's SGD rule in optax (``regnet_core.training``): ``add_decayed_weights``
adds the decay to the gradient *before* ``trace`` accumulates the momentum, and the learning
rate (a per-step table) scales the result. (``optax.sgd`` alone has no decay; putting
``add_decayed_weights`` after it, or using ``optax.adamw``-style decoupled decay, is a
different rule.)

    from regnet_core.datasets import load_digits_rgb
    from regnet_core.training import digits_config
    import regnet_flax
    from regnet_flax.training import fit

    module, variables = regnet_flax.init(digits_config())
    train = load_digits_rgb("train", data_format="channels_last")
    test = load_digits_rgb("test", data_format="channels_last")
    variables, history = fit(module, variables, train, test, epochs=12)
    regnet_flax.save_pretrained(module, variables, "digits-flax")
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

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


class TrainState(train_state.TrainState):
    """flax's TrainState (step, apply_fn, params, tx, opt_state) plus the BatchNorm running statistics."""

    batch_stats: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": ..., "batch_stats": ...}``, what ``module.apply`` and ``save_pretrained`` take."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(
    config: SGDConfig = DEFAULT_SGD, rates: Sequence[float] | None = None
) -> optax.GradientTransformation:
    """PyTorch's SGD in optax: decay added to the gradient, then momentum, then the learning rate.

    ``rates`` gives the learning rate of each step (the last one after the table ends);
    without it the rate is ``config.learning_rate`` throughout.
    """
    if rates is None:
        learning_rate: float | Callable[[Any], Any] = config.learning_rate
    else:
        table = jnp.asarray(np.asarray(rates, np.float32))

        def learning_rate(count: Any) -> Any:
            return table[jnp.minimum(count, table.shape[0] - 1)]

    parts = []
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.momentum:
        parts.append(optax.trace(decay=config.momentum, nesterov=False))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def create_train_state(
    module: RegNetForImageClassification, variables: Mapping[str, Any], tx: optax.GradientTransformation
) -> TrainState:
    """A TrainState for ``module`` starting from ``variables`` (``{"params", "batch_stats"}``)."""
    return TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {})
    )


def _train_step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, jax.Array]:
    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        # The model's own loss for ``labels`` (config.problem_type), as regnet_pt's ``labels=``.
        outputs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            labels=labels,
            mutable=["batch_stats"],
        )
        return outputs.loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


train_step = jax.jit(_train_step, donate_argnums=(0,))
train_step.__doc__ = """One jitted step in training mode: (state, NHWC images, int labels) -> (new state, loss).

BatchNorm normalises with the batch's statistics and its running statistics move (PyTorch's
update, unbiased variance); the gradients go through ``state.tx``. The old state is donated.
"""


@functools.partial(jax.jit, static_argnums=0)
def _logits(module: RegNetForImageClassification, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    return module.apply(variables, images).logits


def predict_logits(
    module: RegNetForImageClassification, variables: Mapping[str, Any], images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Inference-mode logits of an NHWC numpy batch, ``batch_size`` at a time (jitted once per module and shape)."""
    return np.concatenate(
        [
            np.asarray(_logits(module, variables, images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
    )


def evaluate(
    module: RegNetForImageClassification, variables: Mapping[str, Any], split: ImageSplit, batch_size: int = 256
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in inference mode on ``split`` (NHWC images)."""
    return score(predict_logits(module, variables, split.images, batch_size), split.labels)


def fit(
    module: RegNetForImageClassification,
    variables: Mapping[str, Any],
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
) -> tuple[dict[str, Any], History]:
    """Train on ``train`` (NHWC) with ``make_optimizer(sgd)`` and a jitted ``train_step``; returns (new variables, History).

    Same learning rates and batches as ``regnet_pt.training.fit`` (see regnet_core.training);
    held-out loss and accuracy on ``val`` after every epoch; a tqdm bar per epoch when ``progress``.
    """
    from tqdm.auto import tqdm

    per_epoch, rates = fit_plan(len(train), batch_size, epochs, sgd, schedule, warmup_steps)
    # Copies: the step donates its state, and the caller keeps its variables.
    state = create_train_state(module, jax.tree.map(jnp.array, dict(variables)), make_optimizer(sgd, rates))
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    history = History()
    started = time.perf_counter()
    for epoch in range(epochs):
        batches = epoch_batches(len(train), batch_size, epoch, seed)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True)
        losses = []
        for index in bar:
            state, loss = train_step(state, images[index], labels[index])
            losses.append(loss)
            if progress:
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        losses = [float(loss) for loss in jax.device_get(losses)]
        history.step_loss.extend(losses)
        history.loss.append(float(np.mean(losses)))
        if val is not None:
            val_loss, val_accuracy = evaluate(module, state.variables, val)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_accuracy)
            if progress:
                bar.write(f"epoch {epoch + 1}: loss {history.loss[-1]:.4f}, held-out accuracy {val_accuracy:.4f}")
    history.seconds = time.perf_counter() - started
    return state.variables, history
