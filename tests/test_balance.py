"""data.balance: the weights, and the loss that uses them."""

import pytest
import torch
import torch.nn.functional as F

from effnet import balance
from effnet.errors import UserError
from effnet.model import ClassifierModule


def test_class_weights_are_inverse_frequency():
    samples = [("a", 0)] * 30 + [("b", 1)] * 10
    assert torch.allclose(balance.class_weights(samples, 2), torch.tensor([40 / 60, 40 / 20]))
    per_sample = balance.sample_weights(samples, 2)
    assert sum(per_sample[:30]) == pytest.approx(sum(per_sample[30:])), "each class drawn equally often"


def test_weighted_loss_is_installed_but_not_saved_and_refuses_mixup():
    samples = [("a", 0)] * 3 + [("b", 1)]
    module = ClassifierModule("mobilenetv3_small_100", ["a", "b"], 32)
    balance.weighted_loss(module, samples, 2, 0.1)
    assert torch.allclose(module.train_loss.weight, torch.tensor([4 / 6, 2.0]))
    assert not any(k.startswith("train_loss") for k in module.state_dict())
    logits, target = torch.tensor([[0.0, 3.0], [2.0, 0.0]]), torch.tensor([0, 1])
    weighted = F.cross_entropy(logits, target, weight=torch.tensor([4 / 6, 2.0]), label_smoothing=0.1)
    assert module.train_loss(logits, target) == pytest.approx(weighted.item())
    assert weighted.item() != pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item())
    mixing = ClassifierModule("mobilenetv3_small_100", ["a", "b"], 32, mixup=0.2)
    with pytest.raises(UserError, match="data.balance=class_weights does not combine with mixup"):
        balance.weighted_loss(mixing, samples, 2, 0.1)
