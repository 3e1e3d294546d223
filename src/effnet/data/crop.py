"""The training transform as effnet runs it: timm's own pipeline, with its first op (the
random-resized crop) cut from a source (effnet.data.sources) instead of from a decoded image.

timm's RandomResizedCropAndInterpolation draws its crop from the image's size alone, then crops
and resizes. Here the same draw is made by timm's own `get_params` on the source's full-size
upright size, with the same calls on the same `random` stream (the interpolation's too when timm
draws one), so every op after it (flip, colour jitter, RandAugment: timm's, unchanged) draws
exactly what it would after timm's crop. Only where the pixels come from changes: the source
decodes as little of the file as the crop needs, and cuts the box in one resize.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation, interp_mode_to_str, str_to_pil_interp
from torchvision.transforms import Compose

from effnet.data.sources import Box, InMemory, Source


class SourceCrop:
    """timm's random-resized crop (its scale, ratio, size and interpolation), drawn on a source's
    full size and cut by the source."""

    def __init__(self, timm_crop: RandomResizedCropAndInterpolation) -> None:
        self.timm_crop = timm_crop
        height, width = timm_crop.size
        self.size = (width, height)  # PIL's order

    def params(self, size: tuple[int, int]) -> tuple[Box, int]:
        """The crop box on an image of `size` (width, height) and the PIL resample filter, drawn
        as timm's __call__ draws them. get_params reads only the image's size (torchvision's
        get_image_size): a (height, width) view of one element gives it with no pixels at all."""
        width, height = size
        shape = torch.empty((), dtype=torch.uint8).expand(height, width)
        crop = self.timm_crop
        top, left, h, w = crop.get_params(shape, crop.scale, crop.ratio)
        mode = (
            random.choice(crop.interpolation)
            if isinstance(crop.interpolation, (tuple, list))
            else crop.interpolation
        )
        return (left, top, left + w, top + h), str_to_pil_interp(interp_mode_to_str(mode))

    def __call__(self, source: Source) -> Image.Image:
        box, resample = self.params(source.size)
        return source.resized_crop(box, self.size, resample)


class CropThenAugment:
    """A timm training pipeline split after its crop: `crop` takes a source (or a PIL image),
    `rest` is timm's remaining ops (flip, jitter or RandAugment, to a uint8 tensor)."""

    def __init__(self, crop: SourceCrop, rest: Callable[[Image.Image], torch.Tensor]) -> None:
        self.crop, self.rest = crop, rest

    @classmethod
    def from_timm(cls, pipeline: Compose) -> CropThenAugment:
        """Split timm's create_transform(..., is_training=True) Compose, which starts with its
        random-resized crop (effnet.data.transforms.train_transform)."""
        first, *rest = pipeline.transforms
        if not isinstance(first, RandomResizedCropAndInterpolation):
            raise TypeError(
                f"the training pipeline must start with timm's random-resized crop, not {first!r}"
            )
        return cls(SourceCrop(first), Compose(rest))

    def __call__(self, source: Source | Image.Image) -> torch.Tensor:
        return self.rest(self.crop(InMemory(source) if isinstance(source, Image.Image) else source))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop.timm_crop!r}, rest={self.rest!r})"
