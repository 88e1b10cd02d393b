"""Labels a loss cannot take raise our LabelsError in every backend, not the framework's own error."""

from __future__ import annotations

import numpy as np
import pytest

from regnet_core.errors import LabelsError
from tests.helpers import requires, tiny_config

BAD_TARGETS = [([0, 5], "got [5]"), ([-3, 1], "got [-3]")]  # 5 labels: 5 is one past the end


@requires("torch")
@pytest.mark.parametrize("targets, seen", BAD_TARGETS)
def test_pytorch_class_targets_out_of_range(targets, seen):
    import torch

    from regnet_pt import RegNetForImageClassification

    model = RegNetForImageClassification(tiny_config(num_labels=5)).eval()
    pixels = torch.zeros(2, 3, 32, 32)
    with pytest.raises(LabelsError, match=r"in \[0, 5\) or -100, " + seen.replace("[", r"\[").replace("]", r"\]")):
        model(pixels, labels=torch.tensor(targets))
    # The ignored index and in-range targets are fine.
    assert torch.isfinite(model(pixels, labels=torch.tensor([-100, 4])).loss)


@requires("tensorflow")
@pytest.mark.parametrize("targets, seen", BAD_TARGETS)
def test_tensorflow_class_targets_out_of_range(targets, seen):
    import tensorflow as tf

    from regnet_tf import RegNetForImageClassification

    model = RegNetForImageClassification(tiny_config(num_labels=5))
    pixels = tf.zeros((2, 32, 32, 3))
    with pytest.raises(LabelsError, match=seen.replace("[", r"\[").replace("]", r"\]")):
        model(pixels, labels=tf.constant(targets), training=False)
    assert np.isfinite(float(model(pixels, labels=tf.constant([-100, 4]), training=False).loss))


@requires("jax")
@pytest.mark.parametrize("targets, seen", BAD_TARGETS)
def test_flax_class_targets_out_of_range(targets, seen):
    import jax.numpy as jnp

    import regnet_flax

    config = tiny_config(num_labels=5)
    with pytest.raises(LabelsError, match=seen.replace("[", r"\[").replace("]", r"\]")):
        regnet_flax.loss(jnp.zeros((2, 5)), np.asarray(targets), config)


def test_labels_for_a_model_without_classifier_are_refused_in_core():
    from regnet_core.outputs import check_labels

    with pytest.raises(LabelsError, match="no classifier"):
        check_labels("single_label_classification", (2,), 2, 0)
    with pytest.raises(LabelsError, match=r"expects labels of shape \(2, 3\), got \(2, 4\)"):
        check_labels("multi_label_classification", (2, 4), 2, 3)
