"""One pixel limit for every image effnet decodes: the data scan, training's loaders, eval,
predict and export's calibration.

An image's header declares its size; a 144-megapixel PNG of a few hundred kilobytes decodes to
gigabytes. Each image is checked against the limit right after Image.open, which reads only the
header, and refused before any pixel is decoded: the scan reports it, the loaders skip it, predict
lists it with one line. Pillow's own guard (Image.MAX_IMAGE_PIXELS) is turned off here, because it
would print its raw DecompressionBombWarning on stderr first, at a limit of its own. Imports no torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PIL import Image

# conf/data/*.yaml set data.max_image_pixels to this (a test holds them equal); eval.py, predict.py
# and export.py, which have no data section of their own, decode with it.
MAX_IMAGE_PIXELS = 100_000_000

Image.MAX_IMAGE_PIXELS = None  # effnet's check below replaces Pillow's: see the module docstring
_limit = MAX_IMAGE_PIXELS


class TooManyPixels(ValueError):
    """An image whose declared size is over the limit; a ValueError, as the loaders skip those."""


def set_limit(pixels: int) -> None:
    """The limit of this process (train.py: data.max_image_pixels); loader workers inherit it."""
    global _limit
    _limit = int(pixels)


def limit() -> int:
    return _limit


@contextlib.contextmanager
def limited(pixels: int) -> Iterator[None]:
    """The limit for one run, restored afterwards: a later run in the same process (a multirun's
    next job, eval after train in a notebook) decodes at its own limit, not at this one's."""
    before = _limit
    set_limit(pixels)
    try:
        yield
    finally:
        set_limit(before)


def check(image: Image.Image, max_pixels: int | None = None) -> None:
    """Raise TooManyPixels when the opened (not yet decoded) `image` declares more than the limit."""
    max_pixels = _limit if max_pixels is None else max_pixels
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"too many pixels: {width}x{height} = {width * height:,} > data.max_image_pixels="
            f"{max_pixels:,} (decompression bomb?); not decoded"
        )
