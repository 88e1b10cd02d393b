"""Losses follow problem_type exactly as transformers chooses and computes them."""

import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F  # noqa: E402

from regnet_pt import RegNetForImageClassification  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _run(num_labels, labels, problem_type=None):
    torch.manual_seed(0)
    model = RegNetForImageClassification(tiny_config(num_labels=num_labels, problem_type=problem_type)).eval()
    out = model(torch.randn(labels.shape[0], 3, 32, 32), labels=labels)
    return out.loss, out.logits


def test_integer_labels_give_cross_entropy():
    labels = torch.tensor([0, 3, 4])
    loss, logits = _run(5, labels)
    assert torch.allclose(loss, F.cross_entropy(logits, labels))


def test_float_labels_give_multi_label_bce():
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]])
    loss, logits = _run(5, labels)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, labels))


def test_one_label_gives_regression():
    labels = torch.tensor([0.5, -1.0, 2.0])
    loss, logits = _run(1, labels)
    assert torch.allclose(loss, F.mse_loss(logits.squeeze(), labels))


def test_explicit_problem_type_wins():
    labels = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    loss, logits = _run(2, labels, problem_type="regression")
    assert torch.allclose(loss, F.mse_loss(logits, labels))
    int_labels = torch.tensor([[0, 1], [1, 1]])
    loss, logits = _run(2, int_labels, problem_type="multi_label_classification")
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, int_labels.float()))


def test_loss_backpropagates_to_every_parameter():
    torch.manual_seed(0)
    model = RegNetForImageClassification(tiny_config()).train()
    model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "labels, problem_type, message",
    [
        (torch.tensor([0, 1]), None, "one label per image, shape \\(3,\\)"),
        (torch.zeros(3, 4), "multi_label_classification", "labels of shape \\(3, 5\\)"),
    ],
)
def test_labels_of_the_wrong_shape_are_named(labels, problem_type, message):
    model = RegNetForImageClassification(tiny_config(problem_type=problem_type))
    with pytest.raises(ValueError, match=message):
        model(torch.randn(3, 3, 32, 32), labels=labels)
