"""Lightning callbacks for what a run must show and record: freezing, throughput, progress, summary,
and the dashboards (curves, confusion matrix, sample predictions) on disk and in every logger."""

from __future__ import annotations

import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.callbacks.progress import ProgressBar

from effnet.files import write_csv
from effnet.metrics import TOP5_MIN_CLASSES, per_class
from effnet.plots import batch_png, confusion_matrix_png, curves_png, prediction_order, predictions_png
from effnet.training.loggers import publish

log = logging.getLogger("effnet")


class FreezeBackbone(Callback):
    """Train only the head for the first `epochs` epochs (backbone batch norm frozen too).

    Unlike Lightning's BackboneFinetuning this keeps every parameter in the one optimizer from the
    start, so timm's scheduler sees a fixed set of parameter groups and resume needs no bookkeeping.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def _frozen(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch < self.epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._frozen(trainer):
            BaseFinetuning.freeze(pl_module.net.backbone, train_bn=False)
        else:  # make_trainable restores gradients only: the mode set while frozen must be undone too
            BaseFinetuning.make_trainable(pl_module.net.backbone)
            pl_module.net.backbone.train()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._frozen(trainer):  # validation switches everything back to train mode
            pl_module.net.backbone.eval()


class Throughput(Callback):
    """Training images per second over each epoch's steps, all processes together, loading included
    (validation is not); and the share of step time spent waiting for data.

    A step's wait is the time from the end of the previous step (or the epoch's start) to the start
    of this one: Lightning fetching the batch from the loader and moving it to the device. Near 0
    the run is bound by compute; near 1 by the loader (more workers, data.cache).
    """

    def __init__(self) -> None:
        self.per_epoch: list[float] = []
        self.wait_per_epoch: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._ready = time.perf_counter()
        self._images, self._wait, self._busy = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()
        self._wait += self._step_start - self._ready

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._ready = time.perf_counter()
        self._busy += self._ready - self._step_start
        self._images += len(batch[0]) * trainer.world_size
        elapsed = self._ready - self._start
        if elapsed > 0:
            pl_module.log(
                "img_s", self._images / elapsed, prog_bar=True, logger=False, on_step=True, on_epoch=False
            )
            pl_module.log("data_wait", self.wait, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    @property
    def wait(self) -> float:
        """This epoch's wait so far, as a fraction of its step time."""
        total = self._wait + self._busy
        return self._wait / total if total > 0 else 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # over the steps and the waits between them: validation (run before this hook) is not training
        rate = self._images / max(self._wait + self._busy, 1e-9)
        self.per_epoch.append(rate)
        self.wait_per_epoch.append(self.wait)
        pl_module.log("train/images_per_sec", rate, on_step=False, on_epoch=True, rank_zero_only=True)
        pl_module.log("train/data_wait", self.wait, on_step=False, on_epoch=True, rank_zero_only=True)

    @property
    def typical(self) -> float:
        """The median epoch: the first one pays for warm-up and worker start."""
        return statistics.median(self.per_epoch) if self.per_epoch else 0.0

    @property
    def typical_wait(self) -> float | None:
        """The median epoch's fraction of step time spent waiting for data."""
        return round(statistics.median(self.wait_per_epoch), 4) if self.wait_per_epoch else None


def _fmt(metrics: dict, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics)


# The values of an epoch's line, in the console and in train.log (LogEpochs).
EPOCH_KEYS = (
    "train/loss_epoch",
    "val/loss",
    "val/acc",
    "val/acc5",
    "train/images_per_sec",
    "train/data_wait",
)


def epoch_line(trainer: L.Trainer) -> str:
    return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  " + _fmt(
        trainer.callback_metrics, EPOCH_KEYS
    )


class LogEpochs(Callback):
    """One line per epoch through the "effnet" logger: the console and the run's train.log (Hydra's
    handlers) show the same lines, under a rich progress bar as under plain progress."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            log.info(epoch_line(trainer))


class PlainProgress(ProgressBar):
    """Progress for logs and pipes: a line every `every_s` seconds, no redraws; through the "effnet"
    logger, so train.log holds them too (the epoch's own line is LogEpochs')."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            log.info(text)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            metrics = self.get_metrics(trainer, pl_module)
            self._print(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
                f"batch {batch_idx + 1}/{self.total_train_batches}  "
                + _fmt(metrics, ("train/loss_step", "img_s", "data_wait"))
            )


