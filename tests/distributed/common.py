"""What the distributed workers share: the tiny model, the global batch, the comparison."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from regnet_core import RegNetConfig, build_model_spec, random_state

GLOBAL_BATCH = 8
STEPS = 2
LEARNING_RATE = 0.1
MOMENTUM = 0.9


def small_config() -> RegNetConfig:
    """Two stages with grouped convs, SE and projections: every layer kind, trained in seconds.

    SiLU rather than ReLU: a ReLU input within float32 rounding of zero can land on the other
    side when a data-parallel engine sums in another order, and then one value's gradient
    switches on or off (seen with ReLU on these very batches: one pre-activation at -4e-7 on one
    device, +6e-8 over eight, moving a weight by 5e-5). With a smooth activation the
    comparison measures the engines, not where a kink happens to fall.
    """
    return RegNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        groups_width=8,
        layer_type="y",
        hidden_act="silu",
        num_labels=4,
    )


def initial_state(config: RegNetConfig) -> dict[str, np.ndarray]:
    """Seeded canonical weights with randomised BatchNorm statistics and a non-trivial head."""
    return random_state(build_model_spec(config), seed=0)


def batches(steps: int = STEPS, global_batch: int = GLOBAL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` global batches of NHWC 32x32 images and their class labels, concatenated."""
    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 1.0, size=(steps * global_batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=steps * global_batch).astype(np.int64)
    return images, labels


def compare(
    reference: dict[str, np.ndarray], other: dict[str, np.ndarray], initial: dict[str, np.ndarray]
) -> dict[str, float]:
    """Worst absolute difference over all tensors, over the largest change the reference made, and per tensor.

    Both are taken over canonical names; num_batches_tracked is skipped (an integer counter).
    """
    names = [name for name in reference if not name.endswith("num_batches_tracked")]
    missing = sorted(set(names) ^ {name for name in other if not name.endswith("num_batches_tracked")})
    if missing:
        raise AssertionError(f"tensors differ in names: {missing[:5]}")
    differences = {name: float(np.max(np.abs(reference[name] - other[name]))) for name in names}
    updates = {name: float(np.max(np.abs(reference[name] - initial[name]))) for name in names}
    worst, update = max(differences.values()), max(updates.values())
    return {
        "max_abs_difference": worst,
        "largest_update": update,
        "difference_over_update": worst / update,
        # per tensor: how far from the reference, in units of the reference's own change
        "worst_tensor_ratio": max(differences[name] / updates[name] for name in names if updates[name] > 0),
    }


def report(results: dict[str, Any]) -> None:
    """Print the results as one JSON line, the last line of the worker's output."""
    sys.stdout.write("RESULT " + json.dumps(results) + "\n")
    sys.stdout.flush()
