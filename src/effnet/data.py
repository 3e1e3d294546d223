"""Images to uint8 tensors on the CPU; normalisation, erasing and mixup happen on the device.

Keeping the workers' output uint8 quarters the bytes moved per image and leaves the float work to
the accelerator: a small model like B0 is usually limited by its loader, not by its GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import lightning as L
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset

from effnet.folders import Sample, Split


def load_rgb(path: str, min_size: int) -> Image.Image:
    """Decode as RGB, upright per EXIF. Large JPEGs decode at a reduced DCT scale that still
    leaves at least `min_size` pixels on the short side: several times faster on big photos."""
    with Image.open(path) as img:
        img.draft("RGB", (min_size, min_size))
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


class ImageList(Dataset):
    """(path, label) pairs -> (uint8 CHW tensor, label)."""

    def __init__(self, samples: list[Sample], transform, min_decode_size: int) -> None:
        self.samples = samples
        self.transform = transform
        self.min_decode_size = min_decode_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path, self.min_decode_size)), label


def train_transform(image_size: int, level: Mapping, interpolation: str):
    """timm's training pipeline at one augmentation level, ending in a uint8 tensor."""
    return create_transform(
        image_size,
        is_training=True,
        scale=tuple(level["scale"]),
        hflip=level["hflip"],
        color_jitter=level["color_jitter"] or None,
        auto_augment=level["rand_augment"],
        interpolation=interpolation,
        normalize=False,
    )


def eval_transform(image_size: int, crop_pct: float, interpolation: str):
    return create_transform(
        image_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation, normalize=False
    )


def default_workers(devices_per_node: int) -> int:
    """One worker per core left over after the training processes, at most 8 per process."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(1, devices_per_node) - 1))


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        split: Split,
        image_size: int,
        level: Mapping,
        micro_batch: int,
        num_workers: int,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.split = split
        self.micro_batch = micro_batch
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        # A random crop keeping `scale[0]` of the area needs 1/sqrt(scale[0]) times the output size.
        train_decode = math.ceil(image_size / math.sqrt(level["scale"][0]))
        eval_decode = math.ceil(image_size / crop_pct)
        self.train_set = ImageList(
            split.train, train_transform(image_size, level, interpolation), train_decode
        )
        eval_tf = eval_transform(image_size, crop_pct, interpolation)
        self.val_set = ImageList(split.val, eval_tf, eval_decode)
        self.test_set = ImageList(split.test, eval_tf, eval_decode)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.micro_batch,
            shuffle=train,
            drop_last=train and len(dataset) > self.micro_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
