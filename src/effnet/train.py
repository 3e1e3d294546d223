"""One training run, from a composed config to checkpoints and summary.json.

Order matters: the data decides the recipe (data_size=auto counts images), the recipe and the
device decide the batch plan, and only then are the module, the loaders and the Trainer built.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from effnet import balance, checkpoints, folders, interrupts, ranks, recipes, runs, scan
from effnet.callbacks import BestEpoch, Dashboards, FreezeBackbone, Throughput, progress_bar
from effnet.data import ImageDataModule, default_workers
from effnet.errors import UserError
from effnet.files import write_json
from effnet.loggers import build_loggers, finishing
from effnet.model import ClassifierModule, load_pretrained, load_weights

log = logging.getLogger("effnet")


def on_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def count_devices(devices, accelerator: str) -> int:
    """Processes per node, the way Lightning will count them."""
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        return len([d for d in devices.split(",") if d.strip()])
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    if devices in ("auto", -1, "-1"):
        return torch.cuda.device_count() if on_cuda(accelerator) else 1
    return int(devices)


def load_or_make_split(cfg: DictConfig, run_dir: Path) -> folders.Split:
    """Scan the folder, then the run folder's split if it has one (resume), else a fresh one
    drawn from the usable files and written there by rank 0. Unusable files never enter a split."""
    if cfg.data.generate_demo:
        from effnet.demo import write_demo

        write_demo(cfg.data.root)
    Image.MAX_IMAGE_PIXELS = cfg.data.max_image_pixels  # the loaders' own guard, at the same limit
    report = scan.scan_folder(
        cfg.data.root,
        cfg.data.max_image_pixels,
        cache=scan.cache_path(cfg.data.root, cfg.data.max_image_pixels),
    )
    scan.enforce(report, cfg.data.on_bad_image)
    split = folders.load_split(run_dir)
    if split is None:
        split = folders.discover(cfg.data.root, cfg.data.val_fraction, cfg.seed, exclude=report.bad_files)
        if runs.global_rank() == 0:
            folders.save_split(split, run_dir)
    else:
        split = folders.without(split, report.bad_files)
    counts = folders.class_counts(split.train, split.classes)
    scan.describe_balance(report, counts, cfg.data.balance, cfg.data.min_images)
    if runs.global_rank() == 0:
        scan.log_report(report, cfg.data.on_bad_image)
        write_json(run_dir / scan.REPORT_FILE, dataclasses.asdict(report))
    return split


def choose_recipe(cfg: DictConfig, num_train: int) -> recipes.Recipe:
    if cfg.data_size.name == "auto":
        name = recipes.pick_data_size(cfg.data_size.rows, num_train)
        row = cfg.data_size.rows[name]
    else:
        name, row = cfg.data_size.name, cfg.data_size
    overrides = {k: cfg[k] for k in ("lr", "epochs", "batch_size", "dropout", "aug")}
    return recipes.resolve_recipe(overrides, name, row, cfg.model.dropout)


def choose_tier(cfg: DictConfig, cuda: bool) -> DictConfig:
    if cfg.gpu.name != "auto":
        if cfg.gpu.name != "cpu" and not cuda:
            log.warning(
                "gpu=%s but no CUDA device is in use: training on the CPU with that tier's batch plan",
                cfg.gpu.name,
            )
        return cfg.gpu
    memory = torch.cuda.get_device_properties(0).total_memory if cuda else None
    return cfg.gpu.tiers[recipes.pick_tier(cfg.gpu.tiers, memory)]


def trainer_kwargs(cfg: DictConfig) -> dict:
    """The user's Trainer arguments, minus those effnet fills in or handles itself."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("precision", None)
    kwargs.pop("sync_batchnorm", None)  # Lightning's converter drops timm's fused activations
    return {k: v for k, v in kwargs.items() if v is not None}


def quiet_libraries() -> None:
    """Lightning logs through its own handler and the root one (Hydra's console and train.log):
    keep the root one, so each line shows once and lands in the log file. Silence warnings that
    are about effnet's deliberate choices, not the user's run."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for message in (
        ".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*does not have many workers which may be a bottleneck.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one model; returns the summary that is also written to run_dir/summary.json.
    A signal ends it with a checkpoint and the command that resumes it (effnet.interrupts)."""
    stop = interrupts.Interrupts(run_dir / runs.CHECKPOINTS / runs.INTERRUPTED)
    with stop.installed():
        return _run(cfg, run_dir, stop)


