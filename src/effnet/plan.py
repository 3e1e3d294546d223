"""The run plan: every value a training run uses, resolved once from the config, the data and the device.

Order matters, and this is the only place that knows it: the data decides the recipe row
(data_size=auto counts the training images), the recipe and the device decide the batch plan and
the precision, the backbone decides the preprocessing. Everything downstream (the module, the
loaders, the Trainer, summary.json, resolved.yaml, the W&B config, the export bundle) reads the
plan and derives nothing itself.

`build` is a pure function of its inputs and imports no torch, so the arithmetic is unit-tested
like effnet.recipes. `resolve` gathers those inputs (scan the folder, probe the device, ask timm
for the backbone's preprocessing) and is what train.py and `dry_run=true` call.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from effnet import cluster, memory, metrics, recipes
from effnet.cli.argv import command_words
from effnet.errors import UserError
from effnet.preprocessing import Preprocessing

log = logging.getLogger("effnet")

RECIPE_KEYS = ("lr", "epochs", "batch_size", "dropout", "aug")
# Trainer arguments the plan decides; the rest of the `trainer:` section passes through as given.
PLANNED_TRAINER_KEYS = ("precision", "sync_batchnorm", "strategy", "ddp_timeout_s")


@dataclass(frozen=True)
class Device:
    """What this machine offers the run, probed once (see probe_device)."""

    cuda: bool
    per_node: int  # processes per node, as Lightning will count them
    memory_bytes: int | None = None  # CUDA device 0
    bf16: bool = False
    name: str = "cpu"
    cores: int = 1
    memory_available: int | None = None  # host RAM free for a data.cache store, in bytes
    ram_available: int | None = None  # host RAM free for the training step itself (MemAvailable)
    thread_cap: int | None = None  # OMP_NUM_THREADS, when set (recipes.intra_op_threads)


@dataclass(frozen=True)
class DataFacts:
    """The data the plan was made for: what the scan found and how it was split."""

    root: str
    classes: tuple[str, ...]
    train: int
    val: int
    test: int = 0
    held_out: bool = False
    files: int = 0
    problems: int = 0
    class_counts: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # (width, height, is JPEG) of a seeded sample of training images: sizes the data.cache store
    size_sample: tuple[tuple[int, int, bool], ...] = ()


@dataclass(frozen=True)
class Network:
    """What rebuilds the network: the checkpoint carries it (nanoGPT's model_args)."""

    backbone: str
    classes: tuple[str, ...]
    image_size: int
    dropout: float
    hidden: tuple[int, ...] = ()
    drop_path: float = 0.0


@dataclass(frozen=True)
class Optimisation:
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    epochs: int = 10
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    ema_decay: float | None = None  # None: no weight averaging
    backbone_lr_scale: float = 1.0  # the backbone trains at lr x this (recipes.backbone_lr_scale)


@dataclass(frozen=True)
class Regularisation:
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    erase_prob: float = 0.0
    class_weights: tuple[float, ...] | None = None  # data.balance=class_weights


@dataclass(frozen=True)
class Runtime:
    """How the network runs on this device; not part of what a checkpoint rebuilds."""

    channels_last: bool = False
    grad_checkpointing: bool = False
    sync_batchnorm: bool = False
    compile: bool = False  # torch.compile the network (model.compile=auto resolved)


@dataclass(frozen=True)
class Loading:
    """How images reach the device."""

    augmentation: Mapping[str, Any]  # the `augment.<level>` block in use
    workers: int
    threads: int  # intra-op threads of each training process
    pin_memory: bool
    balance: str
    cache: str = "none"  # none | ram | disk (data.cache=auto resolved)
    cache_reason: str = ""
    cache_bytes: int = 0  # estimated size of the store, per training process
    worker_nice: int = 0  # how much lower the loader workers' priority is (a CPU-only run's step comes first)
    threads_capped: bool = False  # data.threads=auto was lowered to OMP_NUM_THREADS


@dataclass(frozen=True)
class Records:
    """What a run writes beside its weights and what stops it early: the best checkpoint's metric,
    the dashboards, the loggers, divergence. The composed config rides along for resolved.yaml and
    the W&B run config; nothing decides anything from it."""

    monitor: str = "val/acc"  # train.monitor: best.ckpt, the best epoch, early stopping, a sweep's objective
    monitor_mode: str = "max"  # max | min (train.monitor_mode=auto resolved)
    early_stopping_patience: int | None = None  # None: never stop early
    early_stopping_min_delta: float = 0.0
    samples: int = 16  # validation images in predictions.png
    train_batch: int = 16  # images of the first augmented training batch in train_batches.png
    divergence_patience: int | None = 3  # None: never stop on a non-finite loss
    loggers: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict
    )  # name -> its `logger.<name>` block
    on_bad_image: str = "warn"
    max_image_pixels: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LrFind:
    """lr=find: the finder's sweep of the head's lr (effnet.training.lr_find), instead of training."""

    min_lr: float
    max_lr: float
    steps: int  # lr_find.steps, or the run's own optimizer steps when it has fewer


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a resumed run continues, read once at the start."""

    checkpoint: str
    next_epoch: int  # 0-based: the epoch the run starts with
    planned_epochs: int | None  # the length its learning-rate schedule was built for
    backbone_lr_scale: float  # its optimizer's parameter groups were built with this


@dataclass(frozen=True)
class RunPlan:
    data: DataFacts
    recipe: recipes.Recipe
    recipe_reason: str
    recipe_sources: Mapping[str, str]  # key -> where its value came from
    tier: str
    batches: recipes.BatchPlan
    precision: str
    accelerator: str
    devices: int  # processes per node
    num_nodes: int
    strategy: str
    ddp_timeout_s: float  # how long a DDP rank waits for the others in a collective
    device_name: str
    loading: Loading
    preprocessing: Preprocessing
    network: Network
    optimisation: Optimisation
    regularisation: Regularisation
    runtime: Runtime
    init: str | None  # "pretrained", a weights file, or None (random, or resumed from a checkpoint)
    weights: str  # the same, in words
    pretrained: bool  # ImageNet (or a weights file) rather than random init, resumed or not
    resume: str | None
    freeze_epochs: int
    seed: int
    trainer: Mapping[str, Any]  # lightning.Trainer arguments
    command: str
    warnings: tuple[str, ...] = ()
    step_memory: int | None = None  # predicted peak RAM of a training step (CPU), all processes
    ram_available: int | None = None
    records: Records = field(default_factory=Records)
    resumed: Resumed | None = None
    lr_find: LrFind | None = None  # lr=find: sweep the lr instead of training
    compile_reason: str = ""  # why model.compile resolved as it did

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def module_args(self) -> dict:
        """ClassifierModule's sections, as plain values (the checkpoint stores them)."""
        return {
            "network": _plain(asdict(self.network)),
            "preprocessing": self.preprocessing.as_dict(),
            "optimisation": _plain(asdict(self.optimisation)),
            "regularisation": _plain(asdict(self.regularisation)),
            "runtime": asdict(self.runtime),
        }

    def summary(self) -> dict:
        """The run's setup: the first half of summary.json, resolved.yaml and the W&B config."""
        r, b = self.recipe, self.batches
        return {
            "model": self.network.backbone,
            "image_size": self.network.image_size,
            "num_classes": len(self.network.classes),
            "classes": list(self.network.classes),
            "num_train_images": self.data.train,
            "num_val_images": self.data.val,
            "data_size": r.data_size,
            "epochs": r.epochs,
            "lr": r.lr,
            "backbone_lr": r.lr * self.optimisation.backbone_lr_scale,
            "batch_size": r.batch_size,
            "dropout": r.dropout,
            "aug": r.aug,
            "gpu_tier": self.tier,
            "devices": self.world_size,
            "micro_batch_size": b.micro_batch,
            "accumulate_grad_batches": b.accumulate,
            "grad_checkpointing": b.grad_checkpointing,
            "precision": self.precision,
            "strategy": self.strategy,
            "channels_last": self.runtime.channels_last,
            "compile": self.runtime.compile,
            "num_workers": self.loading.workers,
            "threads": self.loading.threads,
            "cache": self.loading.cache,
            "pretrained": self.pretrained,
            "weights": self.weights,
            "preprocessing": self.preprocessing.as_dict(),
        }

    def trainer_args(self) -> dict:
        return {
            **self.trainer,
            "strategy": self.strategy,
            "precision": self.precision,
            "max_epochs": self.recipe.epochs,
            "accumulate_grad_batches": self.batches.accumulate,
        }


