"""The training crop from a source: timm's own draw on the full-size upright image, so every op
after it draws what it would after timm's crop; pixels from a decode reduced only as far as that
crop allows, so the output is timm's up to resampling."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import interp_mode_to_str, str_to_pil_interp
from torchvision.transforms import ColorJitter
from torchvision.transforms.v2 import functional as F

from effnet.data.crop import CropThenAugment, TensorJitter, cut
from effnet.data.dataset import seed_all
from effnet.data.decode import load_rgb
from effnet.data.sources import ImageFile
from effnet.data.transforms import eval_transform, train_transform
from tests.helpers import photo_like

LEVEL = {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.3, "rand_augment": None}
FULL = 10**6  # load_rgb's min_size for a decode in full


class Recording(ImageFile):
    """The file source, keeping the box it was asked for."""

    def region(self, box, out):
        self.box = box
        return super().region(box, out)


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
        assert ours.crop.params((1200, 900)) == ((left, top, left + w, top + h), resample), seed
        seed_all(seed)
        source = Recording(photo)
        ours.crop(source)
        assert source.box == (left, top, left + w, top + h), seed
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


def test_the_tensor_jitter_is_torchvisions_bit_for_bit_on_timms_draws():
    """TensorJitter draws what timm's ColorJitter draws and gives what torchvision's uint8 tensor
    ops give for those draws, op by op in the drawn order; it leaves the streams where the op does."""
    image = F.pil_to_tensor(photo_like(160, 120))
    jitter = ColorJitter(0.4, 0.4, 0.4)
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    orders = set()
    for seed in range(12):
        seed_all(seed)
        order, *factors, _ = jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, None)
        after = torch.rand(1)
        expected = image
        for op in (i for i in order.tolist() if i < 3):
            expected = ops[op](expected, factors[op])
        orders.add(tuple(i for i in order.tolist() if i < 3))
        seed_all(seed)
        got = TensorJitter(jitter)(image)
        assert torch.equal(torch.rand(1), after), seed
        assert got.dtype == torch.uint8 and torch.equal(got, expected), seed
        assert mean_difference(got, image) > 1, "a draw changes the image"
    assert len(orders) >= 4, "the order is drawn too"
    with pytest.raises(ValueError, match="hue"):
        TensorJitter(ColorJitter(0.4, 0.4, 0.4, 0.1))


def test_the_tensor_cut_is_pillows_up_to_rounding_and_never_a_view_of_the_store():
    """The tensor resize uses Pillow's filters: the same box comes out within a grey level, and
    far from a neighbouring box. A cut that resizes nothing is still a copy; a fractional box
    (a reduced decode's) goes to Pillow and comes back a tensor."""
    stored = np.array(photo_like(300, 200))
    for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
        pillow = F.pil_to_tensor(Image.fromarray(stored).resize((64, 48), resample, box=(40, 20, 240, 170)))
        got = cut(stored, (40, 20, 240, 170), (64, 48), resample, tensor=True)
        assert got.shape == (3, 48, 64) and got.dtype == torch.uint8
        assert mean_difference(got, pillow) < 1, resample
        shifted = cut(stored, (60, 20, 260, 170), (64, 48), resample, tensor=True)
        assert mean_difference(shifted, pillow) > 5
    whole = cut(stored, (0, 0, 300, 200), (300, 200), Image.Resampling.BICUBIC, tensor=True)
    assert torch.equal(whole, torch.from_numpy(stored).permute(2, 0, 1))
    whole.zero_()
    assert stored.any(), "the stored pixels are untouched"
    box = (40.5, 20.25, 240.5, 170.25)
    pillow = Image.fromarray(stored).resize((64, 48), Image.Resampling.BICUBIC, box=box)
    assert torch.equal(cut(stored, box, (64, 48), Image.Resampling.BICUBIC, True), F.pil_to_tensor(pillow))
    assert cut(stored, box, (64, 48), Image.Resampling.BICUBIC, False).size == (64, 48)


@pytest.mark.parametrize(
    "aug,tensor",
    [({"color_jitter": 0.0}, True), ({}, True), ({"rand_augment": "rand-m9-mstd0.5-inc1"}, False)],
)
def test_the_levels_without_randaugment_run_on_tensors(aug, tensor):
    """light (flip) and standard (flip, jitter) are cut and augmented as tensors; RandAugment
    needs PIL, so heavy stays on Pillow. Either way the output is a uint8 tensor of the size."""
    ours = CropThenAugment.from_timm(train_transform(48, {**LEVEL, **aug}, "bicubic"))
    assert ours.crop.tensor is tensor
    assert any(isinstance(op, TensorJitter) for op in ours.rest.transforms) is (tensor and aug == {})
    seed_all(0)
    out = ours(np.array(photo_like(120, 90)))
    assert out.dtype == torch.uint8 and out.shape == (3, 48, 48)
