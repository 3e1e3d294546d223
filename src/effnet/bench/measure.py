"""The bench's measurements, each on the bench's seeded subset of the plan's training images:

- ceiling: the training step alone, through Lightning, on random uint8 batches already on the device;
- loader: effnet's training loader alone, as a run builds it, and timm's create_loader beside it;
- end to end: real training epochs through effnet.training.train.train, the code train.py runs
  (train_subset is the one place the plan becomes that run);
- the plain loop: effnet.bench.plain_loop, a timm + torch loop with no framework.

Each returns the numbers bench.json holds for it. torch, timm and Lightning are imported inside
each function: bench.py's --help and its config errors must not wait for them.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from effnet.bench.machine import MemoryWatch
from effnet.progress import ticks, track

if TYPE_CHECKING:
    from effnet.data.folders import Split
    from effnet.data.scan import DataReport
    from effnet.plan import RunPlan


def bench_split(split: Split, images: int, val_images: int, seed: int) -> Split:
    """The seeded subset every measurement uses."""
    from effnet.data.folders import Split

    rng = random.Random(seed)
    train = sorted(rng.sample(split.train, min(images, len(split.train))))
    val = sorted(rng.sample(split.val, min(val_images, len(split.val))))
    return Split(split.root, split.classes, train, val, [], split.held_out)


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 2) if seconds > 0 else 0.0


def _device(plan: RunPlan):
    import torch

    return torch.device("cuda" if plan.accelerator == "cuda" else "cpu")


def one_device_trainer_args(plan: RunPlan) -> dict:
    """The plan's Trainer arguments on one device: the bench measures one training process."""
    return {**plan.trainer_args(), "devices": 1, "num_nodes": 1, "strategy": "auto"}


def ceiling(plan: RunPlan, warmup: int, steps: int) -> dict:
    """The training step alone: random uint8 batches already on the device, through Lightning."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, Dataset

    from effnet.training.module import ClassifierModule

    device, micro = _device(plan), plan.batches.micro_batch
    size, classes = plan.network.image_size, len(plan.network.classes)
    generator = torch.Generator().manual_seed(plan.seed)
    batch = (
        torch.randint(0, 256, (micro, 3, size, size), dtype=torch.uint8, generator=generator).to(device),
        torch.randint(0, classes, (micro,), generator=generator).to(device),
    )

    class Repeat(Dataset):
        def __len__(self) -> int:
            return warmup + steps

        def __getitem__(self, i):
            return batch

    times: dict[str, float] = {}

    class Timer(Callback):
        def _sync(self) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self._sync()
                times["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            tick()
            if batch_idx == warmup + steps - 1:
                self._sync()
                times["end"] = time.perf_counter()

    module = ClassifierModule(**plan.module_args(), init=None)  # random weights: same speed
    with ticks(warmup + steps, f"ceiling: {warmup} + {steps} training steps on random batches") as tick:
        trainer = L.Trainer(
            **{
                **one_device_trainer_args(plan),
                "max_epochs": 1,
                "limit_train_batches": warmup + steps,
                "limit_val_batches": 0,
                "num_sanity_val_steps": 0,
            },
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Timer()],
        )
        trainer.fit(module, train_dataloaders=DataLoader(Repeat(), batch_size=None))
    seconds = times["end"] - times["start"]
    return {
        "images_per_sec": _rate(steps * micro, seconds),
        "step_s": round(seconds / steps, 4),
        "steps": steps,
        "micro_batch": micro,
    }


def _epochs(loader, epochs: int, set_epoch, name: str) -> list[float]:
    """Images/s of each full pass over `loader` (from asking for the first batch to the last)."""
    rates = []
    for epoch in range(epochs):
        set_epoch(epoch)
        started, seen = time.perf_counter(), 0
        for images, _ in track(loader, len(loader), f"{name}: epoch {epoch + 1}/{epochs}"):
            seen += len(images)
        rates.append(_rate(seen, time.perf_counter() - started))
    return rates


def _loader_result(rates: list[float], workers: int, **extra) -> dict:
    cold = rates[0]
    cached = statistics.median(rates[1:]) if len(rates) > 1 else None
    per = max(1, workers)
    return {
        "workers": workers,
        "epochs_images_per_sec": rates,
        "cold_images_per_sec": cold,
        "cached_images_per_sec": cached,
        "cold_per_worker": round(cold / per, 2),
        "cached_per_worker": None if cached is None else round(cached / per, 2),
        **extra,
    }


def effnet_loader(plan: RunPlan, split: Split, epochs: int, cuda: bool) -> dict:
    """The training loader alone, as a run builds it."""
    from effnet.training.train import data_module

    datamodule = data_module(plan, split)
    with MemoryWatch(cuda) as memory:
        started = time.perf_counter()
        datamodule.attach_store()  # disk: built (or checked) here, before the first epoch
        setup_s = round(time.perf_counter() - started, 2)
        loader = datamodule.train_dataloader()
        rates = _epochs(loader, epochs, datamodule.train_sampler.set_epoch, "loader")
        del loader  # the persistent workers end here, not during the next measurement
    store = datamodule.train_set.store
    return _loader_result(
        rates,
        plan.loading.workers,
        cache=plan.loading.cache,
        store_setup_s=setup_s,
        store_mb=round(store.nbytes / 1e6, 1) if store is not None else None,
        memory=memory.as_dict(),
    )


def timm_loader(plan: RunPlan, split: Split, epochs: int) -> dict:
    """timm's own create_loader (its prefetcher and fast collate) on the same images, size,
    augmentation, batch and workers."""
    import torch
    from timm.data import ImageDataset, create_loader
    from timm.data.readers.reader import Reader

    class Files(Reader):
        """The bench's training files, in timm's reader interface."""

        def __init__(self, samples) -> None:
            super().__init__()
            self.samples = samples

        def __getitem__(self, index: int):
            path, label = self.samples[index]
            return open(path, "rb"), label

        def __len__(self) -> int:
            return len(self.samples)

        def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
            return self.samples[index][0]

    level, prep = plan.loading.augmentation, plan.preprocessing
    loader = create_loader(
        ImageDataset("", reader=Files(split.train)),
        input_size=(3, prep.image_size, prep.image_size),
        batch_size=plan.batches.micro_batch,
        is_training=True,
        scale=tuple(level["scale"]),
        hflip=level["hflip"],
        color_jitter=level["color_jitter"] or None,
        auto_augment=level["rand_augment"],
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        num_workers=plan.loading.workers,
        pin_memory=plan.loading.pin_memory,
        device=torch.device(_device(plan)),
    )
    rates = _epochs(loader, epochs, lambda epoch: None, "timm create_loader")
    del loader
    return _loader_result(rates, plan.loading.workers)


def pinned_plan(plan: RunPlan, split: Split, epochs: int, threads: int | None) -> RunPlan:
    """The plan of a run that trains exactly as `plan` says, on one device, on the bench's subset
    `split`: derived from the resolved plan rather than resolved again, since the subset's size
    would make data_size=auto or data.cache=auto choose otherwise."""
    recipe = replace(plan.recipe, epochs=epochs, batch_size=plan.recipe.batch_size // plan.world_size)
    return replace(
        plan,
        data=replace(plan.data, train=len(split.train), val=len(split.val), test=0),
        recipe=recipe,
        optimisation=replace(plan.optimisation, epochs=epochs),
        runtime=replace(plan.runtime, sync_batchnorm=False),
        devices=1,
        num_nodes=1,
        strategy="auto",
        loading=replace(plan.loading, threads=threads or plan.loading.threads),
        init=None,  # random weights train at the same speed, and need no network
        weights="random",
        pretrained=False,
        resumed=None,
        records=replace(
            plan.records,
            samples=0,
            loggers={"csv": {"_target_": "effnet.training.loggers.CSVLogger"}},  # metrics.csv is read back
        ),
    )


def train_subset(
    plan: RunPlan, split: Split, report: DataReport, run_dir: Path, epochs: int, threads: int | None
) -> dict:
    """effnet.training.train.train, what train.py runs, on the bench's subset as the plan says; its summary."""
    from effnet.start import Start
    from effnet.training.train import train

    return train(Start(pinned_plan(plan, split, epochs, threads), split, report, Path(run_dir).absolute()))