def _plain(value):
    """Tuples to lists, recursively: checkpoints are read back with weights_only=True."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The pure part: config + data + device -> plan


def choose_recipe(cfg: DictConfig, num_train: int, preset: str | None = None) -> tuple[recipes.Recipe, str]:
    """The data_size row (counted or named) filled in by the top-level values, and why that row."""
    if cfg.data_size.name == "auto":
        name = recipes.pick_data_size(cfg.data_size.rows, num_train)
        row = cfg.data_size.rows[name]
        bound = row.max_images
        reason = (
            f"data_size=auto: {num_train:,} training images < {bound:,}"
            if bound is not None
            else f"data_size=auto: {num_train:,} training images, the largest row"
        )
    else:
        name, row = cfg.data_size.name, cfg.data_size
        reason = f"data_size={name}" + (f" (from preset={preset})" if preset else "") + ", images not counted"
    # lr=find: the finder decides it; the row's value fills the plan's recipe meanwhile
    overrides = {k: None if k == "lr" and cfg[k] == "find" else cfg[k] for k in RECIPE_KEYS}
    return recipes.resolve_recipe(overrides, name, row, cfg.model.dropout), reason


def recipe_sources(cfg: DictConfig, row: str, cli_overrides: Sequence[str], preset: str | None) -> dict:
    """Where each recipe value came from: your command line, the preset, or the data_size row."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in cli_overrides}
    sources = {}
    for key in RECIPE_KEYS:
        if key == "lr" and cfg[key] == "find":
            sources[key] = f"{row} row, until the finder runs"
        elif key in given:
            sources[key] = "command line"
        elif cfg[key] is not None:
            sources[key] = f"preset={preset}" if preset else "config"
        elif key == "dropout":
            sources[key] = f"{row} row, shifted for {cfg.model.backbone}"
        else:
            sources[key] = f"{row} row"
    return sources


