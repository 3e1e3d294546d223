"""The DataModule's loaders: uint8 batches at the image size, drop_last on train only; workers
that leave stop signals to the trainer, and that still end with a script that never closes them."""

import os
import signal
import subprocess
import sys

import torch

from effnet.data import folders
from effnet.data.datamodule import ImageDataModule
from effnet.preprocessing import Preprocessing
from tests.helpers import ROOT, compose_cfg, source_path


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


LIVE_LOADER = """
import sys
from effnet.data import folders
from effnet.data.datamodule import ImageDataModule
from effnet.preprocessing import Preprocessing
split = folders.discover(sys.argv[1], 0.25, 0)
prep = Preprocessing(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
level = {"scale": [0.35, 1.0], "hflip": 0.5, "color_jitter": 0.0, "rand_augment": None}
loader = ImageDataModule(split, prep, level, micro_batch=4, num_workers=1).train_dataloader()
batches = iter(loader)  # held to the end, as a notebook or script might
images, _ = next(batches)  # mid-epoch: the persistent worker is alive when the script ends
print(tuple(images.shape))
"""


def test_a_script_that_ends_with_a_live_loader_exits(flat_folder):
    """multiprocessing's exit handler stops daemonic children with SIGTERM and waits for them; a
    worker ignores SIGTERM (above), so without the DataModule's own exit handler this hangs."""
    ended = subprocess.run(
        [sys.executable, "-c", LIVE_LOADER, str(flat_folder)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": source_path()},
        timeout=90,
    )
    assert ended.returncode == 0, ended.stderr[-2000:]
    assert ended.stdout.strip() == "(4, 3, 32, 32)"
