"""python bench.py: how fast a run would train on this machine, and what limits it.

The plan is resolved exactly as train.py resolves it, on the whole folder; the measurements then
run on a seeded subset of `bench.images` training images, one after another in this process:

- ceiling: the training step alone (forward, backward, optimizer; the plan's precision,
  channels_last and micro-batch) through Lightning, on random uint8 batches already on the device;
- loader: the training loader alone (effnet.training.run.data_module, the plan's workers and
  data.cache), epoch 1 cold and the later epochs cached;
- end to end: real training epochs through effnet.training.run.run, the code train.py runs;
- memory: peak GPU memory, and the peak RSS of this process and of its loader workers;
- compare (optional): timm's create_loader on the same images, size and workers, and a plain
  timm + torch loop (benchmarks/plain_loop.py) over the same images, model, batch and augmentation.

It prints a table, names the bottleneck, and writes bench.json. Speeds are per process: a DDP plan
is measured on one device with its per-device batch.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from effnet.errors import exit_with, one_line

log = logging.getLogger("effnet")

COMPARE = ("timm", "plain")
PLAIN_LOOP = Path("benchmarks") / "plain_loop.py"


def bench_task(cfg: DictConfig) -> None:
    """The Hydra task behind bench.py: one line and exit 2 for a bad value, as train.py."""
    from effnet.cli.validate import validate_command

    try:
        validate_command("bench", cfg)  # again: the Hydra callback is skipped by compose() users
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        exit_with(message)


def compared(cfg: DictConfig) -> list[str]:
    value = cfg.bench.compare
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------------------------------
# What the machine is doing


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _status(pid: int | str) -> dict[str, int]:
    """VmHWM (peak RSS) of a process, and Pss and private (unshared) memory from smaps_rollup, in
    bytes (Linux); {} when it is gone. A forked worker maps its parent's pages, so its RSS counts
    them again: Pss shares each page out among the processes that map it."""
    values = {}
    for name, keys in (
        ("status", ("VmHWM", "VmRSS")),
        ("smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty")),
    ):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in keys:
                        values[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            pass
    values["Private"] = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the loader workers)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


class MemoryWatch:
    """Peak RSS of this process (VmHWM, reset first), the peak Pss and private memory of its children
    together (the loader workers; sampled every 0.5 s), and peak CUDA memory. A RAM store's pages
    are shared: Pss splits them between the processes that read them, private leaves them out."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.workers_pss = self.workers_private = 0
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.5):
            stats = [_status(pid) for pid in _children(me)]
            self.workers_pss = max(self.workers_pss, sum(s.get("Pss", 0) for s in stats))
            self.workers_private = max(self.workers_private, sum(s["Private"] for s in stats))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.main_rss = _status("self").get("VmHWM", 0)
        if self.cuda:
            import torch

            self.gpu_allocated = torch.cuda.max_memory_allocated()
            self.gpu_reserved = torch.cuda.max_memory_reserved()

    def as_dict(self) -> dict[str, float | None]:
        mb = 1e6
        return {
            "main_rss_mb": round(self.main_rss / mb, 1),
            "workers_pss_mb": round(self.workers_pss / mb, 1),
            "workers_private_mb": round(self.workers_private / mb, 1),
            "gpu_max_allocated_mb": round(self.gpu_allocated / mb, 1) if self.cuda else None,
            "gpu_max_reserved_mb": round(self.gpu_reserved / mb, 1) if self.cuda else None,
        }


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One bar per measurement on a terminal (stderr); a plain line per measurement otherwise."""

    def __init__(self) -> None:
        self.rich = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self.rich = RichProgress(console=Console(stderr=True), transient=False)
            self.rich.start()

    @contextlib.contextmanager
    def phase(self, name: str, total: int):
        started = time.monotonic()
        if self.rich is not None:
            task = self.rich.add_task(name, total=total)
            yield lambda n=1: self.rich.advance(task, n)
            self.rich.update(task, completed=total)
        else:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            yield lambda n=1: None
            print(f"bench: {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


# ---------------------------------------------------------------------------------------------
# The measurements


def bench_split(split, images: int, val_images: int, seed: int):
    """The seeded subset every measurement uses."""
    from effnet.data.folders import Split

    rng = random.Random(seed)
    train = sorted(rng.sample(split.train, min(images, len(split.train))))
    val = sorted(rng.sample(split.val, min(val_images, len(split.val))))
    return Split(split.root, split.classes, train, val, [], split.held_out)


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 2) if seconds > 0 else 0.0


def _device(plan):
    import torch

    return torch.device("cuda" if plan.accelerator == "cuda" else "cpu")


def one_device_trainer_args(plan) -> dict:
    """The plan's Trainer arguments on one device: the bench measures one training process."""
    return {**plan.trainer_args(), "devices": 1, "num_nodes": 1, "strategy": "auto"}


