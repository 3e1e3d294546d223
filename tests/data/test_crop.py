"""The training crop from a source: timm's own draw on the full-size upright image, so every op
after it draws what it would after timm's crop; pixels from a decode reduced only as far as that
crop allows, so the output is timm's up to resampling."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import interp_mode_to_str, str_to_pil_interp

from effnet.data.crop import CropThenAugment
from effnet.data.dataset import seed_all
from effnet.data.decode import load_rgb
from effnet.data.sources import ImageFile
from effnet.data.transforms import eval_transform, train_transform
from tests.helpers import photo_like

LEVEL = {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.3, "rand_augment": None}
FULL = 10**6  # load_rgb's min_size for a decode in full


class Recording(ImageFile):
    """The file source, keeping the box and filter it was cut with."""

    def resized_crop(self, box, size, resample):
        self.box, self.resample = box, resample
        return super().resized_crop(box, size, resample)


def jpeg(folder, width: int, height: int) -> str:
    path = folder / f"{width}x{height}.jpg"
    photo_like(width, height).save(path, quality=90)
    return str(path)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    return jpeg(tmp_path_factory.mktemp("photo"), 2400, 1800)


def mean_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("scale,expected", [((0.005, 0.06), {1, 2}), ((0.5, 1.0), {4, 8})])
def test_the_crop_is_timms_draw_and_keeps_enough_pixels(tmp_path, scale, expected):
    """Small crops (from 0.5% of the photo) and big ones, with timm's random interpolation: each
    seed draws timm's box on the fully decoded image and leaves the stream where timm leaves it;
    the region decoded for a crop of at least 96 px spans at least 96 px, so a small crop decodes
    in full or at 1/2 and a big one at 1/4 or 1/8."""
    photo = jpeg(tmp_path, 1200, 900)
    level = {**LEVEL, "scale": scale}
    timm_crop = train_transform(96, level, "random").transforms[0]
    ours = CropThenAugment.from_timm(train_transform(96, level, "random"))
    full = load_rgb(photo, FULL)
    scales = set()
    for seed in range(16):
        seed_all(seed)
        top, left, h, w = timm_crop.get_params(full, timm_crop.scale, timm_crop.ratio)
        resample = str_to_pil_interp(interp_mode_to_str(random.choice(timm_crop.interpolation)))
        after = random.random()
        seed_all(seed)
        source = Recording(photo)
        ours.crop(source)
        assert (source.box, source.resample) == ((left, top, left + w, top + h), resample), seed
        assert random.random() == after, "the ops after the crop draw what they would after timm's"
        k = 1200 // source.decoded[0]
        scales.add(k)
        region = (w * source.decoded[0] / 1200, h * source.decoded[1] / 900)
        if min(w, h) >= 96:
            assert min(region) >= 96, (seed, w, h, k)
        else:
            assert k == 1, "a crop upsampled anyway decodes in full"
    assert scales == expected


def test_the_output_is_timms_up_to_resampling(photo):
    """timm resizes the crop from the full decode, this path from a DCT-reduced one: the same
    region through another low-pass filter, off by about a grey level on average (under 3 of 255
    here; the photo's noise is what differs most). The same pipeline on another seed's draw, a
    region or a flip away, is off by far more."""
    timm_tf = train_transform(224, LEVEL, "bicubic")
    ours = CropThenAugment.from_timm(timm_tf)
    full = load_rgb(photo, FULL)
    for seed in range(4):
        seed_all(seed)
        expected = timm_tf(full)
        seed_all(seed)
        got = ours(ImageFile(photo))
        assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
        assert mean_difference(got, expected) < 3, seed
        seed_all(seed + 100)
        assert mean_difference(ours(ImageFile(photo)), expected) > 10, "the bound tells draws apart"


def test_an_exif_rotated_jpeg_crops_what_its_upright_decode_does(tmp_path):
    stored = photo_like(1210, 905).transpose(Image.Transpose.ROTATE_90)  # EXIF 6 turns it back
    exif = stored.getexif()
    exif[0x0112] = 6
    path = str(tmp_path / "rotated.jpg")
    stored.save(path, exif=exif, quality=90)
    timm_tf = train_transform(128, LEVEL, "bicubic")
    ours = CropThenAugment.from_timm(timm_tf)
    upright = load_rgb(path, FULL)
    assert upright.size == (1210, 905)
    for seed in range(4):
        seed_all(seed)
        expected = timm_tf(upright)
        seed_all(seed)
        top, left, h, w = timm_tf.transforms[0].get_params(
            upright, LEVEL["scale"], timm_tf.transforms[0].ratio
        )
        seed_all(seed)
        source = Recording(path)
        got = ours(source)
        assert source.size == (1210, 905) and source.box == (left, top, left + w, top + h)
        assert mean_difference(got, expected) < 3, seed


def test_an_image_in_memory_is_cut_the_same_way():
    """The data cache's stored image: the same draws, one box resize."""
    image = photo_like(300, 200)
    timm_tf = train_transform(64, LEVEL, "bicubic")
    ours = CropThenAugment.from_timm(timm_tf)
    for seed in range(3):
        seed_all(seed)
        expected = timm_tf(image)
        seed_all(seed)
        assert mean_difference(ours(image), expected) < 3


def test_a_pipeline_that_does_not_start_with_timms_crop_is_refused():
    with pytest.raises(TypeError, match="random-resized crop"):
        CropThenAugment.from_timm(eval_transform(64, 0.875, "bicubic"))


def test_the_photo_is_not_flat():
    """What the bounds above rely on: a flip or a shift of the photo changes it a lot."""
    pixels = np.asarray(photo_like(240, 180), float)
    assert np.abs(pixels - pixels[:, ::-1]).mean() > 20
