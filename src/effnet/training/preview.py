"""show_batch=true with dry_run=true: the plan's first augmented training batch, drawn without
training (train_batches.png, as a run's BatchPreview draws it), before any run folder exists.

The loader is the run's (effnet.training.train.data_module) with its transforms, loading in this
process and without a data cache: one batch is read. The device's share of the augmentation
(erasing, mixup) is the module's own (ClassifierModule.augment), on a network with random weights
that is never run, so nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch

from effnet.data.folders import Split
from effnet.plan import RunPlan
from effnet.plots import batch_png
from effnet.run_names import fresh_name
from effnet.training.callbacks import BATCH_FILE, batch_title
from effnet.training.module import ClassifierModule
from effnet.training.train import data_module

BATCHES_ROOT = Path("outputs") / "batches"


def first_batch(plan: RunPlan, split: Split) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(uint8 images as the network would see them, their labels, the micro-batch's size): at most
    dashboards.train_batch of the plan's first training batch, augmented as training augments it."""
    loading = dataclasses.replace(plan.loading, workers=0, cache="none")  # one batch: no workers, no store
    L.seed_everything(plan.seed, workers=True, verbose=False)
    images, labels = next(
        iter(data_module(dataclasses.replace(plan, loading=loading), split).train_dataloader())
    )
    module = ClassifierModule(**plan.module_args(), init=None)
    with torch.no_grad():
        augmented, _ = module.augment(module.normalize(images), labels)
    tiles = plan.records.train_batch
    return module.to_uint8(augmented[:tiles]), labels[:tiles], len(labels)


def show_batch(plan: RunPlan, split: Split, root: Path = BATCHES_ROOT) -> Path:
    """Draw train_batches.png into root/<timestamp>/ and print where it is."""
    images, labels, batch = first_batch(plan, split)
    reg = plan.regularisation
    title = batch_title(len(images), batch, reg.mixup > 0 or reg.cutmix > 0)
    path = batch_png(
        images, labels.tolist(), list(plan.network.classes), root / fresh_name() / BATCH_FILE, title
    )
    print(f"{title}: {path}", flush=True)
    return path