def ceiling(plan, warmup: int, steps: int, progress: Progress) -> dict:
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
            advance()
            if batch_idx == warmup + steps - 1:
                self._sync()
                times["end"] = time.perf_counter()

    module = ClassifierModule(**plan.module_args(), init=None)  # random weights: same speed
    with progress.phase(
        f"ceiling: {warmup} + {steps} training steps on random batches", warmup + steps
    ) as advance:
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


def _epochs(loader, epochs: int, set_epoch, name: str, progress: Progress) -> list[float]:
    """Images/s of each full pass over `loader` (from asking for the first batch to the last)."""
    rates = []
    for epoch in range(epochs):
        set_epoch(epoch)
        with progress.phase(f"{name}: epoch {epoch + 1}/{epochs}", len(loader)) as advance:
            started, seen = time.perf_counter(), 0
            for images, _ in loader:
                seen += len(images)
                advance()
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


def effnet_loader(plan, split, epochs: int, progress: Progress, cuda: bool) -> dict:
    """The training loader alone, as a run builds it."""
    from effnet.training.run import data_module

    datamodule = data_module(plan, split)
    with MemoryWatch(cuda) as memory:
        started = time.perf_counter()
        datamodule.attach_store()  # disk: built (or checked) here, before the first epoch
        setup_s = round(time.perf_counter() - started, 2)
        loader = datamodule.train_dataloader()
        rates = _epochs(loader, epochs, datamodule.train_sampler.set_epoch, "loader", progress)
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


def timm_loader(plan, split, epochs: int, progress: Progress) -> dict:
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
    rates = _epochs(loader, epochs, lambda epoch: None, "timm create_loader", progress)
    del loader
    return _loader_result(rates, plan.loading.workers)


def pinned_config(cfg: DictConfig, plan, epochs: int, threads: int | None) -> DictConfig:
    """The config of a run that trains exactly as the plan says, on one device, whatever the
    bench subset's size would make data_size=auto or data.cache=auto choose."""
    pinned = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    recipe = plan.recipe
    values = {
        "epochs": epochs,
        "batch_size": recipe.batch_size // plan.world_size,
        "lr": recipe.lr,
        "dropout": recipe.dropout,
        "aug": recipe.aug,
        "ckpt_path": None,
        "data.num_workers": plan.loading.workers,
        "data.threads": threads or plan.loading.threads,
        "data.cache": plan.loading.cache,
        "model.pretrained": False,  # random weights train at the same speed, and need no network
        "model.weights": None,
        "trainer.devices": 1,
        "trainer.num_nodes": 1,
        "trainer.strategy": "auto",
        "trainer.precision": plan.precision,
        "dashboards.samples": 0,
        "logger": {"csv": {"_target_": "effnet.training.loggers.CSVLogger"}},  # metrics.csv is read back
    }
    for key, value in values.items():
        OmegaConf.update(pinned, key, value, force_add=True)
    pinned.pop("hydra", None)
    return pinned


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
    cfg: DictConfig, plan, split, run_dir: Path, epochs: int, threads: int | None, cuda: bool
) -> dict:
    """Real training epochs through effnet.training.run.run (what train.py runs) on the bench's
    images."""
    from effnet.training.run import run as train_run

    with MemoryWatch(cuda) as memory:
        summary = train_run(pinned_config(cfg, plan, epochs, threads), run_dir, split)
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


