import torch
from PIL import Image

from effnet.data import folders
from effnet.data.loaders import ImageDataModule, load_rgb
from effnet.preprocessing import Preprocessing
from tests.helpers import compose_cfg


def test_loaders_yield_uint8_at_the_image_size(flat_folder):
    split = folders.discover(flat_folder, 0.25, 0)
    heavy = compose_cfg([]).augment.heavy
    prep = Preprocessing(48, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    dm = ImageDataModule(split, prep, heavy, micro_batch=4, num_workers=0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 48, 48)
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.dtype == torch.uint8 and val_images.shape[1:] == (3, 48, 48)
    assert len(dm.train_dataloader()) == 18 // 4  # drop_last on train only
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 6


def test_large_jpegs_decode_reduced_but_not_below_the_size_needed(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), "red").save(path)
    img = load_rgb(str(path), min_size=300)
    assert img.mode == "RGB" and 300 <= min(img.size) < 1500


def test_exif_rotation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), "blue")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_rgb(str(path), 100).size == (20, 40)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        Image.new(mode, (30, 30)).save(tmp_path / f"{mode}.png")
        assert load_rgb(str(tmp_path / f"{mode}.png"), 10).mode == "RGB"
