"""timm's training and eval transforms, ending in a uint8 tensor (normalisation, erasing and mixup
happen on the device).

Separate so that effnet.preprocessing can hand out the eval transform without importing the
dataset or the DataModule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from PIL import Image
from timm.data import create_transform
from torch import Tensor


def train_transform(image_size: int, level: Mapping, interpolation: str) -> Callable[[Image.Image], Tensor]:
    """timm's training pipeline at one augmentation level, ending in a uint8 tensor."""
    return create_transform(
        image_size,
        is_training=True,
        scale=tuple(level["scale"]),
        hflip=level["hflip"],
        color_jitter=level["color_jitter"] or None,
        auto_augment=level["rand_augment"],
        interpolation=interpolation,
        normalize=False,
    )


def eval_transform(image_size: int, crop_pct: float, interpolation: str) -> Callable[[Image.Image], Tensor]:
    """timm's eval pipeline: resize the short side to floor(size / crop_pct), centre crop."""
    return create_transform(
        image_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation, normalize=False
    )
