"""Compensating for classes with far fewer images: `data.balance=weighted_sampler|class_weights|none`.

weighted_sampler draws every class equally often (with replacement), which also works with
mixup; class_weights keeps the data as it is and weighs the loss by inverse class frequency (the
weights are part of the run plan, effnet.plan.class_weights).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from effnet.data.folders import Sample


def sample_weights(samples: list[Sample]) -> list[float]:
    """Each image drawn with probability 1 / (its class's count): every class equally likely."""
    counts = Counter(label for _, label in samples)
    return [1.0 / counts[label] for _, label in samples]


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy weighted per class. The weights are not saved in the state_dict: a checkpoint
    loads into a module built with or without them."""

    def __init__(self, weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float(), persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)
