"""The training transform as effnet runs it: timm's own pipeline, with its first op (the
random-resized crop) cut from a source (effnet.data.sources) instead of from a decoded image.

timm's RandomResizedCropAndInterpolation draws its crop from the image's size alone, then crops
and resizes. Here the same draw is made by timm's own `get_params` on the source's full-size
upright size, with the same calls on the same `random` stream (the interpolation's too when timm
draws one), so every op after it (flip, colour jitter, RandAugment: timm's) draws exactly what it
would after timm's crop. Only where the pixels come from changes: the source decodes as little of
the file as the crop needs, and the box is cut in one resize.

Where every op after the crop has a tensor form (flips, and colour jitter without hue: the light
and standard levels), the box is cut as a uint8 tensor by torch's antialiased resize (the same
filters as Pillow's, 0.29 against 1.24 ms for a 224 px crop of a stored hymenoptera photo)
and the jitter runs on that tensor (TensorJitter). That is most of what a cached epoch costs
(issue 20). RandAugment is PIL only: the heavy level is cut by Pillow, as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import (
    MaybePILToTensor,
    RandomResizedCropAndInterpolation,
    interp_mode_to_str,
    str_to_pil_interp,
)
from torchvision.transforms import ColorJitter, Compose, RandomHorizontalFlip, RandomVerticalFlip
from torchvision.transforms.v2 import functional as F

from effnet.data.sources import Box, InMemory, Pixels, Source, pillow_cut

# Pillow filters that torch's antialiased resize computes the same way (Pillow's kernels, on uint8
# natively); any other (timm offers nearest, lanczos, box, hamming) is cut by Pillow.
TENSOR_FILTERS = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic"}


def cut(
    pixels: Pixels, box: Box, size: tuple[int, int], resample: int, tensor: bool
) -> Image.Image | torch.Tensor:
    """`box` of `pixels` resampled to `size` (width, height): a uint8 CHW tensor (channels-last in
    memory) if `tensor`, else a PIL image. The tensor resize takes whole-pixel boxes (every crop of
    a stored image, and of a file decoded in full); a fractional one (a reduced decode's) is cut
    by Pillow and converted."""
    if tensor and resample in TENSOR_FILTERS and all(float(v).is_integer() for v in box):
        array = pixels if isinstance(pixels, np.ndarray) else np.array(pixels)
        left, top, right, bottom = (int(v) for v in box)
        # The box copied out channels-last, the layout torch's uint8 kernel works in: torchvision's
        # resize of the strided view repacks it and its output (0.29 against 0.42 ms a 224 px cut).
        # The output is always a new tensor, so the store is never handed on.
        region = torch.from_numpy(array[top:bottom, left:right]).permute(2, 0, 1).unsqueeze(0)
        region = region.contiguous(memory_format=torch.channels_last)
        out = torch.nn.functional.interpolate(
            region, size=(size[1], size[0]), mode=TENSOR_FILTERS[resample], antialias=True
        )
        return out[0]
    image = pillow_cut(pixels, box, size, resample)
    return F.pil_to_tensor(image) if tensor else image


class TensorJitter:
    """torchvision's ColorJitter (brightness, contrast, saturation; no hue) on a uint8 CHW tensor.

    timm's op draws the order and the factors as it always does (its get_params, on the same
    streams); the ops then run in place on one float copy instead of torchvision's two or three
    allocations an op. Each op still rounds down to whole grey levels as torchvision's uint8 ops
    do, so the result is theirs bit for bit (tests/data/test_crop.py), at 0.33 against 0.85 ms a
    224 px image (Pillow's, on a PIL image: 0.77)."""

    def __init__(self, jitter: ColorJitter) -> None:
        if jitter.hue is not None:
            raise ValueError("TensorJitter has no hue: keep torchvision's ColorJitter for it")
        self.jitter = jitter

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        order, *factors, _ = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        x = image.to(torch.float32, memory_format=torch.contiguous_format)  # whole colour planes
        for op in order.tolist():
            factor = factors[op] if op < 3 else None
            if factor is None:
                continue
            if op == 0:  # brightness: a blend with black
                x.mul_(factor)
            else:  # contrast: with the mean grey level; saturation: with the grey image
                grey = x[0].mul(0.2989).add_(x[1], alpha=0.587).add_(x[2], alpha=0.114).floor_()
                x.mul_(factor).add_(grey.mean() if op == 1 else grey, alpha=1.0 - factor)
            x.clamp_(0, 255).trunc_()
        # whole grey levels in [0, 255] by now; float -> uint8 in one step is a slow kernel (107
        # against 22 us for 224 px by way of int16)
        return x.to(torch.int16).to(torch.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.jitter!r})"


def tensor_form(op: Callable) -> Callable | None:
    """`op` as it runs on a uint8 CHW tensor, or None if it only runs on PIL images."""
    if isinstance(op, (RandomHorizontalFlip, RandomVerticalFlip, MaybePILToTensor)):
        return op  # torchvision's flips take tensors, and the conversion passes one through
    if type(op) is ColorJitter and op.hue is None:
        return TensorJitter(op)
    return None


class SourceCrop:
    """timm's random-resized crop (its scale, ratio, size and interpolation), drawn on a source's
    full size and cut from the pixels the source decodes for it: as a uint8 tensor if `tensor`."""

    def __init__(self, timm_crop: RandomResizedCropAndInterpolation, tensor: bool = False) -> None:
        self.timm_crop, self.tensor = timm_crop, tensor
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

    def __call__(self, source: Source) -> Image.Image | torch.Tensor:
        box, resample = self.params(source.size)
        pixels, box = source.region(box, self.size)
        return cut(pixels, box, self.size, resample, self.tensor)


class CropThenAugment:
    """A timm training pipeline split after its crop: `crop` takes a source (or a PIL image),
    `rest` is timm's remaining ops (flip, jitter or RandAugment, to a uint8 tensor), in their
    tensor forms when the crop is cut as a tensor."""

    def __init__(self, crop: SourceCrop, rest: Callable[[Image.Image | torch.Tensor], torch.Tensor]) -> None:
        self.crop, self.rest = crop, rest

    @classmethod
    def from_timm(cls, pipeline: Compose) -> CropThenAugment:
        """Split timm's create_transform(..., is_training=True) Compose, which starts with its
        random-resized crop (effnet.data.transforms.train_transform). On tensors when every op
        after the crop has a tensor form."""
        first, *rest = pipeline.transforms
        if not isinstance(first, RandomResizedCropAndInterpolation):
            raise TypeError(
                f"the training pipeline must start with timm's random-resized crop, not {first!r}"
            )
        tensor_ops = [tensor_form(op) for op in rest]
        if all(op is not None for op in tensor_ops):
            return cls(SourceCrop(first, tensor=True), Compose(tensor_ops))
        return cls(SourceCrop(first), Compose(rest))

    def __call__(self, source: Source | Pixels) -> torch.Tensor:
        return self.rest(self.crop(source if isinstance(source, Source) else InMemory(source)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop.timm_crop!r}, rest={self.rest!r})"
