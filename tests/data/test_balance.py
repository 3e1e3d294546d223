"""data.balance: per-image sampling weights and the weighted loss (its weights: tests/test_plan.py)."""

import pytest
import torch
import torch.nn.functional as F

from effnet.data import balance


def test_sample_weights_draw_every_class_equally_often():
    samples = [("a", 0)] * 30 + [("b", 1)] * 10
    per_sample = balance.sample_weights(samples)
    assert per_sample[0] == pytest.approx(1 / 30) and per_sample[-1] == pytest.approx(1 / 10)
    assert sum(per_sample[:30]) == pytest.approx(sum(per_sample[30:])), "each class drawn equally often"


def test_weighted_cross_entropy_weighs_by_class_and_saves_nothing():
    loss = balance.WeightedCrossEntropy(torch.tensor([0.5, 2.0]), label_smoothing=0.0)
    logits, target = torch.tensor([[0.0, 3.0], [2.0, 0.0]]), torch.tensor([0, 1])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([0.5, 2.0]))
    assert loss(logits, target) == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(F.cross_entropy(logits, target).item())
    assert loss.state_dict() == {}