def plain_loop(plan, split, epochs: int, progress: Progress) -> dict:
    """benchmarks/plain_loop.py, the framework-free reference, on the same images, with the plan's
    intra-op threads."""
    import torch

    torch.set_num_threads(plan.loading.threads)
    path = _repo_root() / PLAIN_LOOP
    spec = importlib.util.spec_from_file_location("plain_loop", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    level, prep = plan.loading.augmentation, plan.preprocessing
    with progress.phase(f"plain timm+torch loop: {epochs} epoch(s)", epochs) as advance:
        rates = module.train(
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
            on_epoch=lambda rate: advance(),
        )
    return {
        "epochs_images_per_sec": [round(r, 2) for r in rates],
        "cold_images_per_sec": round(rates[0], 2),
        "cached_images_per_sec": round(statistics.median(rates[1:]), 2) if len(rates) > 1 else None,
    }


def _repo_root() -> Path:
    """The folder bench.py and conf/ live in (where benchmarks/ is)."""
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main":
                return Path(source.path.removeprefix("file://")).parent
    return Path.cwd()


# ---------------------------------------------------------------------------------------------
# The whole bench


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _best(result: dict | None) -> float | None:
    """The steady rate: the cached epochs' median, or the only epoch there is."""
    if not result:
        return None
    return result.get("cached_images_per_sec") or result.get("cold_images_per_sec")


def bottleneck(result: dict) -> str:
    """One line naming what limits the end-to-end rate."""
    ceiling_rate, loader, e2e = result["ceiling"]["images_per_sec"], result["loader"], result["end_to_end"]
    wait = e2e["cached_data_wait"] if e2e["cached_data_wait"] is not None else e2e["cold_data_wait"]
    ratio = result["ratios"]["end_to_end_over_ceiling"] or 0
    if wait >= 0.3:
        return (
            f"the loader: {wait:.0%} of each step waits for data; alone it gives {_best(loader):g} img/s with "
            f"{loader['workers']} worker(s) against the step's {ceiling_rate:g} img/s "
            "(more data.num_workers, data.cache=ram|disk)"
        )
    if ratio >= 0.9 or wait < 0.1:
        gap = ""
        if ratio < 0.9:
            gap = (
                f"; end to end is {ratio:.0%} of the ceiling with only {wait:.0%} data wait, so the gap is "
                "per-step work outside the step or other processes on this machine "
                f"(load avg {result['machine']['load_avg_start']})"
            )
        return f"the training step ({ceiling_rate:g} img/s alone){gap}"
    return (
        f"both: {wait:.0%} of each step waits for data and end to end is {ratio:.0%} of the ceiling; "
        f"the loader alone gives {_best(loader):g} img/s with {loader['workers']} worker(s), and its workers "
        f"share the machine with the training threads ({result['plan']['threads']})"
    )


def rows(result: dict) -> list[tuple[str, str, str]]:
    """(measurement, images/s, detail) for the table."""

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f}"

    plan, loader = result["plan"], result["loader"]
    table = [
        (
            "ceiling (training step alone)",
            rate(result["ceiling"]["images_per_sec"]),
            f"{result['ceiling']['step_s'] * 1000:.0f} ms/step, micro-batch {plan['micro_batch_size']}, "
            f"{plan['precision']}" + (", channels_last" if plan["channels_last"] else ""),
        ),
    ]

    def epochs(
        name: str,
        measured: dict,
        cold_detail: str,
        cached_detail: str,
        cold="epoch 1 (cold)",
        cached="epochs 2+",
    ):
        """The cold row, and the cached row when more than one epoch was measured."""
        out = [(f"{name}, {cold}", rate(measured["cold_images_per_sec"]), cold_detail)]
        if measured["cached_images_per_sec"] is not None:
            out.append((f"{name}, {cached}", rate(measured["cached_images_per_sec"]), cached_detail))
        return out

    table += epochs(
        "loader",
        loader,
        f"{loader['workers']} worker(s), {rate(loader['cold_per_worker'])} per worker; data.cache={loader['cache']}",
        f"{rate(loader['cached_per_worker'])} per worker",
        cached="epochs 2+ ("
        + ("cached" if loader["cache"] != "none" else "decoded again: data.cache=none")
        + ")",
    )
    timm = result.get("timm_loader")
    if timm:
        ratios = result["ratios"]
        table += epochs(
            "timm create_loader",
            timm,
            f"effnet / timm: {ratios['loader_cold_over_timm']}x",
            f"effnet / timm: {ratios['loader_cached_over_timm']}x",
            cold="epoch 1",
        )
    for name, e2e in [("end to end", result["end_to_end"])] + [
        (f"end to end, {t} thread(s)", r) for t, r in result.get("end_to_end_threads", {}).items()
    ]:
        table += epochs(
            name,
            e2e,
            f"{e2e['threads']} thread(s), data wait {e2e['cold_data_wait']:.0%}",
            f"data wait {e2e['cached_data_wait']:.0%}" if e2e["cached_data_wait"] is not None else "",
        )
    plain = result.get("plain_loop")
    if plain:
        table.append(
            (
                "plain timm+torch loop",
                rate(_best(plain)),
                f"effnet / plain: {result['ratios']['end_to_end_over_plain']}x",
            )
        )
    memory = result["end_to_end"]["memory"]
    gpu = ""
    if memory["gpu_max_allocated_mb"] is not None:
        gpu = f"GPU max allocated {memory['gpu_max_allocated_mb']:,.0f} MB, reserved {memory['gpu_max_reserved_mb']:,.0f} MB; "
    table.append(
        (
            "peak memory (end to end)",
            "",
            gpu + f"RSS main {memory['main_rss_mb']:,.0f} MB; workers Pss {memory['workers_pss_mb']:,.0f} MB "
            f"({memory['workers_private_mb']:,.0f} MB private)",
        )
    )
    table.append(("end to end / ceiling", f"{result['ratios']['end_to_end_over_ceiling']}", ""))
    return table


