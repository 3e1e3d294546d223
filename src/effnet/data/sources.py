"""What a training sample's random-resized crop is cut from: an image file decoded only as far as
that crop needs, or an image already in memory (the data cache's stored image).

A 224 px crop of a 12-megapixel phone photo never needs 12 megapixels. A JPEG can be decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's `Image.draft`), and the smaller the scale
the faster the decode (4000x3000 here: 75 ms in full, 35 ms at 1/2, 21 ms at 1/8). So the crop
is drawn first, on the full-size upright image as the header gives it, and the file is then
decoded at the largest reduction that still leaves the crop at least the output size on both
axes: a crop of most of the photo decodes at 1/8, a small one at 1/2 or in full. Nothing is
upsampled that the full decode would not upsample.

A source hands out the decoded pixels a box lies in (`region`) and the cut is made from them:
by effnet.data.crop as a tensor op where it can, or here with one `Image.resize(size, resample,
box=...)` (`resized_crop`), which resamples only the box and takes fractional boxes (a reduced
decode's). Imports no torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from effnet.data import pixels
from effnet.data.decode import upright_rgb, upright_size

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in the source's full-size pixels

DCT_SCALES = (8, 4, 2, 1)  # the reductions a JPEG decoder offers, largest first


Pixels = Image.Image | np.ndarray  # an RGB image, or its (height, width, 3) uint8 array


class Source:
    """An image a crop is drawn on (`size`: full-size, upright) and then cut from."""

    size: tuple[int, int]  # (width, height)

    def region(self, box: Box, out: tuple[int, int]) -> tuple[Pixels, Box]:
        """The decoded pixels the crop `box` (in full-size pixels) is cut from to give `out`
        (width, height), and the box in their pixels."""
        raise NotImplementedError

    def resized_crop(self, box: Box, size: tuple[int, int], resample: int) -> Image.Image:
        """The RGB image `size` (width, height) resampled from `box` by Pillow."""
        decoded, box = self.region(box, size)
        return pillow_cut(decoded, box, size, resample)


def pillow_cut(pixels: Pixels, box: Box, size: tuple[int, int], resample: int) -> Image.Image:
    """`box` of `pixels` resampled to `size` (width, height) in one Pillow resize: only the box is
    resampled, and a fractional box (a reduced decode's) falls between pixels as it should."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    return image.resize(size, resample, box=box)


def reduction(crop: tuple[float, float], out: tuple[int, int]) -> int:
    """The largest DCT scale k at which a (width, height) crop still spans at least `out` (width,
    height) decoded pixels: crop / k >= out on both axes. 1 when the crop is smaller than the
    output already: it is upsampled either way, and a reduced decode would upsample it further."""
    return next((k for k in DCT_SCALES if crop[0] >= k * out[0] and crop[1] >= k * out[1]), 1)


class InMemory(Source):
    """An image already decoded: the data cache's stored array (a view: nothing cut from it
    writes to it), or any PIL image handed to the training transform."""

    def __init__(self, image: Pixels) -> None:
        self.image = image
        self.size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])

    def region(self, box: Box, out: tuple[int, int]) -> tuple[Pixels, Box]:
        return self.image, box


class ImageFile(Source):
    """An image file of which only the header is read until it is cut: its upright size, checked
    against the pixel limit (effnet.data.pixels) before anything is decoded.

    `region` opens the file again and decodes it at the reduction the crop allows (JPEG and
    MPO; any other format decodes in full, k=1). Opening twice costs ~0.1 ms against a decode of
    20 ms or more, and keeps nothing open between the two: a second cut of the same sample (a
    transform that redraws, effnet.data.dataset.ImageList._augment) decodes again at the scale its
    own crop needs. `decoded` is the size of the last decode (a test reads it).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with Image.open(path) as img:
            pixels.check(img)
            self.size = upright_size(img)
        self.decoded: tuple[int, int] | None = None

    def region(self, box: Box, out: tuple[int, int]) -> tuple[Pixels, Box]:
        k = reduction((box[2] - box[0], box[3] - box[1]), out)
        with Image.open(self.path) as img:
            pixels.check(img)
            if upright_size(img) != self.size:
                raise OSError(f"{self.path} changed while it was read: {upright_size(img)}, was {self.size}")
            # draft picks the scale min(width // w, height // h), rounded down to 8, 4, 2 or 1:
            # asking for the size divided by k gives exactly k (or 1 for a format without draft).
            # The size as decoded is read back below rather than assumed.
            width, height = img.size
            img.draft("RGB", (max(1, width // k), max(1, height // k)))
            image = upright_rgb(img)
        self.decoded = image.size
        # The crop was drawn on the full-size image: scale its box to the decoded one. A reduced
        # decode is ceil(full / k) pixels long, so the scale is decoded / full per axis (exactly
        # 1/k when k divides the size; otherwise under a decoded pixel off at one edge). In full
        # (k = 1) the box stays whole pixels.
        (w, h), (dw, dh) = self.size, image.size
        return image, (box[0] * dw / w, box[1] * dh / h, box[2] * dw / w, box[3] * dh / h)