def _run(cfg: DictConfig, run_dir: Path, stop: interrupts.Interrupts) -> dict:
    started = time.perf_counter()
    quiet_libraries()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    checkpoint = runs.find_checkpoint(str(cfg.ckpt_path)) if cfg.ckpt_path else None
    ckpt_dir = run_dir / runs.CHECKPOINTS
    if runs.global_rank() == 0:  # before the other ranks exist
        ranks.clear(run_dir)
        for stale in checkpoints.remove_stale_temporaries(ckpt_dir):
            log.info("removed %s: a checkpoint write that was cut short (the previous file is intact)", stale)

    split = load_or_make_split(cfg, run_dir)
    recipe = choose_recipe(cfg, len(split.train))
    image_size = int(cfg.image_size or cfg.model.image_size)
    cuda = on_cuda(cfg.trainer.accelerator)
    devices = count_devices(cfg.trainer.devices, cfg.trainer.accelerator) * cfg.trainer.num_nodes
    tier = choose_tier(cfg, cuda)
    try:
        plan = recipes.plan_batches(
            recipe.batch_size,
            devices,
            b0_batch=tier.b0_batch,
            memory_factor=cfg.model.memory_factor,
            image_size=image_size,
            min_micro_batch=cfg.gpu.min_micro_batch,
            checkpointing_gain=cfg.gpu.checkpointing_gain,
            grad_checkpointing=cfg.model.grad_checkpointing,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    precision = recipes.pick_precision(cfg.trainer.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    level = cfg.augment[recipe.aug]

    module = ClassifierModule(
        backbone=cfg.model.backbone,
        classes=split.classes,
        image_size=image_size,
        dropout=recipe.dropout,
        hidden=list(cfg.model.head.hidden),
        drop_path=cfg.model.drop_path,
        lr=recipe.lr,
        epochs=recipe.epochs,
        optimizer=cfg.optimizer.name,
        weight_decay=cfg.optimizer.weight_decay,
        scheduler=cfg.scheduler.name,
        warmup_epochs=cfg.scheduler.warmup_epochs,
        min_lr=cfg.scheduler.min_lr,
        label_smoothing=cfg.model.label_smoothing,
        mixup=level.mixup,
        cutmix=level.cutmix,
        erase_prob=level.erase_prob,
        ema_decay=cfg.model.ema_decay if cfg.model.ema else None,
        channels_last=cfg.model.channels_last if cfg.model.channels_last is not None else cuda,
    )
    module.example_input_array = torch.zeros(
        1, 3, image_size, image_size, dtype=torch.uint8
    )  # FLOPs in the model summary
    backbone = module.net.backbone
    data_cfg = backbone.pretrained_cfg
    if checkpoint is None:  # a resumed run gets its weights from the checkpoint
        if cfg.model.weights:
            log.info("weights: %s", load_weights(backbone, cfg.model.weights))
        elif cfg.model.pretrained:
            log.info("weights: %s", load_pretrained(backbone, cfg.model.backbone))
        else:
            log.info("weights: random initialisation (model.pretrained=false)")
    if module.ema is not None:
        module.ema.set(module.net)  # start the average from the loaded weights
    if plan.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    if cfg.trainer.sync_batchnorm and devices > 1:
        from timm.layers import convert_sync_batchnorm

        module.net = convert_sync_batchnorm(module.net)
    if module.hparams.channels_last:
        module.net.to(memory_format=torch.channels_last)
    if cfg.data.balance == "class_weights":
        balance.weighted_loss(module, split.train, len(split.classes), cfg.model.label_smoothing)

    workers = default_workers(count_devices(cfg.trainer.devices, cfg.trainer.accelerator))
    datamodule = ImageDataModule(
        split,
        image_size,
        level,
        micro_batch=plan.micro_batch,
        num_workers=workers if cfg.data.num_workers == "auto" else cfg.data.num_workers,
        crop_pct=data_cfg.get("crop_pct", 0.875),
        interpolation=data_cfg.get("interpolation", "bicubic"),
        pin_memory=cuda,
        seed=cfg.seed,
        sample_weights=balance.sample_weights(split.train, len(split.classes))
        if cfg.data.balance == "weighted_sampler"
        else None,
    )

    resolved = {
        "model": cfg.model.backbone,
        "image_size": image_size,
        "num_classes": len(split.classes),
        "classes": split.classes,
        "num_train_images": len(split.train),
        "num_val_images": len(split.val),
        "data_size": recipe.data_size,
        "epochs": recipe.epochs,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "dropout": recipe.dropout,
        "aug": recipe.aug,
        "gpu_tier": tier.name,
        "devices": devices,
        "micro_batch_size": plan.micro_batch,
        "accumulate_grad_batches": plan.accumulate,
        "grad_checkpointing": plan.grad_checkpointing,
        "precision": precision,
        "pretrained": bool(cfg.model.pretrained) or bool(cfg.model.weights),
        "parameters": sum(p.numel() for p in module.net.parameters()),
    }
    log.info("recipe: %s", ", ".join(f"{k}={v}" for k, v in resolved.items() if k != "classes"))

    freeze = cfg.model.freeze_epochs
    strategy = cfg.trainer.strategy
    if freeze and strategy == "ddp":
        strategy = "ddp_find_unused_parameters_true"  # the frozen backbone has no gradients to reduce
    checkpointing = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    # Lightning's save_last only writes when `best` improved; resume needs every epoch's state.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    throughput, best_epoch = Throughput(), BestEpoch()
    dashboards = Dashboards(run_dir, split.classes, best_epoch, samples=cfg.dashboards.samples)
    callbacks = [
        checkpointing,
        latest,
        throughput,
        best_epoch,
        progress_bar(),
        LearningRateMonitor("step"),
        checkpoints.ResumeState(ckpt_dir / runs.LAST, datamodule.train_sampler),
        stop,
        ranks.RecordFailure(run_dir),
        dashboards,
    ]
    if freeze:
        callbacks.append(FreezeBackbone(freeze))
    loggers = build_loggers(cfg, run_dir, resolved)
    trainer = L.Trainer(
        **{**trainer_kwargs(cfg), "strategy": strategy},
        default_root_dir=str(run_dir),
        max_epochs=recipe.epochs,
        precision=precision,
        accumulate_grad_batches=plan.accumulate,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[checkpoints.AtomicCheckpointIO()],
    )
    if trainer.is_global_zero:
        (run_dir / "resolved.yaml").write_text(OmegaConf.to_yaml({"resolved": resolved, "config": cfg}))
        if checkpoint is not None:  # the epochs about to be replayed must not be logged twice
            next_epoch = checkpoints.resume_epoch(checkpoint)
            log.info("resuming from %s at the start of epoch %d", checkpoint, next_epoch + 1)
            planned = checkpoints.planned_epochs(checkpoint)
            if planned is not None and planned != recipe.epochs:  # timm restores its schedule's length
                log.warning(
                    "epochs=%d, but the checkpoint's learning-rate schedule was built for %d epochs and "
                    "is restored as it was (after epoch %d the lr stays at scheduler.min_lr); start a new "
                    "run to train on a different schedule",
                    recipe.epochs,
                    planned,
                    planned,
                )
            checkpoints.trim_metrics(run_dir / "metrics.csv", next_epoch)
    # finishing: a failed or interrupted run's W&B run is closed too, or a sweep's next job would reuse it
    with finishing(loggers):
        try:
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(checkpoint) if checkpoint else None,
                weights_only=True,  # resume never unpickles code, whoever wrote the file
            )
        except Exception as exc:
            ranks.exit_if_not_first(run_dir, trainer.global_rank, trainer.world_size, exc)
            raise
        except SystemExit:  # SIGTERMException, or Lightning's exit after a second Ctrl-C
            if stop.received is None:
                raise
            resume_from = runs.newest_complete(ckpt_dir)
            interrupts.exit_interrupted(
                stop.received,
                trainer,
                run_dir,
                checkpoints.resume_epoch(resume_from) if resume_from else 0,
                stop.written,
            )

    epoch, best = best_epoch.best
    summary = {
        **resolved,
        "best_val_acc": best
        if checkpointing.best_model_score is None
        else float(checkpointing.best_model_score),
        "best_epoch": None if epoch is None else epoch + 1,
        **dashboards.summary,
        "best_checkpoint": checkpointing.best_model_path,
        "last_checkpoint": str(run_dir / runs.CHECKPOINTS / runs.LAST),
        "epochs_completed": trainer.current_epoch,
        "train_images_per_sec": round(throughput.typical, 2),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="effnet run", show_header=False, title_justify="left")
    acc = summary["best_val_acc"]
    rows = [
        ("best val top-1", "n/a" if acc is None else f"{acc:.4f} (epoch {summary['best_epoch']})"),
        ("best checkpoint", summary["best_checkpoint"] or "none"),
        ("model", f"{summary['model']} @ {summary['image_size']} px, {summary['num_classes']} classes"),
        (
            "recipe",
            f"{summary['data_size']}: lr {summary['lr']}, {summary['epochs']} epochs, batch {summary['batch_size']}"
            f" ({summary['micro_batch_size']} x {summary['accumulate_grad_batches']} x {summary['devices']}), "
            f"dropout {summary['dropout']}, aug {summary['aug']}, {summary['precision']}",
        ),
        ("wall time", f"{summary['wall_time_s']:.0f} s"),
        ("throughput", f"{summary['train_images_per_sec']:.1f} train images/s"),
        ("run folder", summary["run_dir"]),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)
