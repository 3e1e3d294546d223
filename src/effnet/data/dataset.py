"""The training and eval image sets and the order they are drawn in: images to uint8 tensors on
the CPU, each augmented from a seed of its own.

Keeping the workers' output uint8 quarters the bytes moved per image and leaves the float work to
the accelerator: a small model like B0 is usually limited by its loader, not by its GPU. The
sampler and the per-sample seeding live here with the dataset because together they make an
epoch's batches a function of (seed, epoch) alone, which exact resume relies on
(effnet.checkpoints.resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, get_worker_info

from effnet.data.cache import Store
from effnet.data.decode import DECODE_ERRORS, load_rgb
from effnet.data.folders import Sample
from effnet.data.sources import InMemory, Source

log = logging.getLogger("effnet")


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
def seeded(seed: int) -> Iterator[None]:
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
    sample, so one bad file never ends an epoch.

    What the transform gets: with `open_source` and no store, the source it opens for the path
    (training: effnet.data.sources.ImageFile, which the transform's crop decodes at the scale that
    crop needs, effnet.data.crop); otherwise the image `decode(path, min_decode_size)` gives. With
    a `store` (effnet.data.cache) that image is decoded once and read back from the store after.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform,
        min_decode_size: int,
        decode: Callable[[str, int], Image.Image] = load_rgb,
        store: Store | None = None,
        open_source: Callable[[str], Source] | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.min_decode_size = min_decode_size
        self.decode = decode
        self.store = store
        self.open_source = open_source
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
                # a source from open_source decodes inside the transform: its errors land here too
                return self._augment(self._source(slot, path)), label
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
        raise RuntimeError("no image in this set can be decoded any more; rerun to scan the folder again")

    def _source(self, slot: int, path: str) -> Source | Image.Image:
        if self.store is None and self.open_source is not None:
            return self.open_source(path)
        return self._image(slot, path)

    def _image(self, slot: int, path: str) -> Image.Image | Source:
        if self.store is not None:
            pixels = self.store.get(slot)
            if pixels is not None:
                return InMemory(pixels)  # a view: the crop's cut is the first copy (effnet.data.crop)
        image = self.decode(path, self.min_decode_size)
        if self.store is not None:
            self.store.put(slot, np.asarray(image))
        return image

    def _augment(self, image: Source | Image.Image, attempts: int = 3) -> torch.Tensor:
        """timm's RandAugment posterize asks for 0 bits at full magnitude, which Pillow >= 13
        refuses with ValueError: draw the random ops again (the streams moved on, so it differs)."""
        for attempt in range(attempts):
            try:
                return self.transform(image)
            except ValueError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")
