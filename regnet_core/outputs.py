"""Framework-neutral model outputs and the input and label rules every backend shares."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import PROBLEM_TYPES
from .errors import ConfigError, LabelsError
from .inputs import check_pixel_values

__all__ = [
    "BCE_WITH_LOGITS",
    "CROSS_ENTROPY",
    "IGNORE_INDEX",
    "MSE",
    "OUTPUT_FIELDS",
    "LossChoice",
    "ModelOutput",
    "check_class_targets",
    "check_labels",
    "check_pixel_values",
    "choose_loss",
    "labels_are_integers",
    "resolve_problem_type",
]

OUTPUT_FIELDS = ("loss", "logits", "last_hidden_state", "pooler_output", "hidden_states")


class ModelOutput(OrderedDict):
    """Outputs by attribute, key or position, like transformers' ModelOutput; None fields are left out."""

    def __init__(self, pairs: Any = (), /, **fields: Any) -> None:
        # Also constructible from (key, value) pairs, as tf.nest and copy rebuild mappings.
        fields = {**dict(pairs), **fields}
        unknown = set(fields) - set(OUTPUT_FIELDS)
        if unknown:
            raise TypeError(f"unknown output fields {sorted(unknown)}; expected some of {OUTPUT_FIELDS}")
        super().__init__((name, fields[name]) for name in OUTPUT_FIELDS if fields.get(name) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in OUTPUT_FIELDS:
            return self.get(name)
        raise AttributeError(name)

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple[Any, ...]:
        """The present fields in order (loss first when present)."""
        return tuple(self.values())


def resolve_problem_type(problem_type: str | None, num_labels: int, labels_are_integers: bool) -> str:
    """The loss to use, chosen as transformers chooses when the config leaves it unset."""
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        return problem_type
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and labels_are_integers:
        return "single_label_classification"
    return "multi_label_classification"


def check_labels(problem_type: str, labels_shape: Sequence[int | None], batch: int | None, num_labels: int) -> None:
    """Raise LabelsError unless the labels' shape fits the loss and the number of classes."""
    shape = tuple(labels_shape)
    if num_labels == 0:
        raise LabelsError("labels were given but the model has no classifier (num_labels is 0)")
    count = None if any(d is None for d in shape) else int(_product(shape))
    if problem_type == "single_label_classification" or (problem_type == "regression" and num_labels == 1):
        if batch is not None and count is not None and count != batch:
            raise LabelsError(
                f"{problem_type} expects one label per image, shape ({batch},); got labels of shape {shape}"
            )
    elif batch is not None and shape != (batch, num_labels) and None not in shape:
        raise LabelsError(f"{problem_type} expects labels of shape ({batch}, {num_labels}), got {shape}")


def _product(values: Sequence[int]) -> int:
    total = 1
    for value in values:
        total *= value
    return total


# ----------------------------------------------------------------------------- the loss for labels
# Chosen here once for every backend, as transformers' ForSequenceClassificationLoss chooses;
# a backend only calls its framework's function for the choice.

IGNORE_INDEX = -100  # cross-entropy leaves these targets out (PyTorch's default; transformers relies on it)
INTEGER_LABEL_DTYPES = ("int32", "int64")  # only these are class indices (transformers: torch.long, torch.int)
MSE, CROSS_ENTROPY, BCE_WITH_LOGITS = "mse", "cross_entropy", "binary_cross_entropy_with_logits"


@dataclass(frozen=True)
class LossChoice:
    """The loss a batch of labels gets, each a mean over the batch.

    ``function``: MSE, CROSS_ENTROPY (logits as (-1, num_labels), labels flattened, targets
    equal to ``ignore_index`` left out of sum and count) or BCE_WITH_LOGITS (labels as floats).
    ``squeeze``: regression with one label flattens logits and labels alike.
    """

    problem_type: str
    function: str
    squeeze: bool = False
    ignore_index: int | None = None


def labels_are_integers(dtype_name: str) -> bool:
    """True when labels of this dtype ("int64", "torch.int32", ...) are class indices: int32 and int64 only."""
    return str(dtype_name).rsplit(".", 1)[-1] in INTEGER_LABEL_DTYPES


def choose_loss(
    problem_type: str | None,
    num_labels: int,
    labels_dtype: str,
    labels_shape: Sequence[int | None],
    batch: int | None,
) -> LossChoice:
    """The loss for labels of this dtype and shape (problem type resolved, shape checked: ValueError names a misfit)."""
    resolved = resolve_problem_type(problem_type, num_labels, labels_are_integers(labels_dtype))
    check_labels(resolved, labels_shape, batch, num_labels)
    if resolved == "regression":
        return LossChoice(resolved, MSE, squeeze=num_labels == 1)
    if resolved == "single_label_classification":
        return LossChoice(resolved, CROSS_ENTROPY, ignore_index=IGNORE_INDEX)
    return LossChoice(resolved, BCE_WITH_LOGITS)


def class_targets_rule(num_labels: int) -> str:
    """What single-label targets must be, as errors say it (framework checks in graphs use it too)."""
    return f"single-label targets must be in [0, {num_labels}) or {IGNORE_INDEX}"


def check_class_targets(targets: Any, num_labels: int) -> None:
    """Raise LabelsError unless every single-label target is in [0, num_labels) or IGNORE_INDEX."""
    values = np.asarray(targets)
    bad = values[(values != IGNORE_INDEX) & ((values < 0) | (values >= num_labels))]
    if bad.size:
        raise LabelsError(f"{class_targets_rule(num_labels)}, got {bad[:5].tolist()}")