def choose_tier(cfg: DictConfig, device: Device) -> tuple[str, float | None, list[str]]:
    """(tier name, its memory in GB (None: the cpu tier), warnings)."""
    if cfg.gpu.name != "auto":
        warnings = []
        if cfg.gpu.name != "cpu" and not device.cuda:
            warnings.append(
                f"gpu={cfg.gpu.name} but no CUDA device is in use: training on the CPU with that tier's batch plan"
            )
        return cfg.gpu.name, cfg.gpu.memory_gb, warnings
    name = recipes.pick_tier(cfg.gpu.tiers, device.memory_bytes if device.cuda else None)
    return name, cfg.gpu.tiers[name].memory_gb, []


def fit_batch_to_data(recipe: recipes.Recipe, train: int, world: int) -> tuple[recipes.Recipe, list[str]]:
    """A batch larger than the training set is shrunk to it (a multiple of the devices): the
    loader could only ever fill it partly, and accumulation would never reach the planned steps."""
    if not train or recipe.batch_size <= train:
        return recipe, []
    shrunk = max(world, train // world * world)
    return replace(recipe, batch_size=shrunk), [
        f"batch_size={recipe.batch_size} is larger than the {train} training images: shrunk to {shrunk} "
        "(one optimizer step per epoch)"
    ]


def class_weights(counts: Mapping[str, int], classes: Sequence[str]) -> tuple[float, ...]:
    """n / (k * count): 1 for every class of a balanced set, larger for rare classes."""
    total = sum(counts.get(c, 0) for c in classes)
    return tuple(round(total / (len(classes) * max(1, counts.get(c, 0))), 6) for c in classes)


def init_weights(cfg: DictConfig, resume: str | None) -> tuple[str | None, str]:
    """(what the module loads at construction, the same in words)."""
    if resume:
        return None, f"from the checkpoint {resume}"
    if cfg.model.weights:
        return str(Path(str(cfg.model.weights)).expanduser()), f"file {cfg.model.weights}"
    if cfg.model.pretrained:
        return "pretrained", f"ImageNet ({cfg.model.backbone})"
    return None, "random"


def build(
    cfg: DictConfig,
    data: DataFacts,
    device: Device,
    preprocessing: Preprocessing,
    *,
    resumed: Resumed | None = None,
    cli_overrides: Sequence[str] = (),
    preset: str | None = None,
    argv: Sequence[str] | None = None,
    memory_rows: Mapping[memory.Key, memory.Row] | None = None,
) -> RunPlan:
    """Resolve every value of the run. Raises UserError for a combination that cannot run.
    `resumed`: the checkpoint a resume continues (its optimizer's parameter groups must match).
    `memory_rows`: the measured memory model (default: the rows of effnet/memory.csv)."""
    resume = resumed.checkpoint if resumed else None
    recipe, reason = choose_recipe(cfg, data.train, preset)
    image_size = int(cfg.image_size or cfg.model.image_size)
    devices, num_nodes = device.per_node, int(cfg.trainer.num_nodes)
    tier, memory_gb, warnings = choose_tier(cfg, device)
    recipe, shrunk = fit_batch_to_data(recipe, data.train, devices * num_nodes)
    warnings += shrunk
    precision = recipes.pick_precision(cfg.trainer.precision, device.cuda, device.bf16)
    budget = (
        recipes.memory_budget(memory_gb, cfg.gpu.usable_fraction, cfg.gpu.cuda_overhead_gb)
        if memory_gb
        else None
    )
    costs = memory.costs(cfg.model.backbone, precision, memory_rows)
    if costs is None and budget is not None:
        raise UserError(
            f"model.backbone={cfg.model.backbone}: its memory is not measured, so gpu={tier} cannot size the "
            f"micro-batch; `python -m effnet.memory` measures it (train.py and dry_run=true do it themselves)"
        )
    try:
        batches = recipes.plan_batches(
            recipe.batch_size,
            devices * num_nodes,
            costs=costs,
            budget=budget,
            image_size=image_size,
            min_micro_batch=cfg.gpu.min_micro_batch,
            grad_checkpointing=cfg.model.grad_checkpointing,
            ema=bool(cfg.model.ema),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if batches.capacity == 0 and budget is not None:
        warnings.append(
            f"{cfg.model.backbone} at {image_size} px needs ~{batches.peak_bytes / 1e9:.1f} GB for one image, more "
            f"than gpu={tier} has ({budget.tier_bytes / 1e9:g} GB): expect out-of-memory; try a smaller image_size"
        )
    level = OmegaConf.to_container(cfg.augment[recipe.aug], resolve=True)
    balance = cfg.data.balance
    if balance == "class_weights" and (level["mixup"] > 0 or level["cutmix"] > 0):
        raise UserError(
            f"data.balance=class_weights does not combine with mixup/cutmix (aug={recipe.aug} mixes labels); "
            f"use data.balance=weighted_sampler, or set augment.{recipe.aug}.mixup=0 augment.{recipe.aug}.cutmix=0"
        )
    classes = tuple(data.classes)
    workers = (
        recipes.loader_workers(device.cores, devices)
        if cfg.data.num_workers == "auto"
        else int(cfg.data.num_workers)
    )
    threads = (
        recipes.intra_op_threads(device.cores, devices, workers, device.cuda, device.thread_cap)
        if cfg.data.threads == "auto"
        else int(cfg.data.threads)
    )
    threads_capped = cfg.data.threads == "auto" and threads < recipes.intra_op_threads(
        device.cores, devices, workers, device.cuda
    )
    store_bytes = recipes.cache_bytes(
        data.size_sample, data.train, recipes.decode_size(image_size, level["scale"][0])
    )
    cache, cache_reason = recipes.choose_cache(cfg.data.cache, store_bytes, device.memory_available, devices)
    if cache == "ram" and device.memory_available and store_bytes * devices > device.memory_available:
        warnings.append(
            f"data.cache=ram: the store (~{store_bytes * devices / 1e9:.1f} GB) is more than the "
            f"{device.memory_available / 1e9:.1f} GB of memory available; use data.cache=disk or none"
        )
    reserved = store_bytes * devices if cache == "ram" else 0  # the RAM data cache lives beside the step
    batches, step_memory, lowered = cpu_memory(cfg, batches, device, costs, image_size, devices, reserved)
    warnings += lowered
    strategy = str(cfg.trainer.strategy)
    if cfg.model.freeze_epochs and strategy == "ddp":
        strategy = "ddp_find_unused_parameters_true"  # the frozen backbone has no gradients to reduce
    init, weights = init_weights(cfg, resume)
    trainer = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in PLANNED_TRAINER_KEYS and v is not None
    }
    epoch_steps = recipes.steps_per_epoch(
        data.train,
        batches.micro_batch,
        batches.accumulate,
        devices * num_nodes,
        trainer.get("limit_train_batches"),
    )
    compiled, compile_reason = recipes.compile_network(
        cfg.model.compile, device.cuda, epoch_steps * recipe.epochs, int(cfg.model.compile_min_steps)
    )
    finder = None
    if cfg.lr == "find":
        try:
            steps = recipes.finder_steps(int(cfg.lr_find.steps), epoch_steps, recipe.epochs)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        finder = LrFind(float(cfg.lr_find.min_lr), float(cfg.lr_find.max_lr), steps)
    return RunPlan(
        data=data,
        recipe=recipe,
        recipe_reason=reason,
        recipe_sources=recipe_sources(cfg, recipe.data_size, cli_overrides, preset),
        tier=tier,
        batches=batches,
        precision=precision,
        accelerator="cuda" if device.cuda else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        ddp_timeout_s=float(cfg.trainer.ddp_timeout_s),
        device_name=device.name,
        loading=Loading(
            augmentation=level,
            workers=workers,
            threads=threads,
            threads_capped=threads_capped,
            worker_nice=recipes.loader_nice(device.cuda) if workers else 0,
            pin_memory=device.cuda,
            balance=balance,
            cache=cache,
            cache_reason=cache_reason,
            cache_bytes=store_bytes,
        ),
        preprocessing=preprocessing,
        network=Network(
            backbone=cfg.model.backbone,
            classes=classes,
            image_size=image_size,
            dropout=recipe.dropout,
            hidden=tuple(cfg.model.head.hidden),
            drop_path=float(cfg.model.drop_path),
        ),
        optimisation=Optimisation(
            optimizer=cfg.optimizer.name,
            lr=recipe.lr,
            weight_decay=float(cfg.optimizer.weight_decay),
            scheduler=cfg.scheduler.name,
            epochs=recipe.epochs,
            warmup_epochs=float(cfg.scheduler.warmup_epochs),
            min_lr=float(cfg.scheduler.min_lr),
            ema_decay=float(cfg.model.ema_decay) if cfg.model.ema else None,
            backbone_lr_scale=recipes.backbone_lr_scale(
                cfg.optimizer.backbone_lr_scale, bool(cfg.model.pretrained) or bool(cfg.model.weights)
            )
            if resumed is None
            else resumed.backbone_lr_scale,
        ),
        regularisation=Regularisation(
            label_smoothing=float(cfg.model.label_smoothing),
            mixup=float(level["mixup"]),
            cutmix=float(level["cutmix"]),
            erase_prob=float(level["erase_prob"]),
            class_weights=class_weights(data.class_counts, classes) if balance == "class_weights" else None,
        ),
        runtime=Runtime(
            channels_last=bool(
                cfg.model.channels_last if cfg.model.channels_last is not None else device.cuda
            ),
            grad_checkpointing=batches.grad_checkpointing,
            sync_batchnorm=bool(cfg.trainer.sync_batchnorm) and devices * num_nodes > 1,
            compile=compiled,
        ),
        compile_reason=compile_reason,
        init=init,
        weights=weights,
        pretrained=bool(cfg.model.pretrained) or bool(cfg.model.weights),
        resume=resume,
        freeze_epochs=int(cfg.model.freeze_epochs),
        seed=int(cfg.seed),
        trainer=trainer,
        command=real_run_command(argv),
        warnings=tuple(warnings) + tuple(data.warnings),
        step_memory=step_memory,
        ram_available=device.ram_available,
        records=records(cfg, len(classes)),
        resumed=resumed,
        lr_find=finder,
    )


def records(cfg: DictConfig, num_classes: int | None = None) -> Records:
    """What the run records and watches. num_classes: the data's, when known (val/acc5 is logged
    only from metrics.TOP5_MIN_CLASSES classes on)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)  # the callback's config carries Hydra's own node; the job's does not
    monitor = str(cfg.train.monitor)
    if monitor == "val/acc5" and num_classes is not None and num_classes < metrics.TOP5_MIN_CLASSES:
        raise UserError(
            f"train.monitor=val/acc5: top-5 accuracy is logged only with {metrics.TOP5_MIN_CLASSES} classes or "
            f"more, and this data has {num_classes}; monitor val/acc instead"
        )
    patience = cfg.train.early_stopping.patience
    return Records(
        monitor=monitor,
        monitor_mode=metrics.monitor_mode(monitor, str(cfg.train.monitor_mode)),
        early_stopping_patience=None if patience is None else int(patience),
        early_stopping_min_delta=float(cfg.train.early_stopping.min_delta),
        samples=int(cfg.dashboards.samples),
        train_batch=int(cfg.dashboards.train_batch),
        divergence_patience=None if cfg.divergence.patience is None else int(cfg.divergence.patience),
        loggers=OmegaConf.to_container(cfg.logger, resolve=True) if cfg.logger else {},
        on_bad_image=str(cfg.data.on_bad_image),
        max_image_pixels=int(cfg.data.max_image_pixels),
        config=config,
    )


def cpu_memory(
    cfg: DictConfig,
    batches: recipes.BatchPlan,
    device: Device,
    costs: Mapping[bool, recipes.MemoryCost] | None,
    image_size: int,
    processes: int,
    reserved: int = 0,
) -> tuple[recipes.BatchPlan, int | None, list[str]]:
    """On the CPU: the step's predicted peak RAM from the measured memory model (with `reserved`
    bytes, a RAM data cache, beside it), the micro-batch lowered until it fits the memory
    available, or one line naming the image size that would fit (recipes.fit_cpu_memory). The
    GPU's memory is the tiers' business (recipes.plan_batches)."""
    if device.cuda or not costs or not device.ram_available:
        return batches, None, []
    try:
        batches, need, lowered = recipes.fit_cpu_memory(
            batches,
            costs[batches.grad_checkpointing],
            image_size,
            processes,
            device.ram_available - reserved,
            ema=bool(cfg.model.ema),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return batches, need + reserved, lowered


def real_run_command(argv: Sequence[str] | None = None) -> str:
    """The command line that starts this run for real (the same one, without dry_run and the
    show_batch that goes with it)."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if a.lstrip("+~").split("=", 1)[0] not in ("dry_run", "show_batch")]
    return shlex.join([*command_words(argv[0] if argv else "train.py"), *args])


