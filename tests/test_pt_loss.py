"""Losses follow problem_type as transformers chooses and computes them.

The expected values are worked out by hand: the classifier's weight is zeroed and its bias
set, so every image's logits equal the bias exactly, and each loss has a closed form
(the arithmetic is in the comments). transformers' own loss is the reference for every
case in tests/test_transformers_interop.py.
"""

import math

import pytest

torch = pytest.importorskip("torch")

from regnet_pt import RegNetForImageClassification  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# Logits ln 1, ln 2, ln 3, ln 4, ln 10: softmax = (1, 2, 3, 4, 10) / 20.
LOG_ODDS = [math.log(k) for k in (1, 2, 3, 4, 10)]


def _loss(bias, labels, problem_type=None):
    """The model's loss when every image's logits are ``bias``."""
    torch.manual_seed(0)
    model = RegNetForImageClassification(tiny_config(num_labels=len(bias), problem_type=problem_type)).eval()
    with torch.no_grad():
        model.classifier[1].weight.zero_()
        model.classifier[1].bias.copy_(torch.tensor(bias))
    out = model(torch.randn(labels.shape[0], 3, 32, 32), labels=labels)
    assert torch.equal(out.logits, torch.tensor([bias] * labels.shape[0]))
    return out.loss.item()


def test_integer_labels_give_cross_entropy():
    # -log p: class 0: ln(20/1), class 3: ln(20/4) = ln 5, class 4: ln(20/10) = ln 2; mean ln(200) / 3.
    assert _loss(LOG_ODDS, torch.tensor([0, 3, 4])) == pytest.approx(math.log(200) / 3, rel=1e-6)
    assert _loss(LOG_ODDS, torch.tensor([0, 3, 4], dtype=torch.int32)) == pytest.approx(math.log(200) / 3, rel=1e-6)


def test_target_minus_100_is_left_out_of_the_mean():
    # (ln 20 + ln 2) / 2 = ln(40) / 2: the ignored image counts in neither sum nor count.
    assert _loss(LOG_ODDS, torch.tensor([0, -100, 4])) == pytest.approx(math.log(40) / 2, rel=1e-6)


def test_float_labels_give_multi_label_bce():
    # Per value: ln(1 + e^z) - z * t with z = ln k, i.e. ln(1 + k) - t ln k.
    # Row [0, 1, 1, 0, 0]: ln 2 + ln(3/2) + ln(4/3) + ln 5 + ln 11 = ln 220.
    # Row [1, 0, 0, 0, 1]: ln 2 + ln 3 + ln 4 + ln 5 + ln(11/10) = ln 132. Mean over 10 values.
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]])
    assert _loss(LOG_ODDS, labels) == pytest.approx(math.log(220 * 132) / 10, rel=1e-6)


@pytest.mark.parametrize("labels", [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[0.5], [-1.0], [2.0]])])
def test_one_label_gives_regression(labels):
    # Logit 0.5 for every image: errors 0, 1.5, -1.5; mean square (0 + 2.25 + 2.25) / 3 = 1.5.
    assert _loss([0.5], labels) == pytest.approx(1.5, rel=1e-6)


def test_explicit_problem_type_wins():
    # Regression with logits (1, -1): errors 0.9, -1.2, 0.7, -1.4; squares sum to 4.7; mean 1.175.
    labels = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    assert _loss([1.0, -1.0], labels, "regression") == pytest.approx(1.175, rel=1e-6)
    # Multi-label with integer labels, logits (ln 1, ln 3): ln(1 + k) - t ln k per value:
    # [0, 1] -> ln 2 + ln(4/3); [1, 1] -> ln 2 + ln(4/3); mean over 4 = ln(8/3) / 2.
    int_labels = torch.tensor([[0, 1], [1, 1]])
    got = _loss([0.0, math.log(3)], int_labels, "multi_label_classification")
    assert got == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)
    # Explicit single-label: classes 0 and 4 cost ln 20 and ln 2, mean ln(40) / 2.
    got = _loss(LOG_ODDS, torch.tensor([0, 4]), "single_label_classification")
    assert got == pytest.approx(math.log(40) / 2, rel=1e-6)


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