def _epoch_rows(run_dir: Path) -> list[dict]:
    """Each epoch's train/images_per_sec and train/data_wait from the run's metrics.csv."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/images_per_sec")]
    return [
        {"images_per_sec": float(r["train/images_per_sec"]), "data_wait": float(r["train/data_wait"])}
        for r in rows
    ]


def end_to_end(
    plan: RunPlan,
    split: Split,
    report: DataReport,
    run_dir: Path,
    epochs: int,
    threads: int | None,
    cuda: bool,
) -> dict:
    """Real training epochs through effnet.training.train.train (what train.py runs) on the bench's
    images."""
    with MemoryWatch(cuda) as memory:
        summary = train_subset(plan, split, report, run_dir, epochs, threads)
    rows = _epoch_rows(run_dir)
    rates = [round(r["images_per_sec"], 2) for r in rows]
    waits = [round(r["data_wait"], 4) for r in rows]
    return {
        "threads": summary["threads"],
        "epochs_images_per_sec": rates,
        "epochs_data_wait": waits,
        "cold_images_per_sec": rates[0],
        "cached_images_per_sec": statistics.median(rates[1:]) if len(rates) > 1 else None,
        "cold_data_wait": waits[0],
        "cached_data_wait": statistics.median(waits[1:]) if len(waits) > 1 else None,
        "run_dir": str(run_dir),
        "memory": memory.as_dict(),
    }


def plain_loop(plan: RunPlan, split: Split, epochs: int) -> dict:
    """effnet.bench.plain_loop, the framework-free reference, on the same images, with the plan's
    intra-op threads."""
    import torch

    from effnet.bench.plain_loop import train

    torch.set_num_threads(plan.loading.threads)
    level, prep = plan.loading.augmentation, plan.preprocessing
    with ticks(epochs, f"plain timm+torch loop: {epochs} epoch(s)") as tick:
        rates = train(
            split.train,
            num_classes=len(split.classes),
            backbone=plan.network.backbone,
            image_size=prep.image_size,
            batch_size=plan.batches.micro_batch,
            workers=plan.loading.workers,
            level=dict(level),
            interpolation=prep.interpolation,
            mean=prep.mean,
            std=prep.std,
            lr=plan.recipe.lr,
            epochs=epochs,
            device=str(_device(plan)),
            precision=plan.precision,
            channels_last=plan.runtime.channels_last,
            on_epoch=lambda rate: tick(),
        )
    return {
        "epochs_images_per_sec": [round(r, 2) for r in rates],
        "cold_images_per_sec": round(rates[0], 2),
        "cached_images_per_sec": round(statistics.median(rates[1:]), 2) if len(rates) > 1 else None,
    }