# ---------------------------------------------------------------------------------------------
# The impure part: gather the inputs


def processes_per_node(devices, cuda: bool, cuda_count: int = 0) -> int:
    """trainer.devices as Lightning will count it: effnet.cluster.device_count, with auto (and
    -1) resolved on this node."""
    return cluster.device_count(devices) or (cuda_count if cuda else 1)


def usable_cores() -> int:
    """The cores this process may run on (a cgroup or taskset can allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def omp_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """OMP_NUM_THREADS as a positive integer; None when unset or not one (torch ignores those too)."""
    try:
        value = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def ram_available() -> int | None:
    """Linux's MemAvailable: RAM a process can take now without swapping (psutil is not a
    dependency); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_memory(shm: str = "/dev/shm") -> int | None:
    """Bytes a RAM data.cache store can take now: Linux's MemAvailable, and no more than the free
    space of /dev/shm, where shared memory lives (a container's is often only 64 MB, and a store
    larger than it would crash the loader with SIGBUS when written)."""
    memory = ram_available()
    if memory is None:
        return None
    try:
        st = os.statvfs(shm)
    except OSError:
        return memory
    free = st.f_bavail * st.f_frsize
    return free if memory is None else min(memory, free)


def probe_device(trainer_cfg: DictConfig) -> Device:
    """Look at the accelerator once. trainer.accelerator=cpu answers without importing torch."""
    accelerator = str(trainer_cfg.accelerator)
    cores, memory = usable_cores(), available_memory()
    if accelerator == "cpu":
        return Device(
            cuda=False,
            per_node=processes_per_node(trainer_cfg.devices, False),
            cores=cores,
            memory_available=memory,
            ram_available=ram_available(),
            thread_cap=omp_threads(),
        )
    import torch

    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not cuda:
        return Device(
            cuda=False,
            per_node=processes_per_node(trainer_cfg.devices, False),
            cores=cores,
            memory_available=memory,
            ram_available=ram_available(),
            thread_cap=omp_threads(),
        )
    props = torch.cuda.get_device_properties(0)
    return Device(
        cuda=True,
        per_node=processes_per_node(trainer_cfg.devices, True, torch.cuda.device_count()),
        memory_bytes=int(props.total_memory),
        bf16=bool(torch.cuda.is_bf16_supported()),
        name=str(props.name),
        cores=cores,
        memory_available=memory,
        thread_cap=omp_threads(),
    )