def load_column(result: dict) -> dict[str, float | None]:
    """The load average when each measurement ended, by the first word of its row."""
    return {
        "ceiling": result["ceiling"].get("load_avg"),
        "loader": result["loader"].get("load_avg"),
        "timm": (result.get("timm_loader") or {}).get("load_avg"),
        "end": result["end_to_end"].get("load_avg"),
        "plain": (result.get("plain_loop") or {}).get("load_avg"),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = result["machine"]
    title = (
        f"effnet bench: {result['plan']['model']} @ {result['plan']['image_size']} px, "
        f"{result['images']} training images, {machine['device']}, load avg {machine['load_avg_start']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measurement")
    table.add_column("images/s", justify="right")
    table.add_column("detail")
    table.add_column("load avg", justify="right")
    loads = load_column(result)
    threads = {
        f"end to end, {t} thread(s)": r.get("load_avg") for t, r in result["end_to_end_threads"].items()
    }
    for name, rate, detail in rows(result):
        load = next((v for k, v in threads.items() if name.startswith(k)), None)
        load = load if load is not None else loads.get(name.split()[0].rstrip(","))
        shown = load is not None and rate and "/" not in name
        table.add_row(name, rate, detail, f"{load:g}" if shown else "")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(f"bottleneck: {result['bottleneck']}")
    console.print(f"bench.json: {result['bench_json']}")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Measure, print the table, write bench.json; returns what bench.json holds."""
    import timm
    import torch

    from effnet import plan as run_plan
    from effnet.files import write_json
    from effnet.training.run import quiet_libraries

    quiet_libraries()
    started, load_start = time.perf_counter(), load_average()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan, split, _ = run_plan.resolve(cfg)  # the plan train.py would make, on the whole folder
    bench = cfg.bench
    subset = bench_split(split, int(bench.images), int(bench.val_images), plan.seed)
    cuda = plan.accelerator == "cuda"
    torch.set_num_threads(plan.loading.threads)
    log.info(
        "bench: %s @ %d px, %d of %d training images, micro-batch %d, %s, %d worker(s), %d thread(s), data.cache=%s",
        plan.network.backbone,
        plan.network.image_size,
        len(subset.train),
        len(split.train),
        plan.batches.micro_batch,
        plan.precision,
        plan.loading.workers,
        plan.loading.threads,
        plan.loading.cache,
    )
    epochs = int(bench.epochs)
    progress = Progress()
    result: dict[str, Any] = {}
    try:
        with MemoryWatch(cuda) as memory:
            result["ceiling"] = ceiling(plan, int(bench.warmup_steps), int(bench.ceiling_steps), progress)
        result["ceiling"].update(memory=memory.as_dict(), load_avg=load_average())
        result["loader"] = {**effnet_loader(plan, subset, epochs, progress, cuda), "load_avg": load_average()}
        if "timm" in compared(cfg):
            result["timm_loader"] = {
                **timm_loader(plan, subset, epochs, progress),
                "load_avg": load_average(),
            }
        result["end_to_end"] = end_to_end(cfg, plan, subset, out_dir / "train", epochs, None, cuda)
        result["end_to_end"]["load_avg"] = load_average()
        if "plain" in compared(cfg):  # right after effnet's run: the machine's load changes over minutes
            result["plain_loop"] = {**plain_loop(plan, subset, epochs, progress), "load_avg": load_average()}
        result["end_to_end_threads"] = {}
        for t in bench.threads:
            run_dir = out_dir / f"train-threads-{t}"
            result["end_to_end_threads"][str(t)] = {
                **end_to_end(cfg, plan, subset, run_dir, epochs, int(t), cuda),
                "load_avg": load_average(),
            }
    finally:
        progress.close()
    e2e = _best(result["end_to_end"])
    result["ratios"] = {
        "end_to_end_over_ceiling": _ratio(e2e, result["ceiling"]["images_per_sec"]),
        "loader_cold_over_timm": _ratio(
            result["loader"]["cold_images_per_sec"],
            (result.get("timm_loader") or {}).get("cold_images_per_sec"),
        ),
        "loader_cached_over_timm": _ratio(
            result["loader"]["cached_images_per_sec"],
            (result.get("timm_loader") or {}).get("cached_images_per_sec"),
        ),
        "end_to_end_over_plain": _ratio(e2e, _best(result.get("plain_loop"))),
    }
    target = Path(str(bench.out)) if bench.out else out_dir / "bench.json"
    result = {
        "command": " ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": run_plan.usable_cores(),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "load_avg_start": load_start,
            "load_avg_end": load_average(),
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "plan": {**plan.summary(), "accelerator": plan.accelerator},
        "images": len(subset.train),
        "val_images": len(subset.val),
        "epochs": epochs,
        **result,
        "timm_loader": result.get("timm_loader"),
        "plain_loop": result.get("plain_loop"),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "bench_json": str(target),
    }
    result["bottleneck"] = bottleneck(result)
    write_json(target, result)
    print_table(result)
    return result
