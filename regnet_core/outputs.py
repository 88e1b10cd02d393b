"""Framework-neutral model outputs and the input and label rules every backend shares."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .config import PROBLEM_TYPES

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


def check_pixel_values(
    shape: Sequence[int | None], is_floating: bool, dtype_name: str, num_channels: int, layout: str
) -> None:
    """Raise ValueError unless a batch has rank 4, a floating dtype and ``num_channels`` channels.

    ``layout`` is "NCHW" or "NHWC". A batch in the other layout is recognised and named.
    """
    if len(shape) != 4:
        raise ValueError(
            f"pixel_values must be a 4-D {layout} batch (batch, {'channels, height, width' if layout == 'NCHW' else 'height, width, channels'}), "
            f"got a {len(shape)}-D tensor of shape {tuple(shape)}"
        )
    if not is_floating:
        raise ValueError(f"pixel_values must be floating point, got dtype {dtype_name}")
    channel_axis, other_axis, other_layout = (1, 3, "NHWC") if layout == "NCHW" else (3, 1, "NCHW")
    channels = shape[channel_axis]
    if channels is not None and channels != num_channels:
        hint = ""
        if shape[other_axis] == num_channels:
            hint = f"; it looks like an {other_layout} batch, expected {layout}"
            if layout == "NHWC":
                hint += " (transpose with (0, 2, 3, 1))"
            else:
                hint += " (transpose with (0, 3, 1, 2))"
        raise ValueError(
            f"pixel_values must have {num_channels} channels on axis {channel_axis} ({layout}), "
            f"got shape {tuple(shape)}{hint}"
        )


def resolve_problem_type(problem_type: str | None, num_labels: int, labels_are_integers: bool) -> str:
    """The loss to use, chosen as transformers chooses when the config leaves it unset."""
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        return problem_type
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and labels_are_integers:
        return "single_label_classification"
    return "multi_label_classification"


def check_labels(problem_type: str, labels_shape: Sequence[int | None], batch: int | None, num_labels: int) -> None:
    """Raise ValueError unless the labels' shape fits the loss and the number of classes."""
    shape = tuple(labels_shape)
    if num_labels == 0:
        raise ValueError("labels were given but the model has no classifier (num_labels is 0)")
    count = None if any(d is None for d in shape) else int(_product(shape))
    if problem_type == "single_label_classification" or (problem_type == "regression" and num_labels == 1):
        if batch is not None and count is not None and count != batch:
            raise ValueError(
                f"{problem_type} expects one label per image, shape ({batch},); got labels of shape {shape}"
            )
    elif batch is not None and shape != (batch, num_labels) and None not in shape:
        raise ValueError(f"{problem_type} expects labels of shape ({batch}, {num_labels}), got {shape}")


def _product(values: Sequence[int]) -> int:
    total = 1
    for value in values:
        total *= value
    return total