@dataclass(frozen=True)
class Survey:
    """One walk and one scan of data.root: everything a command learns from listing the folder.
    A start makes one (a listing of a large folder on a network filesystem is the slow part) and
    every later step reads it."""

    root: str
    found: Any  # effnet.data.folders.Found
    report: Any  # effnet.data.scan.DataReport


def survey(cfg: DictConfig) -> Survey:
    """Walk data.root once and scan its files (cached by the folder, so a dry run followed by the
    run reads each file once); one line for bad data, per data.on_bad_image. Writes nothing but,
    for data=demo, the demo images: the scan cache waits in the report (DataReport.save_cache)."""
    from effnet.data import folders, scan

    if cfg.data.generate_demo:
        from effnet.data.demo import write_demo

        write_demo(cfg.data.root)
    root = folders.check_root(cfg.data.root)
    found = folders.walk(root)
    report = scan.scan_folder(
        str(root),
        cfg.data.max_image_pixels,
        cache=scan.cache_path(str(root), cfg.data.max_image_pixels),
        found=found,
        write_cache=False,  # the start writes it once it goes on (effnet.start)
    )
    scan.enforce(report, cfg.data.on_bad_image)
    return Survey(str(root), found, report)


def load_data(cfg: DictConfig, surveyed: Survey, run_dir: Path | None, given=None, moved: str | None = None):
    """The split of `run_dir` (the run being resumed, rebased when its data folder `moved`; None
    for a fresh run, which never adopts a split it finds), the `given` one (the bench's subset),
    or a fresh one drawn from the usable files of the survey."""
    from effnet.data import folders, scan

    report = surveyed.report
    split = folders.load_split(run_dir) if run_dir is not None else given
    if split is None:
        split = folders.discover(
            surveyed.root, cfg.data.val_fraction, cfg.seed, exclude=report.bad_files, found=surveyed.found
        )
    else:
        if moved is not None:
            split = folders.rebase(split, moved, surveyed.root)
        split = folders.without(split, set(report.bad_files) | gone_from_split(split, cfg.data.root))
    counts = folders.class_counts(split.train, split.classes)
    scan.describe_validation(report, split)
    scan.describe_balance(report, counts, cfg.data.balance, cfg.data.min_images)
    return split


