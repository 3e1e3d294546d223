"""The run's three image sets and their DataLoaders, as the plan says: what training (and the
bench, through effnet.training.train.data_module) hands to Lightning.

The top of effnet.data: it puts decode, transforms, dataset, sampler and cache together, and no
other module of effnet.data imports it.
"""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from effnet.data.cache import CACHE_DIR, Store, disk_store, ram_store
from effnet.data.crop import CropThenAugment
from effnet.data.dataset import EpochSampler, ImageList, eval_sampler
from effnet.data.decode import base_image
from effnet.data.folders import Split
from effnet.data.sources import ImageFile
from effnet.data.transforms import train_transform
from effnet.preprocessing import Preprocessing
from effnet.recipes import decode_size

# What SLURM (time limit, scancel, preemption) and `kill -- -PGID` send to every process of a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def leave_stops_to_the_trainer(worker_id: int) -> None:
    """In a loader worker: ignore the stop signals. A signal sent to the whole job would otherwise
    kill the workers first, and their death would end the run with a traceback instead of the
    trainer's checkpoint and resume line (effnet.training.interrupts). The trainer shuts them down;
    a worker whose trainer died exits on its own (PyTorch's worker watchdog)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# Every loader with workers that this process made and still holds (weak: a loader that is
# gone has ended its workers already).
_LOADERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()


@atexit.register
def _end_live_workers() -> None:
    """At interpreter exit, end the persistent workers of loaders still alive, as deleting the
    loader would. multiprocessing's own exit handler stops daemonic children with SIGTERM and
    waits for them; the workers ignore SIGTERM (leave_stops_to_the_trainer), so a script that ends
    with a loader alive would wait forever. atexit runs this first: it is registered after
    multiprocessing's (which torch imports before this module)."""
    for loader in list(_LOADERS):
        iterator = loader._iterator  # the persistent one; its shutdown is what its __del__ calls
        if iterator is not None:
            iterator._shutdown_workers()


@dataclass(frozen=True)
class WorkerStart:
    """What each loader worker does first (a class, not a closure: spawned workers unpickle it).

    nice: lower the worker's priority by this much. On a CPU-only run the training step's threads
    take every core (effnet.recipes.intra_op_threads), and a worker at equal priority would stall
    them each time it wakes; niced, it runs on the cycles the step leaves."""

    nice: int = 0

    def __call__(self, worker_id: int) -> None:
        leave_stops_to_the_trainer(worker_id)
        if self.nice:
            os.nice(self.nice)


class ImageDataModule(L.LightningDataModule):
    """The run's three image sets and their loaders, as the plan's preprocessing and augmentation say.

    cache: data.cache as the plan resolved it (none, ram or disk; effnet.data.cache). The store
    holds the training images; validation decodes each epoch as before (no augmentation to save).
    Without a store each training sample draws its crop first and decodes only what that crop
    needs (effnet.data.sources); from a store it is cut from the stored image the same way.
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
        worker_nice: int = 0,
    ) -> None:
        super().__init__()
        self.split = split
        self.micro_batch = micro_batch
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache, self.cache_dir = cache, cache_dir
        self.worker_start = WorkerStart(worker_nice)
        size, interpolation = preprocessing.image_size, preprocessing.interpolation
        self.train_set = ImageList(
            split.train,
            CropThenAugment.from_timm(train_transform(size, level, interpolation)),
            decode_size(size, level["scale"][0]),
            decode=base_image,  # what a store holds (attach_store)
            open_source=ImageFile,  # without one
        )
        eval_tf = preprocessing.transform()
        self.val_set = ImageList(split.val, eval_tf, preprocessing.resize)
        self.test_set = ImageList(split.test, eval_tf, preprocessing.resize)
        self.train_sampler = EpochSampler(len(self.train_set), seed, sample_weights)

    def attach_store(self) -> Store | None:
        """Create the training store once (before any worker forks, so all of them share it)."""
        if self.cache == "none" or self.train_set.store is not None:
            return self.train_set.store
        paths = [path for path, _ in self.split.train]
        side, threads = self.train_set.min_decode_size, max(1, self.num_workers)
        if self.cache == "ram":
            self.train_set.store = ram_store(paths, side, threads)
        else:
            directory = self.cache_dir or CACHE_DIR
            self.train_set.store, _ = disk_store(paths, side, self.split.root, directory, threads)
        return self.train_set.store

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        loader = DataLoader(
            dataset,
            batch_size=self.micro_batch,
            sampler=self.train_sampler if train else eval_sampler(dataset),
            drop_last=train and len(dataset) > self.micro_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # the workers' base seed comes from here, not from the global RNG the model uses
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=self.worker_start if self.num_workers else None,
        )
        if self.num_workers:
            _LOADERS.add(loader)
        return loader

    def train_dataloader(self) -> DataLoader:
        self.attach_store()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
