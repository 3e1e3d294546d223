"""Lightning callbacks for what a run must show and record: freezing, throughput, progress, summary."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.callbacks.progress import ProgressBar


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
        else:
            BaseFinetuning.make_trainable(pl_module.net.backbone)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._frozen(trainer):  # validation switches everything back to train mode
            pl_module.net.backbone.eval()


class Throughput(Callback):
    """Training images per second over each epoch, all processes together, loading included."""

    def __init__(self) -> None:
        self.per_epoch: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[0]) * trainer.world_size
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            pl_module.log(
                "img_s", self._images / elapsed, prog_bar=True, logger=False, on_step=True, on_epoch=False
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        rate = self._images / max(time.perf_counter() - self._start, 1e-9)
        self.per_epoch.append(rate)
        pl_module.log("train/images_per_sec", rate, on_step=False, on_epoch=True, rank_zero_only=True)

    @property
    def typical(self) -> float:
        """The median epoch: the first one pays for warm-up and worker start."""
        return statistics.median(self.per_epoch) if self.per_epoch else 0.0


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
                + _fmt(metrics, ("train/loss_step", "img_s"))
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        self._print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
            + _fmt(metrics, ("train/loss_epoch", "val/loss", "val/acc", "val/acc5", "train/images_per_sec"))
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


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