def gone_from_split(split, root: str) -> set[str]:
    """Files of a resumed run's split that are no longer there: left out with one warning, or one
    line when none of its training images is left."""
    samples = split.train + split.val + split.test
    gone = {p for p, _ in samples if not os.path.exists(p)}
    if split.train and all(p in gone for p, _ in split.train):
        raise UserError(
            f"data.root={root}: none of the resumed run's {len(split.train)} training images is there any "
            f"more (e.g. {next(iter(sorted(gone)))}); pass the folder the run was trained on"
        )
    if gone:
        log.warning(
            "%d image(s) of the run's split are gone from %s (e.g. %s): left out",
            len(gone),
            root,
            sorted(gone)[0],
        )
    return gone


def data_facts(split, report, size_sample: tuple = ()) -> DataFacts:
    return DataFacts(
        root=split.root,
        classes=tuple(split.classes),
        train=len(split.train),
        val=len(split.val),
        test=len(split.test),
        held_out=split.held_out,
        files=report.files,
        problems=len(report.problems),
        class_counts=dict(report.class_counts),
        warnings=tuple(report.warnings),
        size_sample=size_sample,
    )


def hydra_context(cfg: DictConfig) -> tuple[list[str], str | None]:
    """(the command-line overrides, the preset chosen), when running under Hydra: from the
    config's own `hydra` node before the job starts (a dry run), from HydraConfig inside it."""
    hydra_cfg = _hydra_node(cfg)
    if hydra_cfg is None:
        return [], None
    return list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices.get("preset")


def _hydra_node(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    return cfg.get("hydra") or (HydraConfig.get() if HydraConfig.initialized() else None)


def repeated_choices(cfg: DictConfig) -> list[str]:
    """A warning for each config group the command line chose twice (effnet.cli.argv)."""
    from effnet.cli.argv import repeated_choices as notes

    hydra_cfg = _hydra_node(cfg)
    if hydra_cfg is None:
        return []
    return notes(list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices))


