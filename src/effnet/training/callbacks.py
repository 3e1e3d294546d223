"""Lightning callbacks for what a run must show and record: freezing, throughput, progress, summary,
and the dashboards (curves, confusion matrix, sample predictions) on disk and in every logger."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.callbacks.progress import ProgressBar

from effnet.files import write_csv
from effnet.metrics import per_class
from effnet.plots import batch_png, confusion_matrix_png, curves_png, prediction_order, predictions_png
from effnet.training.loggers import publish


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


class PlainProgress(ProgressBar):
    """Progress for logs and pipes: a line every `every_s` seconds and one per epoch, no redraws."""

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
            print(text, flush=True)

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

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        self._print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
            + _fmt(
                metrics,
                (
                    "train/loss_epoch",
                    "val/loss",
                    "val/acc",
                    "val/acc5",
                    "train/images_per_sec",
                    "train/data_wait",
                ),
            )
        )


def progress_bar() -> ProgressBar:
    """A rich bar on a terminal; plain periodic lines when output goes to a file or pipe."""
    if sys.stdout.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar()
    return PlainProgress()


class BestEpoch(Callback):
    """Remembers each epoch's val top-1 (resumes with the checkpoint) to name the best epoch."""

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.history: dict[int, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor in trainer.callback_metrics and not trainer.sanity_checking:
            self.history[trainer.current_epoch] = float(trainer.callback_metrics[self.monitor])

    @property
    def best(self) -> tuple[int | None, float | None]:
        if not self.history:
            return None, None
        epoch = max(self.history, key=lambda e: self.history[e])
        return epoch, self.history[epoch]

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
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


# Per-epoch values drawn in curves.png and kept (with the epoch and lr) in Dashboards.history.
CURVE_KEYS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc5", "val/f1")


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

    Every epoch: the epoch's losses, accuracies and lr go to curves.png. At each new best epoch (as
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
        self.history: list[dict] = []  # one row per epoch: CURVE_KEYS, epoch (1-based) and lr
        self.facts: dict = {}
        self._kept: list[tuple] = []  # (true, pred, confidence, uint8 CHW image)

    @property
    def summary(self) -> dict:
        """Fields for summary.json."""
        epoch = self.best.best[0]
        row = next((r for r in self.history if epoch is not None and r["epoch"] == epoch + 1), {})
        return {
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
        row = {"epoch": epoch + 1, **{k: float(metrics[k]) for k in CURVE_KEYS if k in metrics}}
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.history = [r for r in self.history if r["epoch"] != epoch + 1] + [row]
        best_epoch, best = self.best.best
        if best_epoch == epoch and self.best.monitor in row:
            self._draw_best(trainer, pl_module)
            publish(
                trainer.loggers, trainer.global_step, summary={"best_val_acc": best, "best_epoch": epoch + 1}
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
