"""Framework-neutral training rules shared by the three backends' fine-tuning loops.

One definition of each rule, so that PyTorch, Keras and Flax train the same way:

* **SGD** (``SGDConfig``) is PyTorch's ``torch.optim.SGD`` (dampening 0, no Nesterov):
  weight decay is added to the gradient *before* momentum, and the learning rate scales the
  momentum buffer, not the gradient inside it::

      g = grad + weight_decay * p
      buf = momentum * buf + g          (buf starts at 0, so the first buf is g)
      p = p - lr_t * buf

  Keras' own ``SGD(weight_decay=...)`` decays the weights apart from the gradient
  (decoupled) and keeps ``lr * g`` inside its velocity; both differ from this once the
  weights or the learning rate change between steps. ``regnet_tf.training.SGD`` and
  ``regnet_flax.training.sgd`` (``optax.add_decayed_weights`` before ``optax.trace``,
  then the learning rate) implement the rule above.
* **Learning rates** are a table, one value per step (``learning_rates``), that each
  framework indexes by its step counter.
* **Batches**: ``epoch_batches`` gives every framework the same seeded order.
* **Accuracy of a training step** (``update_errors``): the error of a float32 step against
  a float64 reference, relative to the size of the reference's update of each tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import RegNetConfig
from .specs import build_model_spec
from .weights import BN_COUNT, parameter_table

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class SGDConfig:
    """SGD with momentum and weight decay, PyTorch's rule (see the module docstring)."""

    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if problems:
            raise ValueError("invalid SGDConfig: " + "; ".join(problems))


# The fine-tuning default (frozen, so safe as a default argument).
DEFAULT_SGD = SGDConfig()