def progress_bar() -> ProgressBar:
    """A rich bar on a terminal; plain periodic lines when output goes to a file or pipe."""
    if sys.stdout.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar()
    return PlainProgress()


class BestEpoch(Callback):
    """Remembers each epoch's `monitor` (resumes with the checkpoint) to name the best epoch: the
    largest value (mode max) or the smallest (min), the earliest of equals, as best.ckpt keeps it."""

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        self.monitor = monitor
        self.mode = mode
        self.history: dict[int, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor in trainer.callback_metrics and not trainer.sanity_checking:
            self.history[trainer.current_epoch] = float(trainer.callback_metrics[self.monitor])

    @property
    def best(self) -> tuple[int | None, float | None]:
        """(0-based epoch, value) of the best epoch so far; (None, None) before the first."""
        if not self.history:
            return None, None
        pick = max if self.mode == "max" else min
        epoch = pick(self.history, key=lambda e: self.history[e])
        return epoch, self.history[epoch]

    def state_dict(self) -> dict:
        return {"history": self.history, "monitor": self.monitor}

    def load_state_dict(self, state_dict: dict) -> None:
        # a checkpoint from before the monitor was recorded watched val/acc; another metric's
        # values cannot be ranked with this one's, so a resume that changed train.monitor starts afresh
        if state_dict.get("monitor", "val/acc") != self.monitor:
            self.history = {}
            return
        self.history = {int(k): v for k, v in state_dict["history"].items()}


BATCH_FILE = "train_batches.png"


def batch_title(shown: int, batch: int, mixing: bool) -> str:
    """What train_batches.png shows, in its title."""
    title = f"the first training batch as the network sees it ({shown} of {batch} images, augmented)"
    if mixing:
        title += "; mixup/cutmix blends each with another, labelled with its own class"
    return title


class BatchPreview(Callback):
    """train_batches.png in the run folder, and on every logger: the first training batch of a
    fresh run as the network sees it, after the loader's transforms and the device's erasing and
    mixup, denormalised with the run's mean and std; `tiles` images at most, each titled with its
    class. Rank 0 only.

    The images are caught on their way into the network (a forward pre-hook on `pl_module.net`
    for that one step), so the picture is the exact tensor it trained on, not another draw."""

    def __init__(self, run_dir: Path, classes: list[str], tiles: int = 16, mixing: bool = False) -> None:
        self.path = Path(run_dir) / BATCH_FILE
        self.classes = list(classes)
        self.tiles = tiles
        self.mixing = mixing
        self.shown: list[str] = []  # the tiles' class names, in order, once drawn
        self.drawn = None  # and their uint8 pixels
        self._hook = None
        self._caught = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        fresh = trainer.global_step == 0 and trainer.current_epoch == 0 and batch_idx == 0
        if not (fresh and self.tiles and trainer.is_global_zero) or self.shown:
            return
        self._labels = batch[1][: self.tiles].tolist()
        self._batch = len(batch[1])

        def catch(module, args) -> None:
            self._caught = args[0][: self.tiles].detach()

        self._hook = pl_module.net.register_forward_pre_hook(catch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        if self._caught is None:
            return
        images = self.drawn = pl_module.to_uint8(self._caught).cpu()
        self._caught = None
        title = batch_title(len(images), self._batch, self.mixing)
        batch_png(images, self._labels, self.classes, self.path, title)
        self.shown = [self.classes[i] for i in self._labels]
        publish(trainer.loggers, trainer.global_step, images={"train/batch": self.path})


class EarlyStop(EarlyStopping):
    """Lightning's EarlyStopping (its state, in every checkpoint, resumes with the run), saying in
    one line when and why it stopped. The command line's patience wins over a resumed checkpoint's."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta, verbose=False)
        self.stopped: str | None = None  # the line, once it stopped the run

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._say(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._say(trainer)

    def _say(self, trainer: L.Trainer) -> None:
        if self.stopped is not None or not trainer.should_stop or self.stopped_epoch != trainer.current_epoch:
            return
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
            best_epoch = trainer.current_epoch - self.wait_count + 1  # 1-based: the last improvement
            self.stopped = (
                f"early stopping after epoch {trainer.current_epoch + 1}: {self.monitor} has not improved on "
                f"{float(self.best_score):.4f} (epoch {best_epoch}) for {self.wait_count} "
                + ("epoch" if self.wait_count == 1 else "epochs")
            )
        elif self.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC:
            self.stopped = (
                f"early stopping after epoch {trainer.current_epoch + 1}: {self.monitor} is "
                f"{float(trainer.callback_metrics[self.monitor]):.4f}"
            )
        else:
            return
        if trainer.is_global_zero:
            log.info(self.stopped)

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


# Per-epoch values drawn in curves.png and kept (with the epoch and lr) in Dashboards.history.
CURVE_KEYS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc5", "val/f1")
# Dashboards.history's other per-epoch values (Throughput logs them), for results.csv.
SPEED_KEYS = ("train/images_per_sec", "train/data_wait")
RESULTS_FILE = "results.csv"


def group_lrs(param_groups: list[dict]) -> dict[str, float]:
    """The learning rate of each kind of parameter group, named for results.csv: lr_head and
    lr_backbone where the module trains the backbone at its own scale (ClassifierModule.param_groups
    marks the backbone's groups with timm's lr_scale), else one lr."""
    backbone = [g for g in param_groups if "lr_scale" in g]
    head = [g for g in param_groups if "lr_scale" not in g]
    if not backbone or not head:
        return {"lr": float(param_groups[0]["lr"])} if param_groups else {}
    return {"lr_head": float(head[0]["lr"]), "lr_backbone": float(backbone[0]["lr"])}


def results_rows(history: list[dict], num_classes: int) -> tuple[list[dict], list[str]]:
    """Dashboards.history as results.csv: one row per epoch, named columns a person reads, val
    top-5 only where it says something (more than TOP5_MIN_CLASSES classes: with 5, every label is
    in the top 5)."""
    columns = [
        ("epoch", "epoch"),
        ("train_loss", "train/loss_epoch"),
        ("val_loss", "val/loss"),
        ("val_top1", "val/acc"),
        *([("val_top5", "val/acc5")] if num_classes > TOP5_MIN_CLASSES else []),
        ("val_f1", "val/f1"),
    ]
    lr_keys = [k for k in ("lr", "lr_head", "lr_backbone") if any(k in row.get("lrs", {}) for row in history)]
    rest = [
        ("train_images_per_sec", "train/images_per_sec"),
        ("data_wait_fraction", "train/data_wait"),
        ("wall_time_s", "wall_time_s"),
    ]
    fields = [name for name, _ in columns] + lr_keys + [name for name, _ in rest]
    rows = []
    for row in sorted(history, key=lambda r: r["epoch"]):
        out = {name: _rounded(row.get(key)) for name, key in columns + rest}
        out.update({k: _rounded(row.get("lrs", {}).get(k)) for k in lr_keys})
        rows.append(out)
    return rows, fields


def _rounded(value):
    """Six significant digits: a learning rate of 4.3e-05 keeps its digits, a loss its noise out."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def model_facts(pl_module: L.LightningModule) -> dict:
    """Parameters, size and FLOPs per image at the training input size (Lightning's own summary)."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    summary = ModelSummary(pl_module, max_depth=1)
    flops = summary.total_flops if pl_module.example_input_array is not None else 0
    return {
        "parameters": summary.total_parameters,
        "trainable_parameters": summary.trainable_parameters,
        "size_mb": round(summary.model_size, 2),
        "gflops": round(flops / 1e9, 4) if flops else None,
    }


def system_facts(trainer: L.Trainer) -> dict:
    import torch

    device = trainer.strategy.root_device
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "accelerator": device.type,
        "precision": trainer.precision,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "torch": torch.__version__,
    }


class Dashboards(Callback):
    """The pictures a run is judged by, written to the run folder and sent to every logger (rank 0).

    Every epoch: the epoch's losses, accuracies and lr go to curves.png, and with the learning rate
    of each parameter group, the throughput and the wall time to results.csv (rewritten from the
    history, which resumes with the checkpoint: a resumed run's replayed epochs are not listed twice).
    At each new best epoch (as
    BestEpoch, listed before this callback, names it; the epoch best.ckpt comes from):
    confusion_matrix.png from the module's torchmetrics matrix (already reduced over all
    processes), per_class.csv, and predictions.png, a grid of `samples` validation images with the
    mistakes first. Sample images come from rank 0's share of the validation set; only `samples`
    of them are kept, so memory does not grow with the data.
    """

    def __init__(self, run_dir: Path, classes: list[str], best: BestEpoch, samples: int = 16) -> None:
        self.run_dir = Path(run_dir)
        self.classes = list(classes)
        self.best = best
        self.samples = samples
        # one row per epoch: CURVE_KEYS, SPEED_KEYS, epoch (1-based), lr, lrs (group_lrs), wall_time_s
        self.history: list[dict] = []
        self.facts: dict = {}
        self._kept: list[tuple] = []  # (true, pred, confidence, uint8 CHW image)
        self._started = time.perf_counter()
        self._before = 0.0  # the wall time of the epochs a resumed run already has

    @property
    def best_row(self) -> dict:
        """The history's row of the best epoch (the one best.ckpt holds); {} before the first."""
        epoch = self.best.best[0]
        return next((r for r in self.history if epoch is not None and r["epoch"] == epoch + 1), {})

    @property
    def summary(self) -> dict:
        """Fields for summary.json."""
        row = self.best_row
        return {
            "best_val_acc": row.get("val/acc"),
            "best_val_f1": row.get("val/f1"),
            "model_size_mb": self.facts.get("size_mb"),
            "gflops": self.facts.get("gflops"),
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.facts = model_facts(pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams({"facts": self.facts, "system": system_facts(trainer)})
        publish(
            trainer.loggers, trainer.global_step, summary={f"model/{k}": v for k, v in self.facts.items()}
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        done = [r.get("wall_time_s") or 0.0 for r in self.history if r["epoch"] <= trainer.current_epoch]
        self._before = max(done, default=0.0)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._kept = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self.samples or not outputs:
            return
        images, labels = batch
        confidence, pred = outputs["logits"].float().softmax(-1).max(-1)
        fresh = list(
            zip(labels.tolist(), pred.tolist(), confidence.tolist(), range(len(labels)), strict=True)
        )
        candidates = self._kept + fresh
        order = prediction_order(
            [c[0] for c in candidates], [c[1] for c in candidates], [c[2] for c in candidates]
        )
        keep = [candidates[i] for i in order[: self.samples]]
        # only the kept images leave the device, turned back into the loader's uint8 pixels
        self._kept = [
            (true, pred, conf, pl_module.to_uint8(images[x : x + 1])[0].cpu() if isinstance(x, int) else x)
            for true, pred, conf, x in keep
        ]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch
        row = {"epoch": epoch + 1, **{k: float(metrics[k]) for k in CURVE_KEYS + SPEED_KEYS if k in metrics}}
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
            row["lrs"] = group_lrs(trainer.optimizers[0].param_groups)
        row["wall_time_s"] = round(self._before + time.perf_counter() - self._started, 1)
        # a replayed epoch's row, and any after it (a resume from an earlier checkpoint), are replaced
        self.history = [r for r in self.history if r["epoch"] < epoch + 1] + [row]
        write_csv(self.run_dir / RESULTS_FILE, *results_rows(self.history, len(self.classes)))
        best_epoch, best = self.best.best
        if best_epoch == epoch and self.best.monitor in row:
            self._draw_best(trainer, pl_module)
            publish(
                trainer.loggers,
                trainer.global_step,
                summary={
                    "best_val_acc": row.get("val/acc"),
                    "best_epoch": epoch + 1,
                    **({f"best/{self.best.monitor}": best} if self.best.monitor != "val/acc" else {}),
                },
            )
        curves_png(self.history, self.run_dir / "curves.png", None if best_epoch is None else best_epoch + 1)

    def _draw_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, tables = {}, {}
        confusion = pl_module.val_confusion
        if confusion is not None:
            images["val/confusion_matrix_image"] = confusion_matrix_png(
                confusion, self.classes, self.run_dir / "confusion_matrix.png"
            )
            rows = per_class(confusion, self.classes)
            write_csv(self.run_dir / "per_class.csv", rows)
            tables["val/per_class"] = rows
        if self._kept:
            true, pred, confidence, pictures = zip(*self._kept, strict=True)
            images["val/predictions"] = predictions_png(
                pictures, true, pred, confidence, self.classes, self.run_dir / "predictions.png"
            )
        publish(
            trainer.loggers,
            trainer.global_step,
            images=images,
            tables=tables,
            confusion=(confusion, self.classes) if confusion is not None else None,
        )

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
