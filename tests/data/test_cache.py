"""data.cache: every store gives identical batches; without a store the batches follow the same
order and labels, and an image that no path reduces is cut from the very same pixels (a big JPEG
decodes at the scale its own crop needs instead: effnet.data.sources). The disk store is shared
between processes and follows changed files. Real images, real loader workers."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.data import cache, folders
from effnet.data.datamodule import ImageDataModule
from effnet.data.decode import base_image, size_sample
from effnet.preprocessing import Preprocessing
from tests.helpers import ROOT, compose_cfg, source_path

PREP = Preprocessing(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)


def photos(root, per_class: int = 6):
    """JPEGs big enough to decode at a reduced DCT scale, large PNGs the store reduces, an
    EXIF-rotated JPEG, a grayscale one and a small one: every way base_image can go."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (300 + 37 * i, 220 + 23 * i) if i % 2 else (180, 240)
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            pixels[..., c] = 220
            image = Image.fromarray(pixels)
            if i == 0:
                image.save(root / name / f"{i}.png")
            elif i == 1:
                exif = image.getexif()
                exif[0x0112] = 6  # shown rotated by 90 degrees
                image.save(root / name / f"{i}.jpg", exif=exif)
            elif i == 2:
                image.convert("L").save(root / name / f"{i}.jpg")
            elif i == 3:
                image.resize((40, 30)).save(root / name / f"{i}.jpg")
            else:
                image.save(root / name / f"{i}.jpg", quality=90)
    return root


def batches(split, mode: str, workers: int, tmp_path, aug: str = "standard", epochs: int = 2):
    """Each epoch's batches, and the paths of each batch's images in order."""
    dm = ImageDataModule(
        split,
        PREP,
        compose_cfg([]).augment[aug],
        4,
        workers,
        seed=7,
        cache=mode,
        cache_dir=tmp_path / "cache",
    )
    loader = dm.train_dataloader()
    out, paths = [], []
    for epoch in range(epochs):
        dm.train_sampler.set_epoch(epoch)
        out.append([b for b in loader])
        order = [split.train[i][0] for i, _ in dm.train_sampler]
        paths.append([order[b * 4 : b * 4 + 4] for b in range(len(out[-1]))])
    return out, paths, dm.train_set.store


def unreduced(path: str) -> bool:
    """An image no crop of which decodes reduced (short side under twice PREP's 32 px, or not a
    JPEG) and that the store keeps as decoded (short side under twice the decode size, 114 px):
    it is cut from the very same pixels with or without a store."""
    with Image.open(path) as img:
        short = min(img.size)
        return short < 2 * 32 or (img.format != "JPEG" and short < 2 * 114)


def assert_same_where_unreduced(split, tmp_path, aug: str, mode: str, workers: int) -> None:
    """Without a store each sample decodes at the scale its crop needs and draws the crop on the
    full-size image; from the store it draws on the stored image. The order and labels are the
    same, and the images that no path reduces are identical bit for bit."""
    expected, paths, _ = batches(split, "none", 0, tmp_path, aug=aug)
    got, _, store = batches(split, mode, workers, tmp_path, aug=aug)
    assert store.stored() == len(split.train), "every training image is in the store after one epoch"
    same = 0
    for epoch_expected, epoch_got, epoch_paths in zip(expected, got, paths, strict=True):
        for (images, labels), (cached, cached_labels), names in zip(
            epoch_expected, epoch_got, epoch_paths, strict=True
        ):
            assert torch.equal(labels, cached_labels)
            for image, cached_image, name in zip(images, cached, names, strict=True):
                if unreduced(name):
                    assert torch.equal(image, cached_image), name
                    same += 1
    assert same >= 4, "the photos hold unreduced images in every epoch"


@pytest.mark.parametrize("mode,workers", [("ram", 2), ("disk", 2)])  # ram in-process: the next test
def test_cached_batches_match_decoded_ones(tmp_path, mode, workers):
    split = folders.discover(photos(tmp_path / "data"), 0.25, 0)
    assert_same_where_unreduced(split, tmp_path, "standard", mode, workers)


def test_every_store_gives_identical_batches(tmp_path):
    """ram (filled by the first epoch, by workers or the main process) and disk (built before)
    crop the same stored images: identical batches, whatever the store and the workers."""
    split = folders.discover(photos(tmp_path / "data"), 0.25, 0)
    expected, _, _ = batches(split, "ram", 0, tmp_path)
    for mode, workers in (("ram", 2), ("disk", 2)):
        got, _, _ = batches(split, mode, workers, tmp_path)
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for e, g in zip(expected, got, strict=True)
            for a, b in zip(e, g, strict=True)
        ), mode


def test_heavy_augmentation_matches_from_the_store_too(tmp_path):
    split = folders.discover(photos(tmp_path / "data"), 0.25, 0)
    assert_same_where_unreduced(split, tmp_path, "heavy", "ram", 2)


def test_the_header_predicts_the_decoded_shape(tmp_path):
    root = photos(tmp_path / "data")
    for path in sorted(root.rglob("*.*")):
        for side in (20, 55, 100):
            image = base_image(str(path), side)
            assert cache.base_shape(str(path), side) == (image.height, image.width), (path, side)
            assert min(image.size) < 2 * side or min(image.size) == min(Image.open(path).size)


BUILD = """
import sys
from effnet.data import cache, folders
split = folders.discover(sys.argv[1], 0.25, 0)
_, counts = cache.disk_store([p for p, _ in split.train], 37, split.root, cache.Path(sys.argv[2]))
print(counts["reused"], counts["decoded"])
"""


def test_the_disk_store_is_reused_by_another_process_and_follows_changed_files(tmp_path):
    root = photos(tmp_path / "data")
    split = folders.discover(root, 0.25, 0)
    paths = [p for p, _ in split.train]
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(root), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": source_path()},
        check=True,
    )
    assert built.stdout.split() == ["0", str(len(paths))]

    store, counts = cache.disk_store(paths, 37, split.root, tmp_path / "cache")
    assert counts == {"reused": len(paths), "decoded": 0, "failed": 0}
    assert all(np.array_equal(store.get(i), np.asarray(base_image(p, 37))) for i, p in enumerate(paths))

    changed = paths[-1]
    Image.new("RGB", (90, 60), "orange").save(
        changed, format=Image.open(changed).format
    )  # new size and shape
    store, counts = cache.disk_store(paths, 37, split.root, tmp_path / "cache")
    assert counts == {"reused": len(paths) - 1, "decoded": 1, "failed": 0}
    assert np.array_equal(store.get(len(paths) - 1), np.asarray(base_image(changed, 37)))
    assert np.array_equal(store.get(0), np.asarray(base_image(paths[0], 37))), "the others are untouched"


def test_size_sample_feeds_the_store_estimate(tmp_path):
    from effnet import recipes

    root = photos(tmp_path / "data")
    paths = sorted(str(p) for p in root.rglob("*.*"))
    sizes = size_sample(paths, k=len(paths))
    exact = sum(np.asarray(base_image(p, 40)).nbytes for p in paths)
    assert recipes.cache_bytes(sizes, len(paths), 40) == pytest.approx(exact, rel=0.02)