def learning_rates(
    base: float, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0, final_fraction: float = 0.0
) -> np.ndarray:
    """The learning rate of each step 0 .. total_steps - 1 (float64).

    "constant" keeps ``base``; "cosine" goes from ``base`` down to ``base * final_fraction``
    on a half cosine. ``warmup_steps`` ramp linearly from ``base / warmup_steps`` first.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}), got {warmup_steps!r}")
    steps = np.arange(total_steps, dtype=np.float64)
    if schedule == "constant":
        rates = np.full(total_steps, float(base))
    else:
        decay_steps = total_steps - warmup_steps
        progress = np.clip((steps - warmup_steps) / decay_steps, 0.0, 1.0)
        rates = base * (final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(math.pi * progress)))
    if warmup_steps:
        ramp = (steps[:warmup_steps] + 1) / warmup_steps
        rates[:warmup_steps] = base * ramp
    return rates


def epoch_batches(num_examples: int, batch_size: int, epoch: int, seed: int = 0) -> list[np.ndarray]:
    """The index arrays of one epoch's batches: a permutation seeded by (seed, epoch), incomplete last batch dropped.

    Dropping it keeps every batch one shape (one compiled step) and never leaves BatchNorm a
    batch of one.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs a batch), got {batch_size!r}")
    if num_examples < batch_size:
        raise ValueError(f"need at least one full batch: {num_examples} examples < batch_size {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    count = num_examples // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (``epoch_batches`` drops the incomplete one)."""
    return num_examples // batch_size


def fit_plan(
    num_examples: int, batch_size: int, epochs: int, sgd: SGDConfig, schedule: str = "cosine", warmup_steps: int = 0
) -> tuple[int, np.ndarray]:
    """(steps per epoch, learning rate of every step) of a ``fit``; bad arguments raise one ValueError naming each."""
    problems = []
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        problems.append(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 2:
        problems.append(f"batch_size must be an integer >= 2 (BatchNorm needs a batch), got {batch_size!r}")
    elif num_examples < batch_size:
        problems.append(f"need at least one full batch: {num_examples} training examples < batch_size {batch_size}")
    if not isinstance(sgd, SGDConfig):
        problems.append(f"sgd must be an SGDConfig, got {type(sgd).__name__}")
    if problems:
        raise ValueError("cannot fit: " + "; ".join(problems))
    per_epoch = steps_per_epoch(num_examples, batch_size)
    return per_epoch, learning_rates(sgd.learning_rate, epochs * per_epoch, schedule, warmup_steps)


@dataclass
class History:
    """Per-epoch mean training loss and held-out loss / accuracy, every step's loss, the wall time of ``fit`` (s)."""

    loss: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest logit is the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (n, classes) and labels (n,), got {logits.shape} and {labels.shape}")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def score(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits against integer class labels; the loss from a float64 log-softmax."""
    accuracy_value = accuracy(logits, labels)  # checks the shapes
    values = np.asarray(logits, np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.asarray(labels, np.int64)[:, None], axis=-1)
    return -float(picked.mean()), accuracy_value


def digits_config(num_labels: int = 10, **changes: Any) -> RegNetConfig:
    """The small RegNetY the fine-tuning examples train on digits (58k parameters, 0.63 MFLOPs at 32x32).

    From the paper's design space: depth 6, w0 16, wa 12, wm 2, group width 8, SE 0.25,
    stem width 16: widths (16, 32, 64), depths (1, 2, 3).
    """
    from .datasets import DIGITS_CLASSES

    fields: dict[str, Any] = {"num_labels": num_labels}
    if num_labels == len(DIGITS_CLASSES):
        fields["id2label"] = dict(enumerate(DIGITS_CLASSES))
        fields.pop("num_labels")
    fields.update(changes)
    return RegNetConfig.from_design(6, 16, 12.0, 2.0, 8, se_ratio=0.25, stem_width=16, **fields)


# ----------------------------------------------------------------------------- step accuracy


def trained_tensor_names(config: RegNetConfig, with_head: bool = True) -> list[str]:
    """Canonical names a training step changes: every parameter and BN running statistic (not num_batches_tracked)."""
    return [t.name for t in parameter_table(build_model_spec(config), with_head) if t.kind != BN_COUNT]


def update_errors(
    initial: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    names: Iterable[str] | None = None,
) -> dict[str, float]:
    """Per tensor, max |candidate - reference| / max |reference - initial|: the error relative to the update.

    ``reference`` is the float64 result of the same steps from ``initial``; a tensor the
    reference leaves unchanged is measured against 1e-12 (so any change shows).
    """
    names = list(reference if names is None else names)
    errors = {}
    for name in names:
        ref = np.asarray(reference[name], np.float64)
        update = np.max(np.abs(ref - np.asarray(initial[name], np.float64)), initial=0.0)
        error = np.max(np.abs(np.asarray(candidate[name], np.float64) - ref), initial=0.0)
        errors[name] = float(error / max(update, 1e-12))
    return errors


# PyTorch's float32 step is the yardstick: a framework passes when its error against the float64
# reference is at most this many times PyTorch float32's, for the worst tensor and for the median one.
STEP_ERROR_FACTOR = 4.0


def step_accuracy_problems(
    errors: Mapping[str, float], baseline: Mapping[str, float], factor: float = STEP_ERROR_FACTOR
) -> list[str]:
    """What breaks the rule "as accurate as PyTorch float32" (empty when it holds).

    ``errors`` and ``baseline`` are ``update_errors`` of a framework's float32 steps and of
    PyTorch's float32 steps, both against PyTorch's float64 steps from the same weights and
    batch. The rule: the largest error over all tensors is at most ``factor`` times
    PyTorch float32's largest, and the median error at most ``factor`` times its median.
    """
    if set(errors) != set(baseline):
        raise ValueError(
            f"errors and baseline must cover the same tensors; differ in {sorted(set(errors) ^ set(baseline))[:5]}"
        )
    problems = []
    for label, reduce in (("largest", np.max), ("median", np.median)):
        got = float(reduce(list(errors.values())))
        limit = factor * float(reduce(list(baseline.values())))
        if not got <= limit:
            worst = max(errors, key=errors.get)
            problems.append(
                f"{label} error relative to the update {got:.3g} > {factor:g} x PyTorch float32's {limit / factor:.3g} "
                f"(worst tensor {worst}: {errors[worst]:.3g})"
            )
    return problems
