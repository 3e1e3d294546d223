"""Training's per-sample decode: a JPEG decodes at the largest DCT reduction that keeps the crop at
least the output size, any other format in full, and the box is cut from the decoded pixels."""

import numpy as np
from PIL import Image

from effnet.data.decode import load_rgb
from effnet.data.sources import ImageFile, InMemory, reduction
from tests.helpers import photo_like


def test_reduction_is_the_largest_dct_scale_that_keeps_the_output_size():
    assert reduction((2400, 1800), (224, 224)) == 8  # 1800 / 8 = 225
    assert reduction((1791, 2400), (224, 224)) == 4  # the short side decides
    assert reduction((448, 448), (224, 224)) == 2
    assert reduction((447, 900), (224, 224)) == 1
    assert reduction((100, 80), (224, 224)) == 1, "a crop upsampled anyway is not decoded reduced"
    assert reduction((1800, 900), (448, 224)) == 4, "each axis against its own output side"


def test_a_big_crop_of_a_big_jpeg_decodes_at_one_eighth(tmp_path):
    path = tmp_path / "big.jpg"
    photo_like(2400, 1800).save(path, quality=90)
    source = ImageFile(str(path))
    assert source.size == (2400, 1800) and source.decoded is None, "only the header so far"
    out = source.resized_crop((0, 0, 2400, 1800), (224, 224), Image.Resampling.BICUBIC)
    assert source.decoded == (300, 225) and out.size == (224, 224) and out.mode == "RGB"
    source.resized_crop((1000, 800, 1500, 1300), (224, 224), Image.Resampling.BICUBIC)
    assert source.decoded == (1200, 900), "a 500 px crop at 224 px: 1/2"


def test_other_formats_decode_in_full_and_cut_the_same_box(tmp_path):
    path = tmp_path / "big.png"
    image = photo_like(900, 600)
    image.save(path)
    source = ImageFile(str(path))
    out = source.resized_crop((100, 50, 900, 550), (64, 64), Image.Resampling.BILINEAR)
    assert source.decoded == (900, 600)
    expected = InMemory(image).resized_crop((100, 50, 900, 550), (64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_an_exif_rotated_jpeg_has_its_upright_size_and_pixels(tmp_path):
    upright = photo_like(1210, 905)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 turns it back when shown
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    source = ImageFile(str(path))
    assert source.size == (1210, 905)
    box = (200, 100, 1100, 900)
    out = source.resized_crop(box, (200, 200), Image.Resampling.BICUBIC)
    assert source.decoded == (303, 227), "1/4 of 1210 x 905, rounded up, upright"
    full = InMemory(load_rgb(str(path), 10**6)).resized_crop(box, (200, 200), Image.Resampling.BICUBIC)
    # the same region through another low-pass filter (the noise differs most); the mirror image
    # of it, what a wrong turn would give, is an order of magnitude further off
    assert np.abs(np.asarray(out, float) - np.asarray(full, float)).mean() < 3
    mirrored = full.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert np.abs(np.asarray(out, float) - np.asarray(mirrored, float)).mean() > 20
