"""Fine-tuning in PyTorch: a plain training loop with ``torch.optim.SGD`` and a tqdm progress bar.

The rules (SGD with weight decay added to the gradient before momentum, the learning-rate
table, the batch order) come from ``regnet_core.training``, so a run here takes the same
steps as ``regnet_tf.training.fit`` and ``regnet_flax.training.fit``.

    from regnet_core.datasets import load_digits_rgb
    from regnet_core.training import digits_config
    from regnet_pt import RegNetForImageClassification
    from regnet_pt.training import fit

    model = RegNetForImageClassification(digits_config())
    history = fit(model, load_digits_rgb("train"), load_digits_rgb("test"), epochs=12)
    model.save_pretrained("digits-pt")
"""

from __future__ import annotations

import time

import numpy as np
import torch

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


def make_optimizer(model: torch.nn.Module, sgd: SGDConfig = DEFAULT_SGD) -> torch.optim.SGD:
    """``torch.optim.SGD`` over every parameter with ``sgd``'s learning rate, momentum and (coupled) weight decay."""
    return torch.optim.SGD(
        model.parameters(),
        lr=sgd.learning_rate,
        momentum=sgd.momentum,
        weight_decay=sgd.weight_decay,
        dampening=0.0,
        nesterov=False,
    )


def train_step(
    model: RegNetForImageClassification,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    learning_rate: float | None = None,
) -> torch.Tensor:
    """One step in training mode (BatchNorm on batch statistics, running ones updated); returns the loss (detached).

    ``learning_rate`` (if given) is set on every parameter group first.
    """
    model.train()
    if learning_rate is not None:
        for group in optimizer.param_groups:
            group["lr"] = float(learning_rate)
    optimizer.zero_grad(set_to_none=True)
    loss = model(images, labels=labels).loss
    loss.backward()
    optimizer.step()
    return loss.detach()


def predict_logits(model: RegNetForImageClassification, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of an NCHW numpy batch, computed ``batch_size`` at a time (the model is left in eval mode)."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            outputs.append(model(batch).logits.float().numpy())
    return np.concatenate(outputs)


def evaluate(model: RegNetForImageClassification, split: ImageSplit, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model in eval mode on ``split`` (NCHW images)."""
    return score(predict_logits(model, split.images, batch_size), split.labels)


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
) -> History:
    """Train ``model`` on ``train`` (NCHW) for ``epochs``; after each epoch score it on ``val``; returns the History.

    SGD per ``sgd`` with the learning rate of ``regnet_core.training.learning_rates`` per
    step and the batches of ``epoch_batches(seed)``; a tqdm bar per epoch when ``progress``.
    The model is left in eval mode.
    """
    from tqdm.auto import tqdm

    per_epoch, rates = fit_plan(len(train), batch_size, epochs, sgd, schedule, warmup_steps)
    optimizer = make_optimizer(model, sgd)
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    history = History()
    started = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        batches = epoch_batches(len(train), batch_size, epoch, seed)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True)
        losses = []
        for index in bar:
            select = torch.from_numpy(index)
            loss = train_step(model, optimizer, images[select], labels[select], rates[step]).item()
            losses.append(loss)
            step += 1
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        history.step_loss.extend(losses)
        history.loss.append(float(np.mean(losses)))
        if val is not None:
            val_loss, val_accuracy = evaluate(model, val)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_accuracy)
            if progress:
                bar.write(f"epoch {epoch + 1}: loss {history.loss[-1]:.4f}, held-out accuracy {val_accuracy:.4f}")
    model.eval()
    history.seconds = time.perf_counter() - started
    return history
