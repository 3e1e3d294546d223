"""Compensating for classes with far fewer images: `data.balance=weighted_sampler|class_weights|none`.

weighted_sampler draws every class equally often (with replacement), which also works with
mixup; class_weights keeps the data as it is and weighs the loss by inverse class frequency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effnet.errors import UserError
from effnet.folders import Sample


def class_weights(samples: list[Sample], num_classes: int) -> torch.Tensor:
    """n / (k * count): 1 for every class of a balanced set, larger for rare classes."""
    counts = torch.bincount(torch.tensor([label for _, label in samples]), minlength=num_classes).double()
    return (counts.sum() / (num_classes * counts.clamp(min=1))).float()


def sample_weights(samples: list[Sample], num_classes: int) -> list[float]:
    """Each image drawn with probability 1 / (its class's count): every class equally likely."""
    per_class = class_weights(samples, num_classes)
    return [float(per_class[label]) for _, label in samples]


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy weighted per class. The weights are not saved in the state_dict: a checkpoint
    loads into a module built with or without them."""

    def __init__(self, weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)


def weighted_loss(module: nn.Module, samples: list[Sample], num_classes: int, label_smoothing: float) -> None:
    """Swap the module's training loss for the class-weighted one."""
    if getattr(module, "mixup", None) is not None:
        raise UserError(
            "data.balance=class_weights does not combine with mixup/cutmix (aug=heavy mixes labels); "
            "use data.balance=weighted_sampler, or set augment.heavy.mixup=0 augment.heavy.cutmix=0"
        )
    module.train_loss = WeightedCrossEntropy(class_weights(samples, num_classes), label_smoothing)
