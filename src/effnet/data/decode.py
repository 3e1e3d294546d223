"""Opening an image file: the one decode the scan, the data cache, eval and predict share, the
upright size and RGB conversion training's per-sample decode (effnet.data.sources) shares with it,
and the errors a file that cannot be decoded raises.

Separate from the dataset and the cache so that both, and the torch-free scan, import it without
importing each other. Imports no torch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from effnet.data import pixels

# What a file that cannot be decoded raises (PIL uses all of these): the scan reports it, the
# loaders skip it, the cache leaves it to be decoded while training.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_rgb(path: str, min_size: int) -> Image.Image:
    """Decode as RGB, upright per EXIF. Large JPEGs decode at a reduced DCT scale that still
    leaves at least `min_size` pixels on the short side: several times faster on big photos.
    An image over the pixel limit (effnet.data.pixels) is refused before it is decoded."""
    with Image.open(path) as img:
        pixels.check(img)
        img.draft("RGB", (min_size, min_size))
        return upright_rgb(img)


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened (or drafted) file decoded as 8-bit RGB, turned upright per its EXIF orientation."""
    return to_8bit(ImageOps.exif_transpose(img)).convert("RGB")


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image once turned upright, from its header: EXIF orientations
    5-8 (a quarter turn, or a transpose) swap the axes."""
    width, height = img.size
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
        return height, width
    return width, height


def base_image(path: str, side: int) -> Image.Image:
    """A training image as the data cache stores it (effnet.data.cache), and as every epoch with
    a store crops it: `load_rgb` (a JPEG decodes at the smallest DCT scale that keeps `side` on
    the short side), then an image still at least twice `side` (a large PNG, a giant JPEG)
    reduced by an integer factor, as a JPEG draft would. `side` is the short side the smallest
    random crop needs. Without a store, training decodes each sample at the scale its own crop
    needs instead (effnet.data.sources.ImageFile)."""
    image = load_rgb(path, side)
    short = min(image.size)
    return image.reduce(short // side) if short >= 2 * side else image


def to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer grayscale (scientific TIFFs, depth PNGs) scaled from 0-65535 to
    0-255: Pillow's convert("RGB") would clip every value above 255 to white."""
    if not img.mode.startswith("I"):
        return img
    pixels = np.asarray(img, dtype=np.float32) / 257
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


SIZE_SAMPLE = 256  # image headers read to estimate the store's size for data.cache=auto


def size_sample(
    paths: Sequence[str], k: int = SIZE_SAMPLE, seed: int = 0, known: Mapping[str, tuple] | None = None
) -> tuple[tuple[int, int, bool], ...]:
    """(width, height, is JPEG) of up to k images drawn with a fixed seed: what
    effnet.recipes.cache_bytes needs to estimate the store for data.cache=auto. `known`: the
    sizes the data scan read (effnet.data.scan), so that a start opens no file twice."""
    chosen = random.Random(seed).sample(list(paths), min(k, len(paths)))
    sizes = []
    for path in chosen:
        if known and path in known:
            sizes.append(tuple(known[path]))
            continue
        try:
            with Image.open(path) as img:
                sizes.append((img.size[0], img.size[1], img.format == "JPEG"))
        except DECODE_ERRORS:
            continue
    return tuple(sizes)