def resolve(
    cfg: DictConfig,
    run_dir: Path | None = None,
    resumed: Resumed | None = None,
    split=None,
    surveyed: Survey | None = None,
    moved: str | None = None,
):
    """(plan, split, scan report) for this config, on this machine. run_dir: the run folder,
    whose split a resumed run keeps; None for a dry run. split: train on this split of
    data.root instead of drawing one (a fresh run only). surveyed: the folder's walk and scan,
    when the command has made them (effnet.start); moved: the old root of a resumed run's data
    folder that moved."""
    from effnet.data.scan import CACHE_DIR
    from effnet.preprocessing import for_backbone

    # the data first: a folder that holds no classifier's data is one line before torch is imported
    surveyed = surveyed or survey(cfg)
    split = load_data(cfg, surveyed, run_dir if resumed else None, given=split, moved=moved)
    report = surveyed.report
    device = probe_device(cfg.trainer)
    image_size = int(cfg.image_size or cfg.model.image_size)
    overrides = OmegaConf.to_container(cfg.model.preprocessing, resolve=True)
    cli_overrides, preset = hydra_context(cfg)
    sizes = ()
    if cfg.data.cache in ("auto", "ram"):  # the store's size, for auto: from the scan, no file reopened
        from effnet.data.decode import size_sample

        sizes = size_sample([path for path, _ in split.train], seed=int(cfg.seed), known=report.sizes)
    plan = build(
        cfg,
        data_facts(split, report, sizes),
        device,
        for_backbone(cfg.model.backbone, image_size, overrides, CACHE_DIR),  # no timm import once cached
        resumed=resumed,
        cli_overrides=cli_overrides,
        preset=preset,
        # on the CPU too: the measured model predicts a step's RAM (cpu_memory)
        memory_rows=memory_rows(
            cfg.model.backbone, needed=choose_tier(cfg, device)[1] is not None or not device.cuda
        ),
    )
    said = repeated_choices(cfg)  # the plan (dry run) and the run's log say it
    if said:
        plan = replace(plan, warnings=(*said, *plan.warnings))
    return plan, split, report


def memory_rows(backbone: str, needed: bool = True) -> dict[memory.Key, memory.Row]:
    """effnet/memory.csv, plus the backbone's own rows when a GPU tier needs them and the file has
    none: measured now, on fake tensors (seconds, no memory), as `python -m effnet.memory` measures
    the shipped models. A backbone fake tensors cannot run is left out, and build() says so."""
    rows = memory.read()
    if not needed or memory.costs(backbone, "32-true", rows) is not None:
        return rows
    log.info("memory: %s is not in %s; measuring it (a few seconds)", backbone, memory.CSV_PATH.name)
    try:
        measured = memory.measure_backbone(backbone)
    except Exception as exc:  # an operation without a fake-tensor kernel, say: a warning, not a traceback
        log.warning(
            "memory: could not measure %s: %s", backbone, (str(exc) or type(exc).__name__).splitlines()[0]
        )
        return rows
    return {**rows, **{(r.backbone, r.precision, r.checkpointing): r for r in measured}}


# ---------------------------------------------------------------------------------------------
# What a person reads: dry_run=true


def loader_row(loading: Loading) -> str:
    row = f"{loading.workers} worker(s), {loading.threads} thread(s) per process"
    row += " (OMP_NUM_THREADS)" if loading.threads_capped else ""
    return row + (f", workers at nice +{loading.worker_nice}" if loading.worker_nice else "")


