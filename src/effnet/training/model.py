"""The network: a timm backbone without its classifier, then a small head.

A plain nn.Module (no Lightning), so it exports as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from effnet.errors import UserError


def size_kwargs(name: str, image_size: int | None) -> dict:
    """create_model's img_size for a backbone built for one input size (ViTs build their position
    table for it); nothing for the others."""
    try:
        if image_size and timm.models.get_pretrained_cfg(name.split(".")[0]).fixed_input_size:
            return {"img_size": image_size}
    except (RuntimeError, AttributeError):
        pass
    return {}


def create_backbone(name: str, drop_path: float = 0.0, image_size: int | None = None) -> nn.Module:
    """A timm model without its classifier (it returns pooled features); random weights."""
    kwargs = size_kwargs(name, image_size)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(
            f"model.backbone={name}: not a timm model; similar names: {', '.join(close)}"
        ) from exc


class Head(nn.Sequential):
    """Optional hidden layers, then dropout and the classifier."""

    def __init__(
        self, in_features: int, num_classes: int, dropout: float, hidden: Sequence[int] = ()
    ) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.SiLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        super().__init__(*layers)


class Classifier(nn.Module):
    """backbone -> head."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, dropout: float, hidden: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.backbone = backbone
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = Head(features, num_classes, dropout, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build(
    backbone: str,
    classes: Sequence[str],
    image_size: int,
    dropout: float,
    hidden: Sequence[int] = (),
    drop_path: float = 0.0,
) -> Classifier:
    """The network from the plan's (or a checkpoint's) `network` section."""
    return Classifier(create_backbone(backbone, drop_path, image_size), len(classes), dropout, list(hidden))
