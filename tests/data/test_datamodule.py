"""The DataModule's loaders: uint8 batches at the image size, drop_last on train only."""

import os
import signal

import torch

from effnet.data import folders
from effnet.data.datamodule import ImageDataModule
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


class WorkerState(torch.utils.data.Dataset):
    """Reports, from inside the loader worker, its priority and how it treats SIGTERM."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[int, bool]:
        return os.nice(0), signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_workers_ignore_stop_signals_and_run_at_the_planned_priority(flat_folder):
    split = folders.discover(flat_folder, 0.25, 0)
    prep = Preprocessing(48, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    light = compose_cfg([]).augment.light
    base = os.nice(0)
    for nice in (0, 10):
        dm = ImageDataModule(split, prep, light, micro_batch=4, num_workers=1, worker_nice=nice)
        loader = dm._loader(WorkerState(), train=False)
        priority, ignored = next(iter(loader))  # a batch of one: (niceness, ignored) tensors
        assert int(priority) == min(19, base + nice) and bool(ignored)
    assert os.nice(0) == base, "the training process keeps its priority"
