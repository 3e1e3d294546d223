"""Images to uint8 tensors on the CPU; normalisation, erasing and mixup happen on the device.

Keeping the workers' output uint8 quarters the bytes moved per image and leaves the float work to
the accelerator: a small model like B0 is usually limited by its loader, not by its GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from effnet.data import pixels
from effnet.data.folders import Sample, Split
from effnet.preprocessing import Preprocessing
from effnet.recipes import decode_size

if TYPE_CHECKING:
    from effnet.data.cache import Store

log = logging.getLogger("effnet")

# What a file that went bad after the scan raises while decoding (PIL uses all of these).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_rgb(path: str, min_size: int) -> Image.Image:
    """Decode as RGB, upright per EXIF. Large JPEGs decode at a reduced DCT scale that still
    leaves at least `min_size` pixels on the short side: several times faster on big photos.
    An image over the pixel limit (effnet.data.pixels) is refused before it is decoded."""
    with Image.open(path) as img:
        pixels.check(img)
        img.draft("RGB", (min_size, min_size))
        img = ImageOps.exif_transpose(img)
        return to_8bit(img).convert("RGB")


def base_image(path: str, side: int) -> Image.Image:
    """A training image as every epoch starts from it, cached or not (effnet.data.cache):
    `load_rgb` (a JPEG decodes at the smallest DCT scale that keeps `side` on the short side),
    then an image still at least twice `side` (a large PNG, a giant JPEG) reduced by an integer
    factor, as a JPEG draft would. `side` is the short side the smallest random crop needs."""
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


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one draw of one epoch, independent of process, worker and rank."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    """Seed the streams timm's transforms draw from (torch, numpy for RandAugment, random)."""
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds every GPU (slow)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed for one sample. In the main process (num_workers=0) the model's dropout draws from
    the same streams, so they are put back afterwards; a worker process has no one to disturb."""
    if get_worker_info() is not None:
        seed_all(seed)
        yield
        return
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    seed_all(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class EpochSampler(Sampler):
    """Shuffled (or class-weighted) order that depends only on (seed, epoch).

    Yields (index, seed) pairs: each draw carries the seed of its own augmentation, so the batches
    of epoch N are the same whether the run got there directly or was resumed, and whatever the
    number of loader workers. Lightning calls set_epoch before every epoch (and wraps this sampler
    to shard it in DDP).
    """

    def __init__(self, size: int, seed: int, weights: Sequence[float] | None = None) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        for position, index in enumerate(order.tolist()):
            yield index, sample_seed(self.seed, epoch, position)


# What SLURM (time limit, scancel, preemption) and `kill -- -PGID` send to every process of a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def leave_stops_to_the_trainer(worker_id: int) -> None:
    """In a loader worker: ignore the stop signals. A signal sent to the whole job would otherwise
    kill the workers first, and their death would end the run with a traceback instead of the
    trainer's checkpoint and resume line (effnet.training.interrupts). The trainer shuts them down;
    a worker whose trainer died exits on its own (PyTorch's worker watchdog)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """In DDP, each process scores a disjoint share and every image exactly once.

    Lightning's default DistributedSampler pads the shares to equal length with repeated images,
    which the confusion matrix and val/acc would count twice. Validation has no per-step
    collective, so uneven shares are safe. None outside DDP: Lightning's sequential default.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class ImageList(Dataset):
    """(path, label) pairs -> (uint8 CHW tensor, label).

    Takes an index, or an (index, seed) pair from EpochSampler to augment reproducibly. A file
    that cannot be decoded (it changed after the scan) is logged and replaced by the next good
    sample, so one bad file never ends an epoch. `decode(path, min_decode_size)` gives the image
    the transform starts from; with a `store` (effnet.data.cache) it is decoded once and read
    back from the store afterwards.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform,
        min_decode_size: int,
        decode: Callable[[str, int], Image.Image] = load_rgb,
        store: Store | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.min_decode_size = min_decode_size
        self.decode = decode
        self.store = store
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            return self._load(index)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):
            slot = (index + offset) % len(self.samples)
            path, label = self.samples[slot]
            if path in self.failed:
                continue
            try:
                image = self._image(slot, path)
            except DECODE_ERRORS as exc:
                self.failed.add(path)
                log.warning(
                    "skipped %s: %s: %s (changed since the scan?); using another image in its place "
                    "(%d skipped so far in this process)",
                    path,
                    type(exc).__name__,
                    exc,
                    len(self.failed),
                )
                continue
            return self._augment(image), label
        raise RuntimeError("no image in this set can be decoded any more; rerun to scan the folder again")

    def _image(self, slot: int, path: str) -> Image.Image:
        if self.store is not None:
            pixels = self.store.get(slot)
            if pixels is not None:
                return Image.fromarray(pixels)  # a copy: transforms never touch the store
        image = self.decode(path, self.min_decode_size)
        if self.store is not None:
            self.store.put(slot, np.asarray(image))
        return image

    def _augment(self, image: Image.Image, attempts: int = 3) -> torch.Tensor:
        """timm's RandAugment posterize asks for 0 bits at full magnitude, which Pillow >= 13
        refuses with ValueError: draw the random ops again (the streams moved on, so it differs)."""
        for attempt in range(attempts):
            try:
                return self.transform(image)
            except ValueError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


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


class ImageDataModule(L.LightningDataModule):
    """The run's three image sets and their loaders, as the plan's preprocessing and augmentation say.

    cache: data.cache as the plan resolved it (none, ram or disk; effnet.data.cache). The store
    holds the training images; validation decodes each epoch as before (no augmentation to save).
    """

    def __init__(
        self,
        split: Split,
        preprocessing: Preprocessing,
        level: Mapping,
        micro_batch: int,
        num_workers: int,
        pin_memory: bool = False,
        seed: int = 0,
        sample_weights: Sequence[float] | None = None,
        cache: str = "none",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.split = split
        self.micro_batch = micro_batch
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache, self.cache_dir = cache, cache_dir
        size, interpolation = preprocessing.image_size, preprocessing.interpolation
        self.train_set = ImageList(
            split.train,
            train_transform(size, level, interpolation),
            decode_size(size, level["scale"][0]),
            decode=base_image,
        )
        eval_tf = preprocessing.transform()
        self.val_set = ImageList(split.val, eval_tf, preprocessing.resize)
        self.test_set = ImageList(split.test, eval_tf, preprocessing.resize)
        self.train_sampler = EpochSampler(len(self.train_set), seed, sample_weights)

    def attach_store(self) -> Store | None:
        """Create the training store once (before any worker forks, so all of them share it)."""
        if self.cache == "none" or self.train_set.store is not None:
            return self.train_set.store
        from effnet.data import cache

        paths = [path for path, _ in self.split.train]
        side, threads = self.train_set.min_decode_size, max(1, self.num_workers)
        if self.cache == "ram":
            self.train_set.store = cache.ram_store(paths, side, threads)
        else:
            directory = self.cache_dir or cache.CACHE_DIR
            self.train_set.store, _ = cache.disk_store(paths, side, self.split.root, directory, threads)
        return self.train_set.store

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.micro_batch,
            sampler=self.train_sampler if train else eval_sampler(dataset),
            drop_last=train and len(dataset) > self.micro_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # the workers' base seed comes from here, not from the global RNG the model uses
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=leave_stops_to_the_trainer if self.num_workers else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.attach_store()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