def plan_rows(plan: RunPlan) -> list[tuple[str, str]]:
    """The plan as (topic, value) rows, in the order a person checks them."""
    d, r, b, p = plan.data, plan.recipe, plan.batches, plan.preprocessing
    split = f"{d.train:,} train / {d.val:,} val" + (f" / {d.test:,} test" if d.test else "")
    split += " (val held out)" if d.held_out else ""
    counts = ", ".join(f"{c} {n}" for c, n in d.class_counts.items())
    src = plan.recipe_sources
    level = plan.loading.augmentation
    aug_parts = [f"crop scale {level['scale'][0]}-{level['scale'][1]}", f"hflip {level['hflip']}"]
    aug_parts += [
        f"{k} {level[k]}" for k in ("color_jitter", "erase_prob", "mixup", "cutmix") if level.get(k)
    ]
    aug_parts += [str(level["rand_augment"])] if level.get("rand_augment") else []
    capacity = "no limit" if b.capacity is None else f"capacity {b.capacity}"
    table = [
        ("data", f"{d.root}: {len(d.classes)} classes, {split}"),
        ("classes", counts or ", ".join(d.classes)),
        ("data problems", f"{d.problems} of {d.files} files unusable (skipped)" if d.problems else "none"),
        ("recipe", f"{r.data_size} row; {plan.recipe_reason}"),
        ("lr", _lr(plan)),
        ("epochs", f"{r.epochs} ({src['epochs']})"),
        ("batch", f"{r.batch_size} ({src['batch_size']})"),
        ("dropout", f"{r.dropout:g} ({src['dropout']})"),
        ("augmentation", f"{r.aug} ({src['aug']}): " + ", ".join(aug_parts)),
        (
            "batch plan",
            f"micro-batch {b.micro_batch} x accumulate {b.accumulate} x {plan.world_size} device(s)"
            f" = {r.batch_size}; gpu={plan.tier} ({capacity})"
            + ("; gradient checkpointing" if b.grad_checkpointing else ""),
        ),
        (
            "device",
            f"{plan.accelerator} ({plan.device_name}), {plan.devices} per node x {plan.num_nodes} node(s)",
        ),
        ("memory", _memory(plan)),
        ("precision", plan.precision),
        (
            "strategy",
            plan.strategy
            + (f", {plan.ddp_timeout_s:g} s process-group timeout" if plan.world_size > 1 else "")
            + (", channels_last" if plan.runtime.channels_last else ""),
        ),
        ("compile", f"{'on' if plan.runtime.compile else 'off'} ({plan.compile_reason})"),
        ("loader", loader_row(plan.loading)),
        ("data cache", f"{plan.loading.cache} ({plan.loading.cache_reason})"),
        ("model", f"{plan.network.backbone} @ {p.image_size} px, head dropout {plan.network.dropout:g}"),
        ("weights", plan.weights),
        (
            "preprocessing",
            f"resize {p.resize} ({p.interpolation}), centre crop {p.image_size}, "
            f"mean {_floats(p.mean)}, std {_floats(p.std)}",
        ),
    ]
    table.append(("monitor", _watching(plan.records)))
    table += [("warning", w) for w in plan.warnings]
    table.append(("start it", plan.command))
    return table


def _memory(plan: RunPlan) -> str:
    """The micro-batch's predicted peak and its largest term (effnet.recipes.peak_terms)."""
    b = plan.batches
    if not b.peak:
        return "not predicted (the backbone's memory is not measured)"
    terms = sorted(b.peak, key=lambda t: -t[1])
    if plan.step_memory is not None and plan.ram_available:  # on the CPU: the process's RAM (cpu_memory)
        return (
            f"~{plan.step_memory / 1e9:.1f} GB of RAM per training step for micro-batch {b.micro_batch} at "
            f"{plan.network.image_size} px (the process with its tensors; {plan.ram_available / 1e9:.1f} GB "
            f"available, a run plans on {recipes.RAM_SHARE:.0%}); largest term: {terms[0][0]} "
            f"{terms[0][1] / 1e9:.2f} GB"
        )
    where = (
        f"of {b.tier_bytes / 1e9:g} GB (gpu={plan.tier}; {b.usable_bytes / 1e9:.1f} GB usable)"
        if b.tier_bytes
        else "of host memory (gpu=cpu: no ceiling)"
    )
    rest = ", ".join(f"{name} {value / 1e9:.2f}" for name, value in terms[1:] if value >= 5e6)
    return (
        f"predicted peak {b.peak_bytes / 1e9:.1f} GB {where} for micro-batch {b.micro_batch}"
        f" ({recipes.precision_kind(plan.precision)}); largest term: {terms[0][0]} {terms[0][1] / 1e9:.2f} GB"
        + (f"; then {rest} GB" if rest else "")
    )


def _lr(plan: RunPlan) -> str:
    r, finder = plan.recipe, plan.lr_find
    if finder is None:
        return f"{r.lr:g} ({plan.recipe_sources['lr']})" + _backbone_lr(plan)
    scale = plan.optimisation.backbone_lr_scale
    follows = "" if scale == 1.0 else f"; the pretrained backbone's follows at x{scale:g}"
    what = "the lr (one for every layer)" if scale == 1.0 else "the head's lr"
    return (
        f"find (the finder runs on a real start): {what} from {finder.min_lr:g} to "
        f"{finder.max_lr:g} over {finder.steps} steps{follows}; nothing is trained"
    )


def _watching(records: Records) -> str:
    """What picks the best epoch, and when the run stops early."""
    stop = (
        f"early stopping after {records.early_stopping_patience} epoch(s) without an improvement"
        + (f" > {records.early_stopping_min_delta:g}" if records.early_stopping_min_delta else "")
        if records.early_stopping_patience
        else "no early stopping"
    )
    return f"{records.monitor} ({records.monitor_mode}) picks best.ckpt; {stop}"


def _backbone_lr(plan: RunPlan) -> str:
    scale = plan.optimisation.backbone_lr_scale
    return "" if scale == 1.0 else f"; pretrained backbone at {plan.recipe.lr * scale:g} (x{scale:g})"


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def print_plan(plan: RunPlan) -> None:
    """A table on a terminal; aligned `topic  value` lines in a log or pipe (no wrapped cells)."""
    title = "effnet run plan (dry run: nothing trained, nothing written)"
    if not sys.stdout.isatty():
        print(title)
        for key, value in plan_rows(plan):
            print(f"  {key:<14} {value}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in plan_rows(plan):
        table.add_row(key, value, style="yellow" if key == "warning" else None)
    Console().print(table)
